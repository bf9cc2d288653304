"""bnlab.exercises.scenarios: the collapsed model of ch05.q6 is what its statement and its reference answer say:
trained, with momentum 0 and running statistics that never left 0 and 1, good in train mode and at chance in eval
mode, repaired by re-estimating its running statistics; built the same way every time, without touching the global
random generator."""

import math

import pytest
import torch
from torch import nn

from bnlab.exercises import exercise
from bnlab.exercises.eval_mode import recalibrated
from bnlab.exercises.scenarios import COLLAPSE, collapsed_model


def accuracy(model, x, y, *, train: bool, batch_size: int = 100) -> float:
    model.train(train)
    with torch.no_grad():
        correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                      for i in range(0, len(x), batch_size))
    return correct / len(x)


@pytest.fixture(scope="module")
def handed_over():
    return collapsed_model()


def batchnorms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]


def test_the_data_set_is_as_the_statement_describes_it(handed_over):
    _, (train_x, train_y), (test_x, test_y) = handed_over
    assert train_x.shape == (800, 16) and test_x.shape == (400, 16)
    assert train_x.dtype == torch.float32 and set(train_y.tolist()) == set(range(4))
    assert 15 < float(train_x.mean()) < 25  # "values around 20"


def test_the_model_trained_the_steps_the_statement_names_with_momentum_zero(handed_over):
    model, _, _ = handed_over
    steps = COLLAPSE["epochs"] * math.ceil(COLLAPSE["train"] / COLLAPSE["batch_size"])
    assert steps == 125
    for bn in batchnorms(model):
        assert bn.momentum == 0.0 and int(bn.num_batches_tracked) == steps
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_train_mode_does_well_and_eval_mode_is_at_chance(handed_over):
    model, _, (test_x, test_y) = handed_over
    model = collapsed_model()[0]  # a fresh copy: train-mode passes count in num_batches_tracked
    assert accuracy(model, test_x, test_y, train=True) >= 0.95  # "almost every test example right"
    assert accuracy(model, test_x, test_y, train=False) <= 0.3  # "no better than chance" (4 classes)


def test_re_estimating_the_running_statistics_repairs_it(handed_over):
    model, (train_x, _), (test_x, test_y) = collapsed_model()
    assert accuracy(recalibrated(model, train_x), test_x, test_y, train=False) >= 0.95
    naive = collapsed_model()[0].train()
    with torch.no_grad():
        naive(train_x)  # one pass with momentum 0 changes nothing
    assert accuracy(naive, test_x, test_y, train=False) <= 0.3


def test_the_diagnosis_rests_on_numbers_the_options_quote():
    q6 = exercise("ch05.q6")
    assert q6.correct == frozenset("A") and "0.9^125, about 2e-6" in q6.why["D"]
    assert f"{0.9 ** 125:.0e}" == "2e-06"


def test_it_is_the_same_every_time_and_leaves_the_global_generator_alone(handed_over):
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    model, (train_x, _), _ = collapsed_model()
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert torch.equal(train_x, handed_over[1][0])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), handed_over[0].state_dict().values()))

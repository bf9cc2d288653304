import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.data import BatchLoader
from bnlab.models import MLPConfig, build_mlp
from bnlab.modes import freeze_batchnorm
from bnlab.training import (
    Engine,
    History,
    PlainStep,
    TrainConfig,
    accuracy,
    count_correct,
    epoch_order,
    pick_device,
    train,
    train_epoch,
    train_mlp,
    train_model,
)

SHORT = TrainConfig(epochs=2, batch_size=100)


def without_seconds(history: History) -> list[tuple]:
    return [(e.epoch, e.loss, e.train_acc, e.val_acc) for e in history.epochs] + [history.test_acc]


def test_same_seed_gives_an_identical_history_on_the_cpu(small_data):
    _, first = train_mlp(MLPConfig(dropout=0.3), small_data, SHORT, device="cpu", progress=False)
    _, again = train_mlp(MLPConfig(dropout=0.3), small_data, SHORT, device="cpu", progress=False)
    assert without_seconds(first) == without_seconds(again)


def test_different_seeds_give_different_runs(small_data):
    _, first = train_mlp(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    _, other = train_mlp(MLPConfig(), small_data, dataclasses.replace(SHORT, seed=7), device="cpu", progress=False)
    assert without_seconds(first) != without_seconds(other)


def test_history_has_one_row_per_epoch_and_names_the_data(small_data):
    _, history = train_mlp(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert history.dataset == small_data.name and history.dataset.startswith("MNIST-10k subset")
    assert history.device == "cpu"
    assert all(e.seconds > 0 for e in history.epochs)
    assert history.final.loss < history.epochs[0].loss
    assert "MNIST-10k subset" in history.table()
    assert History.from_dict(history.to_dict()) == history


def test_a_cpu_run_records_the_threads_it_computed_with(small_data):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, history = train_mlp(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert history.threads == 1
    assert History.from_dict(history.to_dict()).threads == 1
    stored = history.to_dict()
    del stored["threads"]  # a History stored before the field existed
    assert History.from_dict(stored).threads is None


def test_training_learns_far_above_chance(small_data):
    _, history = train_mlp(MLPConfig(), small_data, TrainConfig(epochs=5, batch_size=100), device="cpu", progress=False)
    assert history.test_acc > 70  # chance is 10 %


def test_train_uses_train_mode_and_evaluation_uses_eval_mode(small_data, monkeypatch):
    model = build_mlp()
    seen = []
    bn = model[2]
    original = bn.forward

    def spy(x):
        seen.append((bn.training, torch.is_inference_mode_enabled()))
        return original(x)

    monkeypatch.setattr(bn, "forward", spy)
    train(model, small_data, TrainConfig(epochs=1, batch_size=500), device="cpu", progress=False)
    assert (True, False) in seen  # training steps
    assert (False, True) in seen  # evaluation: eval mode under inference_mode
    assert set(seen) == {(True, False), (False, True)}
    assert model.training  # left in train mode, as a plain loop would


def test_accuracy_restores_the_mode_and_leaves_running_statistics_alone(small_data):
    model = build_mlp()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy(model, small_data.val)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pick_device_prefers_cuda_then_mps_then_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_pick_device_checks_an_explicit_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no usable CUDA"):
        pick_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="MPS is not available"):
        pick_device("mps")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0}, {"epochs": True}, {"batch_size": -1}, {"lr": 0}, {"lr": float("inf")}, {"lr": float("nan")},
        {"lr": True}, {"eval_batch_size": 1.5}, {"seed": "1"}, {"seed": -1}, {"seed": False},
        {"weight_decay": -0.1}, {"weight_decay": float("nan")}, {"momentum": 1.0}, {"momentum": -0.5},
        {"record_train_acc": 1},
    ],
    ids=repr,
)
def test_invalid_train_config_names_the_field(kwargs):
    (field,) = kwargs
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**kwargs)


def test_training_accuracy_is_recorded_only_when_asked_for(small_data):
    _, without = train_model(MLPConfig(), small_data, SHORT, device="cpu", progress=False)
    _, with_train = train_model(MLPConfig(), small_data, dataclasses.replace(SHORT, record_train_acc=True),
                                device="cpu", progress=False)
    assert [e.train_acc for e in without.epochs] == [None, None]
    assert all(0 <= e.train_acc <= 100 for e in with_train.epochs)
    assert [e.val_acc for e in without.epochs] == [e.val_acc for e in with_train.epochs]  # evaluation changes nothing
    assert History.from_dict(without.to_dict()) == without
    assert "-" in without.table().splitlines()[1]


def test_momentum_and_weight_decay_reach_torch_optim_sgd(small_data):
    config = dataclasses.replace(SHORT, epochs=1, momentum=0.9, weight_decay=5e-4, seed=4)
    torch.manual_seed(0)
    ours = build_mlp()
    plain = copy.deepcopy(ours)
    train(ours, small_data, config, device="cpu", progress=False)
    reference_loop(plain, small_data.train, steps=10, batch_size=100, lr=0.1, seed=4, momentum=0.9, weight_decay=5e-4)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), plain.state_dict().values()))
    torch.manual_seed(0)
    without = build_mlp()
    train(without, small_data, dataclasses.replace(config, momentum=0.0), device="cpu", progress=False)
    assert not torch.equal(without[1].weight, ours[1].weight)


def test_a_diverging_run_is_recorded_not_raised(small_data):
    _, history = train_model(MLPConfig(placement="none"), small_data, TrainConfig(epochs=2, batch_size=100, lr=1e6),
                             device="cpu", progress=False)
    assert len(history.epochs) == 2 and not math.isfinite(history.final.loss)
    assert 0 <= history.test_acc <= 100 and 0 <= history.final.val_acc <= 100


def test_train_model_builds_from_the_config_and_train_mlp_is_the_same_function(small_data):
    model, history = train_model(MLPConfig(hidden=(16,)), small_data, SHORT, device="cpu", progress=False)
    assert model[1].out_features == 16 and len(history.epochs) == 2
    assert train_mlp is train_model


def test_progress_bar_can_be_turned_off(small_data, capsys):
    train_mlp(MLPConfig(), small_data, TrainConfig(epochs=1, batch_size=500), device="cpu", progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def reference_loop(model, split, *, steps, batch_size, lr, seed, momentum=0.0, weight_decay=0.0):
    """The plain loop, written out: standard modules, autograd, torch.optim.SGD, BatchLoader's batch order."""
    torch.manual_seed(seed)  # dropout masks, as train() seeds them
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    for i in range(steps):
        index = order[i * batch_size : (i + 1) * batch_size]
        loss = F.cross_entropy(model(split.images[index]), split.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


# --- the plain loop is the lecture's loop ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [MLPConfig(), MLPConfig(placement="after"), MLPConfig(placement="none"), MLPConfig(dropout=0.3)],
    ids=["before", "after", "none", "dropout"],
)
def test_train_gives_bitwise_the_parameters_of_the_loop_written_out(small_data, config):
    torch.manual_seed(0)
    ours = build_mlp(config)
    plain = copy.deepcopy(ours)
    train(ours, small_data, TrainConfig(epochs=1, batch_size=100, seed=5), device="cpu", progress=False)
    reference_loop(plain, small_data.train, steps=10, batch_size=100, lr=0.1, seed=5)
    for (name, a), b in zip(ours.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name  # weights, biases, running statistics, num_batches_tracked
    for (name, a), b in zip(ours.named_parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad), name  # the last step's gradients stay in .grad


def test_same_seed_twice_gives_bitwise_equal_parameters(small_data):
    config = TrainConfig(epochs=2, batch_size=100, seed=11, momentum=0.5)
    first, _ = train_model(MLPConfig(dropout=0.2), small_data, config, device="cpu", progress=False)
    again, _ = train_model(MLPConfig(dropout=0.2), small_data, config, device="cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_plain_step_is_forward_loss_backward_and_an_optimizer_step():
    torch.manual_seed(0)
    model = build_mlp()
    twin = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss = PlainStep(model, optimizer)(x, y)
    expected = F.cross_entropy(twin(x), y)
    expected.backward()
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(p.grad, alpha=-0.1)  # what torch.optim.SGD does
    assert torch.equal(loss, expected.detach()) and not loss.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_train_epoch_draws_the_batches_batchloader_draws(small_data):
    split = small_data.train
    seen = []

    def step(xb, yb):
        seen.append((xb.clone(), yb.clone()))
        return torch.ones(())

    generator = torch.Generator().manual_seed(9)
    loader = BatchLoader(split, 300, shuffle=True, drop_last=True, seed=9)
    for _ in range(2):  # two epochs: the generator moves on between them
        seen.clear()
        total = train_epoch(step, split, epoch_order(len(split), generator, torch.device("cpu")), 300)
        expected = list(loader)
        assert len(seen) == len(expected) == 3 and total.item() == 3  # drop_last
        assert all(torch.equal(x, ex) and torch.equal(y, ey) for (x, y), (ex, ey) in zip(seen, expected))


def test_train_uses_the_engines_step(small_data):
    calls = []

    class Counting(Engine):
        def make_step(self, model, optimizer):
            plain = super().make_step(model, optimizer)
            return lambda xb, yb: calls.append(len(xb)) or plain(xb, yb)

    train(build_mlp(), small_data, TrainConfig(epochs=2, batch_size=250), device="cpu", progress=False,
          engine=Counting())
    assert calls == [250] * 8
    with pytest.raises(ValueError, match="engine must be a bnlab.training.Engine"):
        train(build_mlp(), small_data, SHORT, device="cpu", progress=False, engine="fast")


def test_accuracy_restores_every_modules_mode_flag(small_data):
    model = build_mlp().train()
    freeze_batchnorm(model)  # BatchNorm in eval mode inside a train-mode model
    flags = [m.training for m in model.modules()]
    accuracy(model, small_data.val)
    count_correct(model, small_data.val)
    assert [m.training for m in model.modules()] == flags
    plain_eval = build_mlp().train()
    plain_eval[2].training = False  # set by hand, no freeze: must come back in eval mode too
    accuracy(plain_eval, small_data.val)
    assert plain_eval.training and not plain_eval[2].training


def test_count_correct_counts_on_the_device_and_matches_accuracy(small_data):
    model = build_mlp()
    correct = count_correct(model, small_data.val, batch_size=128)  # 1,000 is not a multiple of 128: a short last batch
    assert correct.dtype == torch.long and correct.device == small_data.val.images.device
    with torch.inference_mode():
        model.eval()
        expected = (model(small_data.val.images).argmax(1) == small_data.val.labels).sum().item()
    assert correct.item() == expected
    assert accuracy(model, small_data.val) == pytest.approx(100.0 * expected / len(small_data.val))


def test_train_rejects_a_batch_larger_than_the_training_split(small_data):
    with pytest.raises(ValueError, match="batch_size 5000 is larger than the training split"):
        train(build_mlp(), small_data, TrainConfig(epochs=1, batch_size=5_000), device="cpu", progress=False)



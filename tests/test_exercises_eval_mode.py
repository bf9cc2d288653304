"""bnlab.exercises.eval_mode (ch05): the reference solutions pass, each typical mistake fails with its own
message, "leave the model as it was" is checked layer by layer, on models in mixed modes too, and a repair of the
running statistics is judged on the model it returns."""

import pytest
import torch

from bnlab.exercises import exercise
from bnlab.exercises.eval_mode import EXERCISES, MODE_PATTERNS
from exercise_answers import answer_from, assert_mistake_named, assert_solution_passes

PREDICT = "def predict(model, x):\n    "
FREEZE = "def train_with_frozen_batchnorm(model):\n    "
RECALIBRATE = """
def recalibrate(model, x, reset=True, cumulative=True, forward=True, train=True):
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]:
        if reset:
            bn.reset_running_stats()
        if cumulative:
            bn.momentum = None
    model.train(train)
    if forward:
        with torch.no_grad():
            model(x)
    return model.eval()

def wrong(model, x):
    return recalibrate(model, x, """
WRONG = {
    ("ch05.q2", "eval() forgotten"): PREDICT + "with torch.no_grad():\n        return model(x)",
    ("ch05.q2", "mode not restored"): PREDICT + "model.eval()\n    with torch.no_grad():\n        return model(x)",
    ("ch05.q2", "only the model's mode restored"):
        PREDICT + "was_training = model.training\n    model.eval()\n    with torch.no_grad():\n        y = model(x)\n"
                  "    model.train(was_training)\n    return y",
    ("ch05.q2", "running statistics changed"):
        PREDICT + "modes = {m: m.training for m in model.modules()}\n    with torch.no_grad():\n"
                  "        model.train()\n        model(x)\n        model.eval()\n        y = model(x)\n"
                  "    for m, mode in modes.items():\n        m.training = mode\n    return y",
    ("ch05.q2", "gradients tracked"):
        PREDICT + "modes = {m: m.training for m in model.modules()}\n    model.eval()\n    y = model(x)\n"
                  "    for m, mode in modes.items():\n        m.training = mode\n    return y",
    ("ch05.q2", "input changed in place"):
        PREDICT + "modes = {m: m.training for m in model.modules()}\n    model.eval()\n    with torch.no_grad():\n"
                  "        y = model(x)\n        x.zero_()\n    for m, mode in modes.items():\n"
                  "        m.training = mode\n    return y",
    ("ch05.q5", "BatchNorm left in train mode"):
        FREEZE + "for m in model.modules():\n        if isinstance(m, nn.BatchNorm1d):\n            m.eval()\n"
                 "    model.train()",
    ("ch05.q5", "everything in eval mode"): FREEZE + "model.eval()",
    ("ch05.q5", "other layers in eval mode"):
        FREEZE + "model.train()\n    for m in model.modules():\n"
                 "        if isinstance(m, (nn.BatchNorm1d, nn.Dropout)):\n"
                 "            m.eval()",
    ("ch05.q5", "input changed in place"):
        FREEZE + "model.train()\n    for m in model.modules():\n        if isinstance(m, nn.BatchNorm1d):\n"
                 "            m.eval()\n            m.reset_running_stats()",
}


@pytest.mark.parametrize("ex", list(EXERCISES), ids=lambda e: e.key)
def test_reference_solution_passes_on_many_fresh_inputs(ex):
    assert_solution_passes(ex, seeds=range(20) if ex.kind == "implement" else [0])


@pytest.mark.parametrize("key, mistake", list(WRONG), ids=str)
def test_typical_mistake_fails_with_its_own_message(key, mistake):
    assert_mistake_named(exercise(key), WRONG[key, mistake], mistake)


def test_every_check_tries_models_in_mixed_modes():
    for key in ("ch05.q2", "ch05.q5"):
        patterns = {case.info["pattern"] for case in exercise(key).make_cases(0)}
        assert patterns == set(MODE_PATTERNS), key
    assert any(model_mode != bn_mode for _, model_mode, bn_mode in MODE_PATTERNS)


def test_predict_restoring_only_the_models_own_mode_is_named_for_what_it_misses():
    result = exercise("ch05.q2").evaluate(lambda model, x: exercise_old_predict(model, x))
    assert result.mistake == "only the model's mode restored"
    assert "frozen in eval mode inside a train-mode model" in result.message


def exercise_old_predict(model, x):
    """The reference solution before models in mixed modes were checked: it restores only the model's flag."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def test_the_counter_comes_from_running_pytorch():
    assert exercise("ch05.q3").expected() == 5
    assert exercise("ch05.q3").evaluate(0).mistake == "no_grad switches mode"
    assert exercise("ch05.q3").evaluate(3).mistake == "inference_mode switches mode"


@pytest.mark.parametrize("mistake, arguments", [
    ("momentum kept", "reset=False, cumulative=False"), ("counter not reset", "reset=False"),
    ("reset only", "forward=False"), ("statistics unchanged", "reset=False, train=False"),
])
def test_a_repair_with_a_typical_mistake_fails_with_its_own_message(mistake, arguments):
    source = RECALIBRATE + arguments + ")"  # wrong() becomes the answer, recalibrate() its helper
    source = source.replace("recalibrate(", "helper(").replace("def wrong(", "def recalibrate(")
    assert_mistake_named(exercise("ch05.q7"), source, mistake)


def test_a_repair_left_in_train_mode_or_that_trains_or_returns_nothing_is_named():
    q7 = exercise("ch05.q7")
    solution = answer_from(q7.solution_code, "recalibrate")
    result = q7.evaluate(lambda model, x: solution(model, x).train())
    assert result.mistake == "left in train mode" and "model.eval()" in result.message

    def trains(model, x):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        return solution(model, x)

    result = q7.evaluate(trains)
    assert result.mistake == "weights changed" and "no training step" in result.message
    result = q7.evaluate(lambda model, x: None)
    assert result.status == "failed" and "return the model" in result.message
    result = q7.evaluate(lambda model, x: (solution(model, x), x.sub_(1))[0])
    assert result.mistake == "input changed in place" and "`x`" in result.message


def test_a_repair_may_work_on_a_copy_or_set_momentum_to_one():
    import copy

    q7 = exercise("ch05.q7")
    solution = answer_from(q7.solution_code, "recalibrate")
    assert q7.evaluate(lambda model, x: solution(copy.deepcopy(model), x)).passed

    def momentum_one(model, x):
        for bn in [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]:
            bn.momentum = 1.0
        model.train()
        with torch.no_grad():
            model(x)
        return model.eval()

    assert q7.evaluate(momentum_one).passed


def test_the_repair_is_checked_on_every_momentum_setting():
    momenta = {bn.momentum for case in exercise("ch05.q7").make_cases(0) for bn in case.args["model"].modules()
               if isinstance(bn, torch.nn.BatchNorm1d)}
    assert {0.0, 0.1, None} <= momenta

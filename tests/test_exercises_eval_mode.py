"""bnlab.exercises.eval_mode (ch05): the reference solutions pass, each typical mistake fails with its own
message, and "leave the model as it was" is checked layer by layer, on models in mixed modes too."""

import pytest

from bnlab.exercises import exercise
from bnlab.exercises.eval_mode import EXERCISES, MODE_PATTERNS
from exercise_answers import assert_mistake_named, assert_solution_passes

PREDICT = "def predict(model, x):\n    "
FREEZE = "def train_with_frozen_batchnorm(model):\n    "
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

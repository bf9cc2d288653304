"""bnlab.exercises.batchnorm_in_an_mlp (ch01): the reference solutions pass, each typical mistake fails with its
own message, the draft to debug fails for both its bugs, and the predicted numbers come from running PyTorch."""

import pytest
import torch
from torch import nn

from bnlab.exercises import exercise
from bnlab.exercises.batchnorm_in_an_mlp import BUGGY_BATCHNORM2D, EXERCISES
from exercise_answers import answer_from, assert_mistake_named, assert_solution_passes

FORWARD = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    "
FORWARD_2D = "def batchnorm2d_forward(x, gamma, beta, eps=1e-5):\n    "
G, B = "gamma.view(1, -1, 1, 1)", "beta.view(1, -1, 1, 1)"
BIASED = "torch.sqrt(x.var(0, unbiased=False) + eps)"

WRONG = {
    ("ch01.q1", "unbiased variance"): FORWARD + "return gamma * (x - x.mean(0)) / torch.sqrt(x.var(0) + eps) + beta",
    ("ch01.q1", "eps outside the square root"):
        FORWARD + "return gamma * (x - x.mean(0)) / (x.std(0, unbiased=False) + eps) + beta",
    ("ch01.q1", "statistics over the wrong axis"):
        FORWARD + "m, v = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)\n"
                  "    return gamma * (x - m) / torch.sqrt(v + eps) + beta",
    ("ch01.q1", "statistics over the whole tensor"):
        FORWARD + "return gamma * (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) + beta",
    ("ch01.q1", "eps argument ignored"):
        FORWARD + "return gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5) + beta",
    ("ch01.q1", "gamma and beta swapped"):
        FORWARD + "return beta * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps) + gamma",
    ("ch01.q1", "gamma and beta missing"): FORWARD + f"return (x - x.mean(0)) / {BIASED}",
    ("ch01.q1", "wrong dtype"): FORWARD + f"x = x.double()\n    return gamma * (x - x.mean(0)) / {BIASED} + beta",
    ("ch01.q1", "input changed in place"): FORWARD + f"x -= x.mean(0)\n    return gamma * x / {BIASED} + beta",
    ("ch01.q3", "both bugs left"): BUGGY_BATCHNORM2D.replace("batchnorm2d_draft", "batchnorm2d_forward"),
    ("ch01.q3", "statistics over the batch axis only"):
        FORWARD_2D + "m, v = x.mean(0, keepdim=True), x.var(0, unbiased=False, keepdim=True)\n"
                     f"    return {G} * (x - m) / torch.sqrt(v + eps) + {B}",
    ("ch01.q3", "statistics per example and channel"):
        FORWARD_2D + "m, v = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)\n"
                     f"    return {G} * (x - m) / torch.sqrt(v + eps) + {B}",
    ("ch01.q3", "statistics per example"):
        FORWARD_2D + "m, v = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), unbiased=False, keepdim=True)\n"
                     f"    return {G} * (x - m) / torch.sqrt(v + eps) + {B}",
    ("ch01.q3", "unbiased variance"):
        FORWARD_2D + "m, v = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), keepdim=True)\n"
                     f"    return {G} * (x - m) / torch.sqrt(v + eps) + {B}",
    ("ch01.q3", "eps outside the square root"):
        FORWARD_2D + "m, v = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)\n"
                     f"    return {G} * (x - m) / (v.sqrt() + eps) + {B}",
}


@pytest.mark.parametrize("ex", list(EXERCISES), ids=lambda e: e.key)
def test_reference_solution_passes_on_many_fresh_inputs(ex):
    assert_solution_passes(ex, seeds=range(20) if ex.kind == "implement" else [0])


@pytest.mark.parametrize("key, mistake", list(WRONG), ids=str)
def test_typical_mistake_fails_with_its_own_message(key, mistake):
    assert_mistake_named(exercise(key), WRONG[key, mistake], mistake)


def test_the_course_mistakes_are_named_in_words():
    mistakes = exercise("ch01.q1").mistakes
    assert "eps is outside the square root" in mistakes["eps outside the square root"]
    assert "wrong axis" in mistakes["statistics over the wrong axis"]


@pytest.mark.parametrize("value, mistake", [(62875 + 240, "buffers counted"), (62875 + 242, "buffers counted"),
                                            (62875 + 120, "hidden biases counted"),
                                            (62875 - 240, "BatchNorm parameters left out"),
                                            (62875 - 10, "output bias left out")])
def test_a_parameter_count_from_a_typical_mistake_is_named(value, mistake):
    result = exercise("ch01.q2").evaluate(value)
    assert result.status == "failed" and result.mistake == mistake, result.message


def test_the_parameter_count_comes_from_building_the_model():
    assert exercise("ch01.q2").expected() == 784 * 75 + 2 * 75 + 75 * 45 + 2 * 45 + 45 * 10 + 10


def test_the_draft_to_debug_runs_without_error_and_has_exactly_two_bugs():
    draft = answer_from(BUGGY_BATCHNORM2D, "batchnorm2d_draft")
    x, bn = torch.randn(4, 3, 5, 6), nn.BatchNorm2d(3)
    with torch.no_grad():
        assert draft(x, bn.weight, bn.bias).shape == x.shape
        assert not torch.allclose(draft(x, bn.weight, bn.bias), bn(x), atol=1e-3)
    fixed = BUGGY_BATCHNORM2D.replace("dim=0, keepdim", "dim=(0, 2, 3), keepdim")
    assert "one bug is left" in exercise("ch01.q3").evaluate(answer_from(fixed, "batchnorm2d_draft")).message.lower()
    both = fixed.replace("keepdim=True)\n    x_hat", "keepdim=True, unbiased=False)\n    x_hat")
    assert exercise("ch01.q3").evaluate(answer_from(both, "batchnorm2d_draft")).passed


@pytest.mark.parametrize("value, mistake", [(1.0, "unit variance assumed"), (0.75, "variance given"),
                                            (0.0548 / (0.0548 + 0.001), "eps outside the square root")])
def test_an_output_spread_from_a_typical_mistake_is_named(value, mistake):
    result = exercise("ch01.q5").evaluate(value)
    assert result.status == "failed" and result.mistake == mistake, result.message


def test_the_output_spread_comes_from_running_pytorch():
    assert exercise("ch01.q5").expected() == pytest.approx(0.75 ** 0.5)
    assert exercise("ch01.q5").evaluate(0.866).passed


def test_a_mistake_is_named_where_its_result_is_ill_conditioned():
    # on these seeds the first input's batch of two has pixels that nearly agree: statistics over the batch axis
    # alone divide their tiny difference by sqrt(1e-5), and float32 rounding exceeds the grade's tolerance
    mistake = "statistics over the batch axis only"
    assert_mistake_named(exercise("ch01.q3"), WRONG["ch01.q3", mistake], mistake, seeds=(232, 709, 1083, 1109))

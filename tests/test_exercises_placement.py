"""bnlab.exercises.placement (ch02): the reference solutions pass, each typical mistake fails with its own message,
a block must be an nn.Sequential of PyTorch's layers, and the seed results do what the questions say of them."""

import math
import statistics

import pytest
from torch import nn

from bnlab.exercises import exercise
from bnlab.exercises.placement import EXERCISES, SEED_RESULTS, T_CRITICAL_4
from exercise_answers import answer_from, assert_mistake_named, assert_solution_passes

BLOCK = "def hidden_block(n_in, n_out, placement, dropout=0.0):\n    "
WRONG = {
    ("ch02.q1", "placement swapped"):
        BLOCK + "if placement == 'after':\n"
                "        layers = [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]\n"
                "    else:\n        layers = [nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out)]\n"
                "    return nn.Sequential(*layers, *([nn.Dropout(dropout)] if dropout > 0 else []))",
    ("ch02.q1", "dropout not last"):
        BLOCK + "drop = [nn.Dropout(dropout)] if dropout > 0 else []\n"
                "    if placement == 'before':\n"
                "        return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), *drop, nn.ReLU())\n"
                "    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), *drop, nn.BatchNorm1d(n_out))",
    ("ch02.q1", "dropout missing"):
        BLOCK + "if placement == 'before':\n"
                "        return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU())\n"
                "    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out))",
}


@pytest.mark.parametrize("ex", list(EXERCISES), ids=lambda e: e.key)
def test_reference_solution_passes_on_many_fresh_inputs(ex):
    assert_solution_passes(ex, seeds=range(20) if ex.kind == "implement" else [0])


@pytest.mark.parametrize("key, mistake", list(WRONG), ids=str)
def test_typical_mistake_fails_with_its_own_message(key, mistake):
    assert_mistake_named(exercise(key), WRONG[key, mistake], mistake)


def test_a_block_must_be_a_sequential_of_pytorchs_layers_in_float32():
    q1 = exercise("ch02.q1")
    solution = answer_from(q1.solution_code, "hidden_block")
    assert "expected an nn.Sequential" in q1.evaluate(lambda *a, **k: list(solution(*a, **k))).message

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

    assert "build it from PyTorch's layers" in q1.evaluate(lambda *a, **k: nn.Sequential(Block())).message
    result = q1.evaluate(lambda *a, **k: solution(*a, **k).double())
    assert result.mistake == "wrong dtype" and "float32" in result.message
    nested = q1.evaluate(lambda *a, **k: nn.Sequential(solution(*a, **k)[:2], solution(*a, **k)[2:]))
    assert nested.passed, nested.message


@pytest.mark.parametrize("value, mistake", [
    (1.1611, "unpaired test"), (-11.82, "sign"), (13.21, "population standard deviation"),
    (5.285, "no square root of n"), (10.57, "n - 1 in the standard error"),
])
def test_a_t_statistic_from_a_typical_mistake_is_named(value, mistake):
    result = exercise("ch02.q2").evaluate(value)
    assert result.status == "failed" and result.mistake == mistake, result.message


def test_the_paired_t_statistic_is_right_to_two_decimals():
    d = [a - b for a, b in zip(SEED_RESULTS["after"], SEED_RESULTS["before"])]
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
    assert exercise("ch02.q2").expected() == pytest.approx(t)
    assert exercise("ch02.q2").evaluate(round(t, 2)).passed


def test_the_seed_results_do_what_the_questions_say():
    """Every seed favours 'after', the paired test supports it, the unpaired view and the old screen do not."""
    after, before = SEED_RESULTS["after"], SEED_RESULTS["before"]
    assert all(a > b for a, b in zip(after, before))
    difference = statistics.fmean(after) - statistics.fmean(before)
    assert difference < min(statistics.stdev(after), statistics.stdev(before))
    assert exercise("ch02.q2").expected() > T_CRITICAL_4
    welch = next(value for name, value, _ in exercise("ch02.q2").mistakes() if name == "unpaired test")
    assert abs(welch) < T_CRITICAL_4
    assert round(statistics.fmean(before), 2) == 97.71 and round(statistics.fmean(after), 2) == 97.81
    assert round(statistics.stdev(before), 2) == round(statistics.stdev(after), 2) == 0.13


def test_the_critical_value_is_the_t_quantile_for_four_degrees_of_freedom():
    """P(|T| > t) = 0.05 at t = 2.776, rounded to three decimals, from the closed form for 4 degrees of freedom:
    P(|T| <= t) = x (3 - x^2) / 2 with x = t / sqrt(4 + t^2)."""

    def two_sided(t):
        x = t / math.sqrt(4 + t * t)
        return 1 - x * (3 - x * x) / 2

    assert two_sided(T_CRITICAL_4 - 0.0005) > 0.05 > two_sided(T_CRITICAL_4 + 0.0005)

"""bnlab.exercises.placement (ch02): the reference solutions pass, each typical mistake fails with its own message,
and a block must be an nn.Sequential of PyTorch's layers."""

import pytest
from torch import nn

from bnlab.exercises import exercise
from bnlab.exercises.placement import EXERCISES
from exercise_answers import answer_from, assert_mistake_named, assert_solution_passes

BLOCK = "def hidden_block(n_in, n_out, placement, dropout=0.0):\n    "
MEAN = "statistics.fmean"
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
    ("ch02.q2", "signed difference"):
        f"def differs_beyond_noise(a, b):\n    return {MEAN}(a) - {MEAN}(b) > max(statistics.stdev(a), "
        f"statistics.stdev(b))",
    ("ch02.q2", "population standard deviation"):
        f"def differs_beyond_noise(a, b):\n    return abs({MEAN}(a) - {MEAN}(b)) > max(statistics.pstdev(a), "
        f"statistics.pstdev(b))",
    ("ch02.q2", "smaller spread"):
        f"def differs_beyond_noise(a, b):\n    return abs({MEAN}(a) - {MEAN}(b)) > min(statistics.stdev(a), "
        f"statistics.stdev(b))",
    ("ch02.q2", "sum of spreads"):
        f"def differs_beyond_noise(a, b):\n    return abs({MEAN}(a) - {MEAN}(b)) > statistics.stdev(a) + "
        f"statistics.stdev(b)",
    ("ch02.q2", "variance instead of standard deviation"):
        f"def differs_beyond_noise(a, b):\n    return abs({MEAN}(a) - {MEAN}(b)) > max(statistics.variance(a), "
        f"statistics.variance(b))",
    ("ch02.q2", "input changed in place"):
        f"def differs_beyond_noise(a, b):\n    a.sort()\n    return abs({MEAN}(a) - {MEAN}(b)) > "
        f"max(statistics.stdev(a), statistics.stdev(b))",
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


def test_verdicts_must_be_true_or_false():
    q2 = exercise("ch02.q2")
    assert "True or False" in q2.evaluate(lambda a, b: "yes").message
    import torch

    solution = answer_from(q2.solution_code, "differs_beyond_noise")
    assert q2.evaluate(lambda a, b: torch.tensor(solution(a, b))).passed

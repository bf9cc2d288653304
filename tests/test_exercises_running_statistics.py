"""bnlab.exercises.running_statistics (ch04): the reference solutions pass, each typical mistake fails with its own
message, including the in-place update BatchNorm itself does to its buffers, and the draft to debug fails for both
its bugs."""

import pytest

from bnlab.exercises import exercise
from bnlab.exercises.running_statistics import BUGGY_UPDATE, EXERCISES, SHORT_TRAINING
from exercise_answers import answer_from, assert_mistake_named, assert_solution_passes

UPDATE = "def update_running_stats(running_mean, running_var, x, momentum=0.1):\n    "
WRONG = {
    ("ch04.q1", "momentum on the wrong term"):
        UPDATE + "return (momentum * running_mean + (1 - momentum) * x.mean(0),\n"
                 "            momentum * running_var + (1 - momentum) * x.var(0))",
    ("ch04.q1", "biased variance in running_var"):
        UPDATE + "return ((1 - momentum) * running_mean + momentum * x.mean(0),\n"
                 "            (1 - momentum) * running_var + momentum * x.var(0, unbiased=False))",
    ("ch04.q1", "momentum on the wrong term and biased variance in running_var"):
        UPDATE + "return (momentum * running_mean + (1 - momentum) * x.mean(0),\n"
                 "            momentum * running_var + (1 - momentum) * x.var(0, unbiased=False))",
    ("ch04.q1", "statistics over the whole tensor"):
        UPDATE + "return ((1 - momentum) * running_mean + momentum * x.mean(),\n"
                 "            (1 - momentum) * running_var + momentum * x.var())",
    ("ch04.q1", "momentum argument ignored"):
        UPDATE + "return 0.9 * running_mean + 0.1 * x.mean(0), 0.9 * running_var + 0.1 * x.var(0)",
    ("ch04.q1", "input changed in place"):
        UPDATE + "running_mean.mul_(1 - momentum).add_(momentum * x.mean(0))\n"
                 "    running_var.mul_(1 - momentum).add_(momentum * x.var(0))\n"
                 "    return running_mean, running_var",
}


@pytest.mark.parametrize("ex", list(EXERCISES), ids=lambda e: e.key)
def test_reference_solution_passes_on_many_fresh_inputs(ex):
    assert_solution_passes(ex, seeds=range(20) if ex.kind == "implement" else [0])


@pytest.mark.parametrize("key, mistake", list(WRONG), ids=str)
def test_typical_mistake_fails_with_its_own_message(key, mistake):
    assert_mistake_named(exercise(key), WRONG[key, mistake], mistake)


def test_the_course_mistakes_are_named_in_words():
    mistakes = exercise("ch04.q1").mistakes
    assert "momentum is on the wrong term" in mistakes["momentum on the wrong term"].lower()
    assert "running_var stores the unbiased" in mistakes["biased variance in running_var"]


def test_the_update_must_return_a_pair():
    assert "pair" in exercise("ch04.q1").evaluate(lambda m, v, x, momentum=0.1: m).message


@pytest.mark.parametrize("key, value, mistake", [
    ("ch04.q2", 2 * (1 - 0.1 ** 10), "momentum on the wrong term"), ("ch04.q2", 2.0, "momentum on the wrong term"),
    ("ch04.q2", 2 * (1 - 0.9 ** 9), "steps miscounted"), ("ch04.q3", 1.0, "biased variance in running_var"),
    ("ch04.q3", 2 * (1 - 0.9 ** 10), "start value 0"), ("ch04.q4", 0.99, "Keras value copied"),
    ("ch04.q4", 0.1, "PyTorch default"),
])
def test_a_number_from_a_typical_mistake_is_named(key, value, mistake):
    result = exercise(key).evaluate(value)
    assert result.status == "failed" and result.mistake == mistake, result.message


def test_the_numbers_come_from_running_pytorch():
    assert exercise("ch04.q2").expected() == pytest.approx(2 * (1 - 0.9 ** 10))
    assert exercise("ch04.q3").expected() == pytest.approx(0.9 ** 10 + 2 * (1 - 0.9 ** 10))
    assert exercise("ch04.q2").evaluate(1.3026).passed and not exercise("ch04.q2").evaluate(1.35).passed
    assert f"{0.9 ** SHORT_TRAINING:.2f}" in exercise("ch04.q5").why["A"]


def test_the_draft_to_debug_fails_for_both_bugs_and_each_fix_leaves_the_other():
    q1 = exercise("ch04.q1")
    assert_mistake_named(q1, BUGGY_UPDATE.replace("update_draft", "update_running_stats"),
                         "momentum on the wrong term and biased variance in running_var")
    assert q1.mistakes["momentum on the wrong term and biased variance in running_var"].startswith("Both bugs")
    variance_fixed = BUGGY_UPDATE.replace("unbiased=False", "unbiased=True")
    assert q1.evaluate(answer_from(variance_fixed, "update_draft")).mistake == "momentum on the wrong term"
    momentum_fixed = BUGGY_UPDATE.replace("momentum * running_mean + (1 - momentum)", "(1 - momentum) * "
                                          "running_mean + momentum").replace(
        "momentum * running_var + (1 - momentum)", "(1 - momentum) * running_var + momentum")
    assert q1.evaluate(answer_from(momentum_fixed, "update_draft")).mistake == "biased variance in running_var"

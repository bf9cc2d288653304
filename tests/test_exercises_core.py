"""bnlab.exercises.core: a check prints instead of raising, unanswered exercises report "not attempted", answers
are run on fresh inputs with a time limit, and anything unreadable or unforeseen is never a pass."""

import json

import pytest
import torch
from torch import nn

from bnlab.exercises import SETS, exercise
from bnlab.exercises.core import (
    ERROR, FAILED, GRADING, NOT_ATTEMPTED, NOT_FOUND, PASSED, Case, ChoiceExercise, FunctionExercise, Result,
    ValueExercise,
)
from exercise_answers import answer_from

ALL = [e for s in SETS.values() for e in s]
Q1 = SETS["ch01"].q1  # batchnorm_forward


def not_implemented(*args, **kwargs):
    raise NotImplementedError("replace this line with your code")


def test_result_reads_as_one_line_and_rescales_all_or_nothing():
    result = Result("ch01.q1", "the forward", PASSED, "Right.", 3, 3)
    assert str(result) == "✔ q1 (the forward): passed. Right." and result.name == "q1"
    assert result.with_points(5).points == 5 and Result("k.q2", "t", FAILED, "No.", 0, 2).with_points(5).points == 0


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.key)
def test_unanswered_exercise_reports_not_attempted(ex):
    placeholders = [None, ..., "  "] + ([not_implemented] if isinstance(ex, FunctionExercise) else [])
    for placeholder in placeholders:
        result = ex.evaluate(placeholder)
        assert result.status == NOT_ATTEMPTED and result.points == 0 and "not answered yet" in result.message


def test_check_prints_instead_of_raising(capsys):
    Q1.check(not_implemented)
    Q1.check(lambda x, gamma, beta, eps=1e-5: 1 / 0)
    out = capsys.readouterr().out
    assert "not attempted" in out and "raised ZeroDivisionError" in out and "q1.failed_input" in out


def test_check_without_an_argument_finds_the_answer_by_name(capsys):
    q2 = exercise("ch04.q2")
    q2.check()  # this module has no answer_q2
    assert "There is no `answer_q2`" in capsys.readouterr().out
    globals()["answer_q2"] = 2 * (1 - 0.9 ** 10)
    try:
        q2.check()
    finally:
        del globals()["answer_q2"]
    assert "passed" in capsys.readouterr().out


def test_hint_and_solution_print_their_text(capsys):
    Q1.hint()
    Q1.solution()
    out = capsys.readouterr().out
    assert "biased" in out and "def batchnorm_forward" in out


def test_check_all_adds_up_the_points_of_the_answers_it_finds(capsys):
    ch04 = SETS["ch04"]
    namespace = {"answer_q4": 1 - 0.99, "answer_q5": "A", "update_running_stats": not_implemented}
    ch04.check_all(namespace)
    out = capsys.readouterr().out
    assert f"Total: {ch04.q4.points + ch04.q5.points:g} of {ch04.max_points:g} points." in out
    assert [r.status for r in ch04.results(namespace)] == [NOT_ATTEMPTED, NOT_FOUND, NOT_FOUND, PASSED, PASSED]


def test_in_the_graders_kernel_the_notebooks_own_checks_do_nothing(monkeypatch, capsys):
    monkeypatch.setenv(GRADING, "1")
    Q1.check(lambda *a: 1 / 0)
    SETS["ch01"].check_all({})
    out = capsys.readouterr().out
    assert out.count("The grader checks") == 2 and "raised" not in out


# --- running the answer -------------------------------------------------------------------------------------------


def test_each_check_draws_fresh_inputs_and_a_seed_repeats_them():
    for ex in ALL:
        if isinstance(ex, FunctionExercise):
            spec = lambda seed: json.dumps([c.spec() for c in ex.make_cases(seed)])  # noqa: E731
            assert spec(None) != spec(None) and spec(3) == spec(3), ex.key


def test_a_hard_coded_answer_fails():
    stored = Q1.expected(Q1.make_cases(seed=1)[1]).float()  # the right output for one input, remembered
    assert not Q1.evaluate(lambda x, gamma, beta, eps=1e-5: stored, seed=2).passed


def test_an_endless_loop_is_stopped_by_the_time_limit():
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        while True:
            try:
                pass
            except Exception:  # swallowing ordinary exceptions does not help
                pass

    result = Q1.evaluate(batchnorm_forward, time_limit=0.5)
    assert result.status == FAILED and "longer than the time limit" in result.message


def test_errors_raised_by_an_answer_fail_the_check_with_the_error_and_a_hint():
    def update_running_stats(running_mean, running_var, x, momentum=0.1):
        return (1 - momentum) * running_mean + momentum * x.mean(1), running_var  # wrong axis: shapes clash

    result = exercise("ch04.q1").evaluate(update_running_stats)
    assert result.status == FAILED and "raised RuntimeError" in result.message and "which axis" in result.message

    def exits(*args, **kwargs):
        raise SystemExit(1)

    assert "raised SystemExit" in exercise("ch04.q1").evaluate(exits).message
    assert "should be a function" in exercise("ch04.q1").evaluate(42).message


def test_failed_input_holds_the_input_the_answer_got_wrong():
    q1 = exercise("ch04.q1")
    q1.evaluate(lambda m, v, x, momentum=0.1: (m, v))
    assert {"running_mean", "running_var", "x"} <= set(q1.failed_input)
    assert q1.failed_input["x"].dtype == torch.float32
    q1.evaluate(answer_from(q1.solution_code, q1.answer))
    assert q1.failed_input is None


# --- exact checks -------------------------------------------------------------------------------------------------


def test_a_float64_result_for_a_float32_task_fails_with_its_own_message():
    result = Q1.evaluate(lambda x, gamma, beta, eps=1e-5: torch.nn.functional.batch_norm(
        x.double(), None, None, gamma.double(), beta.double(), training=True, eps=eps))
    assert result.status == FAILED and result.mistake == "wrong dtype"
    assert "the result is float64, not float32" in result.message and ".double()" in result.message


def test_an_answer_that_changes_its_input_in_place_fails_even_when_its_result_is_right():
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        mean, var = x.mean(0), x.var(0, unbiased=False)
        x.sub_(mean).div_(torch.sqrt(var + eps))  # the right numbers, in the caller's tensor
        return gamma * x + beta

    result = Q1.evaluate(batchnorm_forward)
    assert result.status == FAILED and result.mistake == "input changed in place"
    assert "changed its input `x` in place" in result.message and result.message.startswith("Your function changed")


def test_wrong_shapes_types_and_nan_are_reported_not_raised():
    assert "of shape (" in Q1.evaluate(lambda x, gamma, beta, eps=1e-5: x.mean(0)).message
    assert "to be a float32 tensor" in Q1.evaluate(lambda x, gamma, beta, eps=1e-5: "no").message
    assert "NaN" in Q1.evaluate(lambda x, gamma, beta, eps=1e-5: x * float("nan")).message


def test_an_answer_cannot_reach_the_reference_from_its_callers():
    """The probe that calls the answer holds no reference: nothing in the call stack or among live objects has an
    ``expected`` that knows the case."""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        import sys
        frame = sys._getframe(1)
        while frame is not None:
            for value in frame.f_locals.values():
                if hasattr(value, "expected") and "case" in frame.f_locals:
                    return value.expected(frame.f_locals["case"]).float()
            frame = frame.f_back
        return x

    assert Q1.evaluate(batchnorm_forward).status == FAILED


# --- what the checking side reads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.key)
def test_unreadable_or_foreign_records_are_never_a_pass(ex):
    cases = ex.make_cases(0)
    token = "t" * 16
    records = ["", "not json", "[1]", json.dumps({"token": "other", "observed": {"status": "ran", "value": 1}}),
               json.dumps({"token": token, "observed": {"status": "passed"}}),
               json.dumps({"token": token, "observed": {"status": "ran", "runs": "x", "callable": True}}),
               '{"token": "' + token + '", "observed": {"status": "ran", "value": NaN}}']
    for text in records:
        result, _ = ex.judge_text(cases, text, token)
        assert result.status == ERROR and not result.passed, (ex.key, text)


def test_a_judge_that_meets_a_value_it_did_not_foresee_says_so_and_never_passes():
    class Odd(FunctionExercise):
        def make_case(self, generator, index):
            return Case({"x": torch.zeros(2)})

        def expected(self, case):
            raise RuntimeError("unforeseen")

    odd = Odd("ch01.q9", "odd", "f", points=1, hint="", solution="")
    result = odd.evaluate(lambda x: x)
    assert result.status == ERROR and "could not be judged (RuntimeError: unforeseen)" in result.message


def test_predict_answers_must_be_numbers():
    for value in ("1.3", [1.3], True, float("nan"), nn.Linear(1, 1), torch.tensor([True])):
        result = exercise("ch04.q2").evaluate(value)
        assert result.status == FAILED and "should be a number" in result.message, value
    assert exercise("ch04.q2").evaluate(torch.tensor(1.3026)).passed


def test_choice_explains_every_wrong_and_every_missing_letter():
    q4 = exercise("ch05.q4")  # A, D, E
    message = q4.evaluate("a, b").message
    assert "B is not right" in message and "D is missing" in message and "E is missing" in message
    assert q4.evaluate(["A", "D", "E"]).passed and q4.evaluate("E A D").passed
    assert "one letter" in exercise("ch05.q1").evaluate("AB").message
    assert "letters from" in exercise("ch05.q1").evaluate("Z").message


def test_a_choice_whose_key_or_explanations_do_not_fit_its_options_is_refused():
    with pytest.raises(ValueError, match="correct"):
        ChoiceExercise("ch01.q9", "t", "a", options={"A": "x"}, correct="B", why={"A": "y"}, points=1, hint="")
    with pytest.raises(ValueError, match="why must explain each option"):
        ChoiceExercise("ch01.q9", "t", "a", options={"A": "x", "B": "y"}, correct="A", why={"A": "y"}, points=1,
                       hint="")


def test_value_exercises_name_the_number_a_mistake_gives():
    class Half(ValueExercise):
        def expected(self):
            return self.params["n"] / 2

        def mistakes(self):
            return [("doubled", self.params["n"] * 2, "Halve it.")]

    half = Half("ch01.q9", "half", "answer", params={"n": 8}, points=1, hint="", solution="")
    assert half.evaluate(4).passed
    result = half.evaluate(16)
    assert result.mistake == "doubled" and "Halve it." in result.message


def test_a_mistake_without_results_is_never_the_consistent_one():
    """An answer with the right values and a side effect is named for the side effect, not for a mistake that
    ``problem`` names and ``variants`` never gives results for."""
    class Doubling(FunctionExercise):
        mistakes = {"named by problem": "The problem says so.", "halved": "Double it."}

        def make_case(self, generator, index):
            return Case({"x": torch.ones(2) * (index + 1)})

        def expected(self, case):
            return case.args["x"].double() * 2

        def variants(self, case):
            return {"halved": case.args["x"].double() / 2}

    doubling = Doubling("ch01.q9", "doubling", "f", points=1, hint="", solution="")
    assert doubling.evaluate(lambda x: x / 2).mistake == "halved"
    result = doubling.evaluate(lambda x: (x * 2, x.zero_())[0])
    assert result.mistake == "input changed in place", result.message


def test_gap_is_the_largest_difference_through_tuples_and_lists():
    from bnlab.exercises.core import gap

    a = torch.tensor([1.0, 2.0, 3.0])
    assert gap(a, a + torch.tensor([0.0, 0.5, -2.0])) == 2.0
    assert gap((a, [a, torch.zeros(2)]), (a, [a + 1, torch.zeros(2)])) == 1.0
    assert gap([1, 2], [1, 2]) == 0.0  # values other than tensors: equal or not, same() decides
    assert gap(torch.empty(0), torch.empty(0)) == 0.0

"""bnlab.exercises: reference solutions pass, typical mistakes fail with their own message, unanswered exercises
report "not attempted", and the exercise notebooks match the checks."""

import json
import re
import statistics
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab import exercises
from bnlab.exercises import (
    FAILED, NOT_ATTEMPTED, NOT_FOUND, PASSED, POINTS, SETS, ChoiceExercise, FunctionExercise, MalformedObservation,
    ValueExercise, decode, encode, exercise,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = {
    "ch01": "ex01_batchnorm_in_an_mlp", "ch02": "ex02_placement", "ch03": "ex03_bias_redundancy",
    "ch04": "ex04_running_statistics", "ch05": "ex05_eval_mode",
}
ALL = [e for s in SETS.values() for e in s]


def answer_from(source: str, name: str):
    """Run ``source`` the way a notebook cell does and return the variable ``name`` it defines."""
    namespace = {"torch": torch, "nn": nn, "statistics": statistics}
    exec(textwrap.dedent(source), namespace)
    return namespace[name]


# --- the reference solutions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.key)
def test_reference_solution_passes_its_check(ex):
    result = ex.evaluate(answer_from(ex.solution_code, ex.answer))
    assert result.status == PASSED, result.message
    assert result.points == result.max_points == POINTS[ex.key]


@pytest.mark.parametrize("ex", [e for e in ALL if isinstance(e, FunctionExercise)], ids=lambda e: e.key)
def test_reference_solution_passes_on_many_fresh_inputs(ex):
    solution = answer_from(ex.solution_code, ex.answer)
    for seed in range(20):
        assert ex.evaluate(solution, seed=seed).passed, seed


def test_every_chapter_has_at_least_three_exercises_of_mixed_kinds():
    assert list(SETS) == ["ch01", "ch02", "ch03", "ch04", "ch05"]
    for exercise_set in SETS.values():
        kinds = {e.kind for e in exercise_set}
        assert len(exercise_set) >= 3
        assert "implement" in kinds and kinds & {"predict", "diagnose"}
    assert {e.kind for e in ALL} == {"implement", "predict", "diagnose"}


def test_points_are_configured_in_one_table_for_every_exercise():
    assert set(POINTS) == {e.key for e in ALL}
    assert all(e.points == POINTS[e.key] > 0 for e in ALL)
    assert SETS["ch04"].max_points == sum(POINTS[k] for k in POINTS if k.startswith("ch04."))


def test_exercise_looks_up_keys_and_rejects_unknown_ones():
    assert exercise("ch04.q1") is SETS["ch04"].q1
    with pytest.raises(ValueError, match="key"):
        exercise("ch09.q1")


# --- not attempted ------------------------------------------------------------------------------------------------


def not_implemented(*args, **kwargs):
    raise NotImplementedError("replace this line with your code")


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.key)
def test_unanswered_exercise_reports_not_attempted(ex):
    placeholders = [None, ...] + ([not_implemented] if isinstance(ex, FunctionExercise) else [])
    for placeholder in placeholders:
        result = ex.evaluate(placeholder)
        assert result.status == NOT_ATTEMPTED and result.points == 0
        assert "not answered yet" in result.message


def test_check_prints_instead_of_raising(capsys):
    q1 = SETS["ch01"].q1
    q1.check(not_implemented)
    q1.check(lambda x, gamma, beta, eps=1e-5: 1 / 0)
    out = capsys.readouterr().out
    assert "not attempted" in out
    assert "raised ZeroDivisionError" in out and "q1.failed_input" in out


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


def test_check_all_adds_up_the_points_of_the_answers_it_finds(capsys):
    ch04 = SETS["ch04"]
    namespace = {"answer_q4": 1 - 0.99, "answer_q5": "A", "update_running_stats": not_implemented}
    ch04.check_all(namespace)
    out = capsys.readouterr().out
    assert f"Total: {POINTS['ch04.q4'] + POINTS['ch04.q5']:g} of {ch04.max_points:g} points." in out
    assert "not found" in out  # answer_q2 and answer_q3 are missing from the namespace
    results = ch04.results(namespace)
    assert [r.status for r in results] == [NOT_ATTEMPTED, NOT_FOUND, NOT_FOUND, PASSED, PASSED]


# --- typical mistakes, each with its own message -----------------------------------------------------------------

WRONG = {
    # ch01.q1: the train-mode forward
    ("ch01.q1", "unbiased variance"): """
        def batchnorm_forward(x, gamma, beta, eps=1e-5):
            return gamma * (x - x.mean(0)) / torch.sqrt(x.var(0) + eps) + beta""",
    ("ch01.q1", "eps outside the square root"): """
        def batchnorm_forward(x, gamma, beta, eps=1e-5):
            return gamma * (x - x.mean(0)) / (x.std(0, unbiased=False) + eps) + beta""",
    ("ch01.q1", "statistics over the wrong axis"): """
        def batchnorm_forward(x, gamma, beta, eps=1e-5):
            mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
            return gamma * (x - mean) / torch.sqrt(var + eps) + beta""",
    ("ch01.q1", "statistics over the whole tensor"): """
        def batchnorm_forward(x, gamma, beta, eps=1e-5):
            return gamma * (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) + beta""",
    ("ch01.q1", "eps argument ignored"): """
        def batchnorm_forward(x, gamma, beta, eps=1e-5):
            return gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5) + beta""",
    ("ch01.q1", "gamma and beta swapped"): """
        def batchnorm_forward(x, gamma, beta, eps=1e-5):
            return beta * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps) + gamma""",
    ("ch01.q1", "gamma and beta missing"): """
        def batchnorm_forward(x, gamma, beta, eps=1e-5):
            return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)""",
    # ch01.q3: BatchNorm2d
    ("ch01.q3", "statistics over the batch axis only"): """
        def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
            mean, var = x.mean(0, keepdim=True), x.var(0, unbiased=False, keepdim=True)
            return gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1)""",
    ("ch01.q3", "statistics per example and channel"): """
        def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
            mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
            return gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1)""",
    ("ch01.q3", "statistics per example"): """
        def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
            mean, var = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), unbiased=False, keepdim=True)
            return gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1)""",
    ("ch01.q3", "unbiased variance"): """
        def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
            mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), keepdim=True)
            return gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1)""",
    ("ch01.q3", "eps outside the square root"): """
        def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
            mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
            return gamma.view(1, -1, 1, 1) * (x - mean) / (var.sqrt() + eps) + beta.view(1, -1, 1, 1)""",
    # ch02.q1: the hidden block
    ("ch02.q1", "placement swapped"): """
        def hidden_block(n_in, n_out, placement, dropout=0.0):
            if placement == "after":
                layers = [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]
            else:
                layers = [nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out)]
            return nn.Sequential(*layers, *([nn.Dropout(dropout)] if dropout > 0 else []))""",
    ("ch02.q1", "dropout not last"): """
        def hidden_block(n_in, n_out, placement, dropout=0.0):
            drop = [nn.Dropout(dropout)] if dropout > 0 else []
            if placement == "before":
                return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), *drop, nn.ReLU())
            return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), *drop, nn.BatchNorm1d(n_out))""",
    ("ch02.q1", "dropout missing"): """
        def hidden_block(n_in, n_out, placement, dropout=0.0):
            if placement == "before":
                return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU())
            return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out))""",
    # ch02.q2: larger than the seed-to-seed spread?
    ("ch02.q2", "signed difference"): """
        def differs_beyond_noise(a, b):
            return statistics.fmean(a) - statistics.fmean(b) > max(statistics.stdev(a), statistics.stdev(b))""",
    ("ch02.q2", "population standard deviation"): """
        def differs_beyond_noise(a, b):
            return abs(statistics.fmean(a) - statistics.fmean(b)) > max(statistics.pstdev(a), statistics.pstdev(b))""",
    ("ch02.q2", "smaller spread"): """
        def differs_beyond_noise(a, b):
            return abs(statistics.fmean(a) - statistics.fmean(b)) > min(statistics.stdev(a), statistics.stdev(b))""",
    ("ch02.q2", "sum of spreads"): """
        def differs_beyond_noise(a, b):
            return abs(statistics.fmean(a) - statistics.fmean(b)) > statistics.stdev(a) + statistics.stdev(b)""",
    ("ch02.q2", "variance instead of standard deviation"): """
        def differs_beyond_noise(a, b):
            return abs(statistics.fmean(a) - statistics.fmean(b)) > max(statistics.variance(a), statistics.variance(b))""",
    # ch03.q2: folding
    ("ch03.q2", "eps left out"): """
        def fold_batchnorm(linear, bn):
            return fold(linear, bn, torch.sqrt(bn.running_var))""",
    ("ch03.q2", "eps outside the square root"): """
        def fold_batchnorm(linear, bn):
            return fold(linear, bn, torch.sqrt(bn.running_var) + bn.eps)""",
    ("ch03.q2", "variance instead of standard deviation"): """
        def fold_batchnorm(linear, bn):
            return fold(linear, bn, bn.running_var + bn.eps)""",
    ("ch03.q2", "Linear bias dropped"): """
        def fold_batchnorm(linear, bn):
            return fold(linear, bn, torch.sqrt(bn.running_var + bn.eps), keep_b=False)""",
    ("ch03.q2", "beta dropped"): """
        def fold_batchnorm(linear, bn):
            return fold(linear, bn, torch.sqrt(bn.running_var + bn.eps), keep_beta=False)""",
    ("ch03.q2", "running mean not subtracted"): """
        def fold_batchnorm(linear, bn):
            return fold(linear, bn, torch.sqrt(bn.running_var + bn.eps), keep_mean=False)""",
    # ch03.q3: which biases are redundant
    ("ch03.q3", "BatchNorm after the activation counted"): """
        def redundant_biases(model):
            layers = list(model) + [None, None]
            return [i for i, layer in enumerate(model) if isinstance(layer, nn.Linear)
                    and (isinstance(layers[i + 1], nn.BatchNorm1d) or isinstance(layers[i + 2], nn.BatchNorm1d))]""",
    ("ch03.q3", "every Linear before a BatchNorm"): """
        def redundant_biases(model):
            layers = list(model)
            return [i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)
                    and any(isinstance(later, nn.BatchNorm1d) for later in layers[i + 1:])]""",
    ("ch03.q3", "BatchNorm indices"): """
        def redundant_biases(model):
            layers = list(model)
            return [i for i in range(1, len(layers))
                    if isinstance(layers[i], nn.BatchNorm1d) and isinstance(layers[i - 1], nn.Linear)]""",
    ("ch03.q3", "output layer counted"): """
        def redundant_biases(model):
            layers = list(model)
            found = [i for i in range(len(layers) - 1)
                     if isinstance(layers[i], nn.Linear) and isinstance(layers[i + 1], nn.BatchNorm1d)]
            return found + [len(layers) - 1]""",
    # ch04.q1: the running-statistics update
    ("ch04.q1", "momentum on the wrong term"): """
        def update_running_stats(running_mean, running_var, x, momentum=0.1):
            return (momentum * running_mean + (1 - momentum) * x.mean(0),
                    momentum * running_var + (1 - momentum) * x.var(0))""",
    ("ch04.q1", "biased variance in running_var"): """
        def update_running_stats(running_mean, running_var, x, momentum=0.1):
            return ((1 - momentum) * running_mean + momentum * x.mean(0),
                    (1 - momentum) * running_var + momentum * x.var(0, unbiased=False))""",
    ("ch04.q1", "momentum on the wrong term and biased variance in running_var"): """
        def update_running_stats(running_mean, running_var, x, momentum=0.1):
            return (momentum * running_mean + (1 - momentum) * x.mean(0),
                    momentum * running_var + (1 - momentum) * x.var(0, unbiased=False))""",
    ("ch04.q1", "statistics over the whole tensor"): """
        def update_running_stats(running_mean, running_var, x, momentum=0.1):
            return ((1 - momentum) * running_mean + momentum * x.mean(),
                    (1 - momentum) * running_var + momentum * x.var())""",
    ("ch04.q1", "momentum argument ignored"): """
        def update_running_stats(running_mean, running_var, x, momentum=0.1):
            return 0.9 * running_mean + 0.1 * x.mean(0), 0.9 * running_var + 0.1 * x.var(0)""",
    # ch05.q2: predict without side effects
    ("ch05.q2", "eval() forgotten"): """
        def predict(model, x):
            with torch.no_grad():
                return model(x)""",
    ("ch05.q2", "mode not restored"): """
        def predict(model, x):
            model.eval()
            with torch.no_grad():
                return model(x)""",
    ("ch05.q2", "running statistics changed"): """
        def predict(model, x):
            was_training = model.training
            with torch.no_grad():
                model.train()
                model(x)          # a "warm-up" pass in train mode
                model.eval()
                y = model(x)
            model.train(was_training)
            return y""",
    ("ch05.q2", "gradients tracked"): """
        def predict(model, x):
            was_training = model.training
            model.eval()
            y = model(x)
            model.train(was_training)
            return y""",
    # ch05.q5: freezing BatchNorm
    ("ch05.q5", "BatchNorm left in train mode"): """
        def train_with_frozen_batchnorm(model):
            for module in model.modules():
                if isinstance(module, nn.BatchNorm1d):
                    module.eval()
            model.train()     # undoes it""",
    ("ch05.q5", "everything in eval mode"): """
        def train_with_frozen_batchnorm(model):
            model.eval()""",
    ("ch05.q5", "other layers in eval mode"): """
        def train_with_frozen_batchnorm(model):
            model.train()
            for module in model.modules():
                if isinstance(module, (nn.BatchNorm1d, nn.Dropout)):
                    module.eval()""",
}

FOLD_HELPER = """
def fold(linear, bn, sigma, keep_b=True, keep_beta=True, keep_mean=True):
    scale = bn.weight / sigma
    b = linear.bias if (linear.bias is not None and keep_b) else torch.zeros_like(bn.running_mean)
    mean = bn.running_mean if keep_mean else torch.zeros_like(bn.running_mean)
    beta = bn.bias if keep_beta else torch.zeros_like(bn.bias)
    fused = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale[:, None])
        fused.bias.copy_((b - mean) * scale + beta)
    return fused
"""


@pytest.mark.parametrize("key, mistake", list(WRONG), ids=lambda v: str(v))
def test_typical_mistake_fails_with_its_own_message(key, mistake):
    ex = exercise(key)
    source = textwrap.dedent(WRONG[key, mistake])
    if key == "ch03.q2":
        source = FOLD_HELPER + source
    wrong = answer_from(source, ex.answer)
    for seed in range(5):  # whatever the inputs
        result = ex.evaluate(wrong, seed=seed)
        assert result.status == FAILED and result.points == 0
        assert result.mistake == mistake, (seed, result.message)
        assert result.message.startswith(ex.mistakes[mistake])
        assert "For " in result.message  # and which input it failed on


def test_course_mistakes_are_named_in_words():
    """The mistakes the course brief lists, as the learner reads them."""
    by_name = {**exercise("ch01.q1").mistakes, **exercise("ch04.q1").mistakes}
    assert "momentum is on the wrong term" in by_name["momentum on the wrong term"].lower()
    assert "running_var stores the unbiased" in by_name["biased variance in running_var"]
    assert "eps is outside the square root" in by_name["eps outside the square root"]
    assert "wrong axis" in by_name["statistics over the wrong axis"]
    assert "Forgetting eval()" in exercise("ch05.q2").mistakes["eval() forgotten"]


@pytest.mark.parametrize(
    "key, value, mistake",
    [
        ("ch01.q2", 62875 + 240, "buffers counted"),
        ("ch01.q2", 62875 + 242, "buffers counted"),
        ("ch01.q2", 62875 + 120, "hidden biases counted"),
        ("ch01.q2", 62875 - 10, "output bias left out"),
        ("ch03.q1", 130, "output bias counted"),
        ("ch04.q2", 2 * (1 - 0.1 ** 10), "momentum on the wrong term"),
        ("ch04.q2", 2.0, "momentum on the wrong term"),
        ("ch04.q2", 2 * (1 - 0.9 ** 9), "steps miscounted"),
        ("ch04.q3", 1.0, "biased variance in running_var"),
        ("ch04.q3", 2 * (1 - 0.9 ** 10), "start value 0"),
        ("ch04.q4", 0.99, "Keras value copied"),
        ("ch05.q3", 0, "no_grad switches mode"),
        ("ch05.q3", 3, "inference_mode switches mode"),
    ],
)
def test_predicted_number_from_a_typical_mistake_is_named(key, value, mistake):
    result = exercise(key).evaluate(value)
    assert result.status == FAILED and result.mistake == mistake, result.message


def test_predicted_numbers_come_from_running_pytorch():
    assert exercise("ch01.q2").expected() == 784 * 75 + 2 * 75 + 75 * 45 + 2 * 45 + 45 * 10 + 10
    assert exercise("ch03.q1").expected() == 75 + 45
    assert exercise("ch04.q2").expected() == pytest.approx(2 * (1 - 0.9 ** 10))
    assert exercise("ch04.q3").expected() == pytest.approx(0.9 ** 10 + 2 * (1 - 0.9 ** 10))
    assert exercise("ch05.q3").expected() == 5
    assert exercise("ch04.q2").evaluate(1.3026).passed  # four decimals are enough
    assert not exercise("ch04.q2").evaluate(1.35).passed


def test_predict_answers_must_be_numbers():
    for value in ("1.3", [1.3], True, float("nan"), nn.Linear(1, 1)):
        result = exercise("ch04.q2").evaluate(value)
        assert result.status == FAILED and "should be a number" in result.message


def test_choice_explains_every_wrong_and_every_missing_letter():
    q4 = exercise("ch05.q4")  # key: A, D, E
    result = q4.evaluate("a, b")
    assert result.status == FAILED
    assert "B is not right" in result.message and "D is missing" in result.message and "E is missing" in result.message
    assert exercise("ch05.q4").evaluate(["A", "D", "E"]).passed
    assert exercise("ch05.q4").evaluate("E A D").passed
    assert "one letter" in exercise("ch05.q1").evaluate("AB").message
    assert "letters from" in exercise("ch05.q1").evaluate("Z").message


def test_choice_exercise_keys_point_at_options():
    for ex in ALL:
        if isinstance(ex, ChoiceExercise):
            assert ex.correct <= set(ex.options) and set(ex.why) == set(ex.options)


# --- a check cannot be passed without computing ------------------------------------------------------------------


def test_each_check_uses_fresh_random_inputs():
    for ex in ALL:
        if isinstance(ex, FunctionExercise):
            assert ex.make_cases() != ex.make_cases(), ex.key
            assert ex.make_cases(seed=3) == ex.make_cases(seed=3)


def test_a_hard_coded_answer_fails():
    q1 = exercise("ch01.q1")
    case = q1.make_cases(seed=1)[1]
    stored = q1.expected(case)  # the right output for one input, remembered

    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        return stored

    assert not q1.evaluate(batchnorm_forward, seed=2).passed
    assert not exercise("ch04.q1").evaluate(lambda m, v, x, momentum=0.1: (m, v)).passed


def test_an_endless_loop_is_stopped_by_the_time_limit():
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        while True:
            try:
                pass
            except Exception:  # swallowing ordinary exceptions does not help
                pass

    result = exercise("ch01.q1").evaluate(batchnorm_forward, time_limit=0.5)
    assert result.status == FAILED and "longer than the time limit" in result.message


def test_errors_raised_by_an_answer_fail_the_check_with_the_error():
    def update_running_stats(running_mean, running_var, x, momentum=0.1):
        return (1 - momentum) * running_mean + momentum * x.mean(1), running_var  # wrong axis: shapes clash

    result = exercise("ch04.q1").evaluate(update_running_stats)
    assert result.status == FAILED and "raised RuntimeError" in result.message
    assert "which axis" in result.message  # a hint for the typical cause

    def exits(*args, **kwargs):
        raise SystemExit(1)

    assert "raised SystemExit" in exercise("ch04.q1").evaluate(exits).message
    assert "should be a function" in exercise("ch04.q1").evaluate(42).message


def test_failed_input_holds_the_input_the_answer_got_wrong():
    q1 = exercise("ch04.q1")
    q1.evaluate(lambda m, v, x, momentum=0.1: (m, v))
    assert set(q1.failed_input) == {"running_mean", "running_var", "x", "momentum"}
    assert isinstance(q1.failed_input["x"], torch.Tensor)
    q1.evaluate(answer_from(q1.solution_code, q1.answer))
    assert q1.failed_input is None


def test_wrong_shapes_and_types_are_reported_not_raised():
    q1 = exercise("ch01.q1")
    assert "expected shape" in q1.evaluate(lambda x, gamma, beta, eps=1e-5: x.mean(0)).message
    assert "expected a tensor" in q1.evaluate(lambda x, gamma, beta, eps=1e-5: "no").message
    assert "NaN" in q1.evaluate(lambda x, gamma, beta, eps=1e-5: x * float("nan")).message
    assert "pair" in exercise("ch04.q1").evaluate(lambda m, v, x, momentum=0.1: m).message
    assert "one nn.Linear" in exercise("ch03.q2").evaluate(lambda linear, bn: nn.Sequential(linear, bn)).message
    assert "True or False" in exercise("ch02.q2").evaluate(lambda a, b: "yes").message


# --- observations cross a process boundary as JSON ---------------------------------------------------------------


def test_encode_and_decode_round_trip_values():
    value = {"y": torch.arange(6.0).view(2, 3), "flags": [True, False], "n": 3, "s": {2, 1}, "none": None}
    back = decode(json.loads(json.dumps(encode(value))))
    assert torch.equal(back["y"], torch.arange(6.0, dtype=torch.float64).view(2, 3))
    assert back["flags"] == [True, False] and back["n"] == 3 and back["s"] == [1, 2] and back["none"] is None
    assert "too large" in repr(decode(encode(torch.zeros(exercises.MAX_ELEMENTS + 1))))
    assert repr(decode(encode(object()))) == "<object>"


@pytest.mark.parametrize(
    "data",
    [
        {"__tensor__": "float32", "shape": [2, 2], "data": [1.0]},
        {"__tensor__": "float32", "shape": [-1], "data": []},
        {"__tensor__": "float32", "shape": [1], "data": ["x"]},
        {"something": 1},
        {"__dict__": [[1]]},
    ],
)
def test_decode_rejects_what_encode_cannot_write(data):
    with pytest.raises(MalformedObservation):
        decode(data)


def test_judging_a_malformed_observation_never_passes():
    for ex in ALL:
        cases = ex.make_cases(seed=0)
        for observed in ({}, {"status": "weird"}, {"status": "ran", "runs": "x"}, {"status": "ran", "runs": [1]}):
            try:
                result = ex.judge(cases, observed)
            except (MalformedObservation, TypeError, KeyError, ValueError):
                continue  # the grader turns these into "could not be judged"
            assert not result.passed, (ex.key, observed)


# --- the notebooks match the checks ------------------------------------------------------------------------------


def load_notebook(set_key):
    return json.loads((REPO / "chapters" / "exercises" / f"{NOTEBOOKS[set_key]}.ipynb").read_text())


def cell_text(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def section(notebook, number):
    """The Markdown of "## Exercise <number>", whitespace and backticks normalised."""
    for cell in notebook["cells"]:
        text = cell_text(cell)
        if cell["cell_type"] == "markdown" and text.startswith(f"## Exercise {number}:"):
            return " ".join(text.replace("`", "").split())
    raise AssertionError(f"no section for exercise {number}")


@pytest.mark.parametrize("set_key", list(SETS))
def test_exercise_notebook_matches_its_checks(set_key):
    notebook = load_notebook(set_key)
    first, title = notebook["cells"][:2]
    assert first["cell_type"] == "code" and first["metadata"].get("tags") == ["remove-cell"]
    assert "google.colab" in cell_text(first)
    assert title["cell_type"] == "markdown" and cell_text(title).startswith("# Exercises: ")
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert notebook["metadata"]["bnlab"]["exercises"] == set_key
    code = "\n".join(cell_text(c) for c in notebook["cells"] if c["cell_type"] == "code")
    assert f"from bnlab.exercises import {set_key}" in code
    assert all(not c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code")
    for ex in SETS[set_key]:
        number = int(ex.name[1:])
        text = section(notebook, number)
        if isinstance(ex, FunctionExercise):
            assert re.search(rf"^def {ex.answer}\(", code, re.M), ex.key
            assert f"{ex.name}.check({ex.answer})" in code
        else:
            assert re.search(rf"^{ex.answer} = None", code, re.M), ex.key
            assert f"{ex.name}.check({ex.answer})" in code
        if isinstance(ex, ValueExercise):  # the question states the parameters the answer is computed from
            for value in ex.params.values():
                for item in value if isinstance(value, (tuple, list)) else [value]:
                    assert str(item) in text, (ex.key, item)
        if isinstance(ex, ChoiceExercise):
            for letter, option in ex.options.items():
                assert f"**{letter}** {option}" in text, (ex.key, letter)
    assert f"{set_key}.check_all()" in code


def test_short_training_question_states_its_number_of_steps():
    assert f"{exercises.SHORT_TRAINING} mini-batches" in section(load_notebook("ch04"), 5)

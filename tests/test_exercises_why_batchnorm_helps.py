"""bnlab.exercises.why_batchnorm_helps (ch07): the reference solutions pass, each typical mistake fails with its own
message, the notebook scores zero untouched and full marks with the reference solutions, and the predicted factor
is what PyTorch measures."""

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bnlab.exercises import exercise
from bnlab.exercises.why_batchnorm_helps import EXERCISES, EffectiveRateRatio
from exercise_answers import answer_from, assert_mistake_named, assert_solution_passes

NOTEBOOK = Path(__file__).resolve().parents[1] / "chapters" / "exercises" / "ex07_why_batchnorm_helps.ipynb"
EXTRA = {"copy": copy, "F": F}

SCALED = """
def scaled_output_and_gradient(linear, bn, x, y, c):
    lin, norm = copy.deepcopy(linear), copy.deepcopy(bn)
"""
WRONG = {
    ("ch07.q1", "gradient of the unscaled weight"): SCALED + """
    w = lin.weight.detach().requires_grad_()           # W itself, scaled inside the layer
    out = norm(F.linear(x, c * w, lin.bias))
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y), w)
    return out.detach(), grad""",
    ("ch07.q1", "gradient scaled by c"): SCALED + """
    w = (c * lin.weight).detach().requires_grad_()
    out = norm(F.linear(x, w, lin.bias))
    w1 = lin.weight.detach().requires_grad_()
    (grad1,) = torch.autograd.grad(F.cross_entropy(copy.deepcopy(bn)(F.linear(x, w1, lin.bias)), y), w1)
    return out.detach(), c * grad1                     # "the gradient grows with the weight\"""",
    ("ch07.q1", "BatchNorm in eval mode"): SCALED + """
    norm.eval()
    w = (c * lin.weight).detach().requires_grad_()
    out = norm(F.linear(x, w, lin.bias))
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y), w)
    return out.detach(), grad""",
    ("ch07.q1", "input changed in place"): """
def scaled_output_and_gradient(linear, bn, x, y, c):
    with torch.no_grad():
        linear.weight.mul_(c)                          # the caller's layer, scaled
    out = bn(linear(x))
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y), linear.weight)
    return out.detach(), grad""",
    ("ch07.q4", "whole matrix norm"): "def effective_lr(weight, lr):\n    return lr / (weight ** 2).sum().item()",
    ("ch07.q4", "columns"): "def effective_lr(weight, lr):\n    return lr / (weight ** 2).sum(dim=0).mean().item()",
    ("ch07.q4", "length not squared"):
        "def effective_lr(weight, lr):\n    return lr / weight.norm(dim=1).mean().item()",
    ("ch07.q4", "multiplied"): "def effective_lr(weight, lr):\n    return lr * (weight ** 2).sum(dim=1).mean().item()",
}


@pytest.mark.parametrize("ex", list(EXERCISES), ids=lambda e: e.key)
def test_reference_solution_passes_on_many_fresh_inputs(ex):
    if ex.kind == "implement":
        answer = answer_from(ex.solution_code, ex.answer, **EXTRA)
        for seed in range(20):
            result = ex.evaluate(answer, seed=seed)
            assert result.passed and result.points == ex.points, (seed, result.message)
    else:
        assert_solution_passes(ex, seeds=[0])


@pytest.mark.parametrize("key, mistake", list(WRONG), ids=str)
def test_typical_mistake_fails_with_its_own_message(key, mistake):
    assert_mistake_named(exercise(key), WRONG[key, mistake], mistake, **EXTRA)


def test_a_train_mode_pass_may_move_the_running_statistics_but_not_the_parameters():
    q1 = exercise("ch07.q1")
    uses_bn_itself = """
def scaled_output_and_gradient(linear, bn, x, y, c):
    w = (c * linear.weight).detach().requires_grad_()
    out = bn(F.linear(x, w, linear.bias))              # bn's running statistics move: allowed
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y), w)
    return out.detach(), grad"""
    assert q1.evaluate(answer_from(uses_bn_itself, q1.answer, **EXTRA), seed=3).passed
    result = q1.evaluate(answer_from(WRONG["ch07.q1", "input changed in place"], q1.answer, **EXTRA), seed=3)
    assert result.mistake == "input changed in place" and "`linear` in place" in result.message


def test_q1_wants_a_pair_of_float32_tensors():
    q1 = exercise("ch07.q1")
    solution = answer_from(q1.solution_code, q1.answer, **EXTRA)
    assert "a pair (out, grad)" in q1.evaluate(lambda *args: solution(*args)[0], seed=1).message
    result = q1.evaluate(lambda *args: tuple(t.double() for t in solution(*args)), seed=1)
    assert result.mistake == "wrong dtype" and "float32" in result.message


@pytest.mark.parametrize("answer, mistake, words", [
    (0.5, "gradient factor only", "the gradient's factor alone"),
    (1, "unchanged", "stays the same"),
    (2, "grows", "falls as the weight grows"),
    (4.0, "grows", "falls as the weight grows"),
])
def test_q2_names_each_typical_wrong_factor(answer, mistake, words):
    result = exercise("ch07.q2").evaluate(answer)
    assert result.status == "failed" and result.points == 0 and result.mistake == mistake
    assert words in result.message


def test_q2_accepts_a_quarter_in_any_numeric_form():
    q2 = exercise("ch07.q2")
    assert q2.evaluate(1 / 4).passed and q2.evaluate(torch.tensor(0.25)).passed
    assert not q2.evaluate("1/4").passed


@pytest.mark.parametrize("factor", [2, 3, 0.5])
def test_the_predicted_factor_is_what_pytorch_measures_for_any_length(factor):
    question = EffectiveRateRatio("ch07.qx", "t", "a", params={"factor": factor}, points=1, hint="", solution="")
    ratio = question.expected()
    assert ratio == pytest.approx(1 / factor**2, rel=1e-4)


def test_q3_explains_each_wrong_or_missing_letter():
    q3 = exercise("ch07.q3")
    assert q3.evaluate("abd").passed
    result = q3.evaluate("ABCD")
    assert not result.passed and "C is not right" in result.message and "includes zero" in result.message
    result = q3.evaluate("ABDE")
    assert "E is not right" in result.message and "only" in result.message
    result = q3.evaluate("BD")
    assert "A is missing" in result.message and "two of the three" in result.message


def test_q3s_table_in_the_notebook_supports_exactly_the_right_letters():
    """The made-up table: A, B and D follow from its rows, C and E do not."""
    text = "\n".join("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"])
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].replace(".", "").isdigit():
            rows[float(cells[0])] = cells
    lrs = sorted(rows)
    diverged = {side: {lr: int(rows[lr][col].split()[0]) for lr in lrs} for side, col in (("without", 3), ("with", 4))}
    accuracy = {side: {lr: float(rows[lr][col]) for lr in lrs} for side, col in (("without", 1), ("with", 2))}
    stable = {side: max(lr for lr in lrs if all(diverged[side][k] == 0 for k in lrs if k <= lr)) for side in diverged}
    assert stable["without"] == 0.3  # A
    assert stable["with"] >= 3  # B
    low, high = (float(v) for v in rows[0.1][5].split("(")[1].rstrip(")").split(" to "))
    assert low < 0 < high  # C is not supported
    best = {side: max(lrs, key=accuracy[side].get) for side in accuracy}
    assert best["with"] > best["without"]  # D
    for lr in lrs:  # the differences are the table's own
        assert float(rows[lr][5].split()[0]) == pytest.approx(accuracy["with"][lr] - accuracy["without"][lr], abs=0.05)
    assert set(EXERCISES.q3.correct) == {"A", "B", "D"}


def notebook_namespace(answers: dict | None = None) -> dict:
    """Run the exercise notebook's code cells (the Colab setup cell left out), with some cells replaced."""
    namespace: dict = {}
    for cell in json.loads(NOTEBOOK.read_text())["cells"][1:]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        for name, code in (answers or {}).items():
            if source.startswith(f"def {name}(") or source.startswith(f"{name} = None"):
                source = code
        if ".check(" in source or "check_all" in source:
            continue
        exec(source, namespace)
    return namespace


def test_the_untouched_notebook_scores_zero_and_its_solutions_score_full_marks():
    results = EXERCISES.results(notebook_namespace())
    assert [r.status for r in results] == ["not attempted"] * len(EXERCISES)
    assert sum(r.points for r in results) == 0
    solved = notebook_namespace({e.answer: e.solution_code for e in EXERCISES})
    results = EXERCISES.results(solved)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
    assert sum(r.points for r in results) == EXERCISES.max_points

"""bnlab.exercises.bias_redundancy (ch03): the reference solutions pass, each typical mistake fails with its own
message, a folded layer must be a new float32 nn.Linear that leaves its inputs alone, the draft to debug fails for
its two bugs, and "redundant" means what the statement says, checked by running the models."""

import copy

import pytest
import torch
from torch import nn

from bnlab.exercises import exercise
from bnlab.exercises.bias_redundancy import BUGGY_FOLD, EXERCISES
from exercise_answers import answer_from, assert_mistake_named, assert_solution_passes

FOLD = """
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

def fold_batchnorm(linear, bn):
    return fold(linear, bn, """
SIGMA = "torch.sqrt(bn.running_var + bn.eps)"
REDUNDANT = "def redundant_biases(model):\n    layers = list(model)\n    "
NEXT = """
def fold(bn, linear, sigma, keep_b=True, shift=None):
    scale = bn.weight / sigma
    shift = bn.bias - bn.running_mean * scale if shift is None else shift
    b = linear.bias if (linear.bias is not None and keep_b) else torch.zeros(linear.out_features)
    fused = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale)
        fused.bias.copy_(b + linear.weight @ shift)
    return fused

def fold_into_next(bn, linear):
    return fold(bn, linear, """
S = "bn.weight / torch.sqrt(bn.running_var + bn.eps)"
WRONG = {
    ("ch03.q2", "eps left out"): FOLD + "torch.sqrt(bn.running_var))",
    ("ch03.q2", "eps outside the square root"): FOLD + "torch.sqrt(bn.running_var) + bn.eps)",
    ("ch03.q2", "variance instead of standard deviation"): FOLD + "bn.running_var + bn.eps)",
    ("ch03.q2", "Linear bias dropped"): FOLD + SIGMA + ", keep_b=False)",
    ("ch03.q2", "beta dropped"): FOLD + SIGMA + ", keep_beta=False)",
    ("ch03.q2", "running mean not subtracted"): FOLD + SIGMA + ", keep_mean=False)",
    ("ch03.q3", "Dropout in between counted"):
        REDUNDANT + "return [i for i in range(len(layers) - 1) if isinstance(layers[i], nn.Linear) and "
                    "isinstance([m for m in layers[i + 1:] if not isinstance(m, nn.Dropout)][0], nn.BatchNorm1d)]",
    ("ch03.q3", "BatchNorm after the activation counted"):
        REDUNDANT + "return [i for i in range(len(layers) - 1) if isinstance(layers[i], nn.Linear) and "
                    "(isinstance(layers[i + 1], nn.BatchNorm1d) or isinstance(layers[i + 1], nn.ReLU) and "
                    "isinstance(layers[i + 2], nn.BatchNorm1d))]",
    ("ch03.q3", "BatchNorm two layers on counted"):
        REDUNDANT + "layers += [None, None]\n    return [i for i in range(len(model)) if isinstance(layers[i], "
                    "nn.Linear) and (isinstance(layers[i + 1], nn.BatchNorm1d) or isinstance(layers[i + 2], "
                    "nn.BatchNorm1d))]",
    ("ch03.q3", "every Linear before a BatchNorm"):
        REDUNDANT + "return [i for i, l in enumerate(layers) if isinstance(l, nn.Linear) and "
                    "any(isinstance(m, nn.BatchNorm1d) for m in layers[i + 1:])]",
    ("ch03.q3", "BatchNorm indices"):
        REDUNDANT + "return [i for i in range(1, len(layers)) if isinstance(layers[i], nn.BatchNorm1d) and "
                    "isinstance(layers[i - 1], nn.Linear)]",
    ("ch03.q3", "output layer counted"):
        REDUNDANT + "found = [i for i in range(len(layers) - 1) if isinstance(layers[i], nn.Linear) and "
                    "isinstance(layers[i + 1], nn.BatchNorm1d)]\n    return found + [len(layers) - 1]",
    ("ch03.q5", "shift left out"): NEXT + SIGMA + ", shift=torch.zeros_like(bn.bias))",
    ("ch03.q5", "beta dropped"): NEXT + SIGMA + f", shift=-bn.running_mean * {S})",
    ("ch03.q5", "running mean not subtracted"): NEXT + SIGMA + ", shift=bn.bias)",
    ("ch03.q5", "beta scaled"): NEXT + SIGMA + f", shift=(bn.bias - bn.running_mean) * {S})",
    ("ch03.q5", "Linear bias dropped"): NEXT + SIGMA + ", keep_b=False)",
    ("ch03.q5", "eps left out"): NEXT + "torch.sqrt(bn.running_var))",
    ("ch03.q5", "eps outside the square root"): NEXT + "torch.sqrt(bn.running_var) + bn.eps)",
    ("ch03.q5", "variance instead of standard deviation"): NEXT + "bn.running_var + bn.eps)",
    ("ch03.q3", "input changed in place"):
        REDUNDANT + "found = [i for i in range(len(layers) - 1) if isinstance(layers[i], nn.Linear) and "
                    "isinstance(layers[i + 1], nn.BatchNorm1d)]\n    for i in found:\n        layers[i].bias = None\n"
                    "    return found",
}


@pytest.mark.parametrize("ex", list(EXERCISES), ids=lambda e: e.key)
def test_reference_solution_passes_on_many_fresh_inputs(ex):
    assert_solution_passes(ex, seeds=range(20) if ex.kind == "implement" else [0])


@pytest.mark.parametrize("key, mistake", list(WRONG), ids=str)
def test_typical_mistake_fails_with_its_own_message(key, mistake):
    assert_mistake_named(exercise(key), WRONG[key, mistake], mistake)


def test_pytorchs_own_fusion_passes():
    fuse = torch.nn.utils.fusion.fuse_linear_bn_eval
    assert exercise("ch03.q2").evaluate(lambda linear, bn: fuse(linear, bn)).passed


def test_a_folded_layer_must_be_a_new_float32_linear_layer_and_leave_its_inputs_alone():
    q2 = exercise("ch03.q2")
    solution = answer_from(q2.solution_code, "fold_batchnorm")
    assert "should be one nn.Linear" in q2.evaluate(lambda linear, bn: nn.Sequential(linear, bn)).message
    result = q2.evaluate(lambda linear, bn: solution(linear, bn).double())
    assert result.mistake == "wrong dtype" and "float32" in result.message

    def into_linear(linear, bn):  # the right numbers, written into the caller's layer
        folded = solution(linear, bn)
        linear.weight.data = folded.weight.data
        linear.bias = folded.bias
        return linear

    result = q2.evaluate(into_linear)
    assert result.mistake == "input changed in place" and "`linear` in place" in result.message


def test_redundant_biases_accepts_any_order_and_an_integer_tensor():
    q3 = exercise("ch03.q3")
    solution = answer_from(q3.solution_code, "redundant_biases")
    assert q3.evaluate(lambda model: solution(model)[::-1]).passed
    assert q3.evaluate(lambda model: torch.tensor(solution(model), dtype=torch.long)).passed
    assert "list of integer indices" in q3.evaluate(lambda model: [float(i) for i in solution(model)]).message


def test_the_saving_comes_from_building_both_models():
    assert exercise("ch03.q1").expected() == 75 + 45
    assert exercise("ch03.q1").evaluate(130).mistake == "output bias counted"


def test_the_draft_to_debug_breaks_without_a_bias_and_then_has_eps_outside_the_square_root():
    q2 = exercise("ch03.q2")
    draft = answer_from(BUGGY_FOLD, "fold_draft")
    result = q2.evaluate(draft)
    assert result.status == "failed" and "raised TypeError" in result.message and "bias=False" in result.message
    linear, bn = nn.Linear(3, 2), nn.BatchNorm1d(2).eval()
    x = torch.randn(4, 3)
    with torch.no_grad():  # on the layers its author tried, it looks right
        assert torch.allclose(draft(linear, bn)(x), bn(linear(x)), atol=1e-4)
    with_bias_fixed = BUGGY_FOLD.replace("(linear.bias - bn.running_mean)", "(b - bn.running_mean)").replace(
        "    fused = nn.Linear", "    b = linear.bias if linear.bias is not None else 0\n    fused = nn.Linear")
    assert q2.evaluate(answer_from(with_bias_fixed, "fold_draft")).mistake == "eps outside the square root"


def test_folding_into_the_next_layer_needs_the_columns_scaled():
    q5 = exercise("ch03.q5")
    rows = answer_from(q5.solution_code.replace("linear.weight * scale)", "linear.weight * scale[:, None])"),
                       "fold_into_next")
    result = q5.evaluate(rows)
    assert result.status == "failed" and "columns of W" in result.message, result.message
    assert "should be one nn.Linear" in q5.evaluate(lambda bn, linear: nn.Sequential(bn, linear)).message


def with_bias(model, index, bias):
    """A copy of ``model`` whose layer ``index`` (a Linear layer) has the bias ``bias``."""
    model = copy.deepcopy(model)
    old = model[index]
    model[index] = nn.Linear(old.in_features, old.out_features)
    with torch.no_grad():
        model[index].weight.copy_(old.weight)
        model[index].bias.copy_(bias)
    return model


def outputs_in_train_mode(model, x):
    torch.manual_seed(0)  # the same dropout masks in every pass
    with torch.no_grad():
        return model.train()(x)


@pytest.mark.parametrize("seed", range(8))
def test_the_redundant_biases_are_those_whose_removal_leaves_train_mode_outputs_unchanged(seed):
    """The reference answer, checked by running each model: with the same dropout masks, a redundant bias set to 0
    or to random values gives the same outputs; any other Linear layer's bias changes them."""
    q3 = exercise("ch03.q3")
    for case in q3.make_cases(seed):
        model = case.args["model"]
        linear = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
        x = torch.randn(16, model[linear[0]].in_features)
        redundant = []
        for i in linear:
            bias = 2 * torch.randn(model[i].out_features)
            a = outputs_in_train_mode(with_bias(model, i, bias), x)
            b = outputs_in_train_mode(with_bias(model, i, torch.zeros_like(bias)), x)
            if torch.allclose(a, b, atol=1e-4):
                redundant.append(i)
        assert redundant == q3.expected(case), q3.describe(case)


def test_the_cases_include_dropout_between_a_linear_layer_and_its_batchnorm():
    kinds = [[layer[0] for layer in case.info["layers"]] for case in exercise("ch03.q3").make_cases(0)]
    assert sum(any(k[i:i + 3] == ["Linear", "Dropout", "BatchNorm1d"] for i in range(len(k))) for k in kinds) >= 2


def test_the_first_input_always_has_a_redundant_bias_to_remove():
    # an answer that sets the biases to None in place changes nothing where every redundant bias is already off
    q3 = exercise("ch03.q3")
    for seed in range(200):
        model = q3.make_cases(seed)[0].args["model"]
        pairs = [(a, b) for a, b in zip(model, list(model)[1:]) if isinstance(a, nn.Linear)
                 and isinstance(b, nn.BatchNorm1d)]
        assert any(a.bias is not None for a, _ in pairs), seed

"""bnlab.exercises.bias_redundancy (ch03): the reference solutions pass, each typical mistake fails with its own
message, and a folded layer must be a new float32 nn.Linear that leaves its inputs alone."""

import pytest
import torch
from torch import nn

from bnlab.exercises import exercise
from bnlab.exercises.bias_redundancy import EXERCISES
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
WRONG = {
    ("ch03.q2", "eps left out"): FOLD + "torch.sqrt(bn.running_var))",
    ("ch03.q2", "eps outside the square root"): FOLD + "torch.sqrt(bn.running_var) + bn.eps)",
    ("ch03.q2", "variance instead of standard deviation"): FOLD + "bn.running_var + bn.eps)",
    ("ch03.q2", "Linear bias dropped"): FOLD + SIGMA + ", keep_b=False)",
    ("ch03.q2", "beta dropped"): FOLD + SIGMA + ", keep_beta=False)",
    ("ch03.q2", "running mean not subtracted"): FOLD + SIGMA + ", keep_mean=False)",
    ("ch03.q3", "BatchNorm after the activation counted"):
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
    assert "should return one nn.Linear" in q2.evaluate(lambda linear, bn: nn.Sequential(linear, bn)).message
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

"""bnlab.exercises.batchnorm_in_a_cnn (ch06): the reference solutions pass, each typical mistake fails with its own
message, the forward pass may not call PyTorch's normalisation functions, a fold must be a new float32 nn.Conv2d
that slides as the original does, and the numbers asked for come from PyTorch itself."""

import pytest
import torch
from torch import nn

from bnlab.exercises import exercise
from bnlab.exercises.batchnorm_in_a_cnn import EXERCISES
from exercise_answers import answer_from, assert_mistake_named, assert_solution_passes

FORWARD = """
def batchnorm2d_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    return forward(x, gamma, beta, running_mean, running_var, momentum, eps, {})

def forward(x, gamma, beta, running_mean, running_var, momentum, eps, o):
    dims = o.get("dims", (0, 2, 3))
    mean = x.mean(dim=dims, keepdim=True)
    norm_var = x.var(dim=dims, unbiased=o.get("norm_unbiased", False), keepdim=True)
    e = o.get("eps", eps)
    denominator = torch.sqrt(norm_var) + e if o.get("eps_outside") else torch.sqrt(norm_var + e)
    x_hat = (x - mean) / denominator
    y = x_hat if o.get("no_affine") else gamma.view(1, -1, 1, 1) * x_hat + beta.view(1, -1, 1, 1)
    if o.get("no_update"):
        return y, running_mean, running_var
    if dims != (0, 2, 3):                            # statistics of another shape: the update cannot broadcast
        return y, running_mean, running_var
    m = o.get("momentum", momentum)
    keep, new = (m, 1 - m) if o.get("swapped") else (1 - m, m)
    run_var = x.var(dim=(0, 2, 3), unbiased=not o.get("run_biased", False))
    return y, keep * running_mean + new * mean.flatten(), keep * running_var + new * run_var
"""


def forward_with(**options):
    return FORWARD.replace("{})", f"{options!r})", 1)


FOLD = """
def fold_conv_bn(conv, bn):
    return fold(conv, bn, {})

def fold(conv, bn, o):
    var = bn.running_var
    sigma = {"no_eps": torch.sqrt(var), "eps_outside": torch.sqrt(var) + bn.eps,
             "variance": var + bn.eps}.get(o.get("sigma"), torch.sqrt(var + bn.eps))
    scale = bn.weight / sigma
    zeros = torch.zeros_like(bn.running_mean)
    b = conv.bias if (conv.bias is not None and not o.get("drop_b")) else zeros
    mean = zeros if o.get("drop_mean") else bn.running_mean
    beta = zeros if o.get("drop_beta") else bn.bias
    settings = {} if o.get("defaults") else {"stride": conv.stride, "padding": conv.padding}
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, bias=not o.get("no_bias"), **settings)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        if not o.get("no_bias"):
            fused.bias.copy_((b - mean) * scale + beta)
    return fused
"""


def fold_with(**options):
    return FOLD.replace("{})", f"{options!r})", 1)


WRONG = {
    ("ch06.q2", "averaged over N only"): forward_with(dims=(0,)),
    ("ch06.q2", "averaged over H and W only"): forward_with(dims=(2, 3)),
    ("ch06.q2", "unbiased variance in the output"): forward_with(norm_unbiased=True),
    ("ch06.q2", "biased variance in running_var"): forward_with(run_biased=True),
    ("ch06.q2", "variances swapped"): forward_with(norm_unbiased=True, run_biased=True),
    ("ch06.q2", "eps left out"): forward_with(eps=0.0),
    ("ch06.q2", "eps outside the square root"): forward_with(eps_outside=True),
    ("ch06.q2", "eps argument ignored"): forward_with(eps=1e-5),
    ("ch06.q2", "momentum on the wrong term"): forward_with(swapped=True),
    ("ch06.q2", "momentum argument ignored"): forward_with(momentum=0.1),
    ("ch06.q2", "running statistics not updated"): forward_with(no_update=True),
    ("ch06.q2", "gamma and beta missing"): forward_with(no_affine=True),
    ("ch06.q3", "eps left out"): fold_with(sigma="no_eps"),
    ("ch06.q3", "eps outside the square root"): fold_with(sigma="eps_outside"),
    ("ch06.q3", "variance instead of standard deviation"): fold_with(sigma="variance"),
    ("ch06.q3", "Conv bias dropped"): fold_with(drop_b=True),
    ("ch06.q3", "no folded bias"): fold_with(no_bias=True),
    ("ch06.q3", "beta dropped"): fold_with(drop_beta=True),
    ("ch06.q3", "running mean not subtracted"): fold_with(drop_mean=True),
    ("ch06.q3", "stride or padding lost"): fold_with(defaults=True),
}


@pytest.mark.parametrize("ex", list(EXERCISES), ids=lambda e: e.key)
def test_reference_solution_passes_on_many_fresh_inputs(ex):
    assert_solution_passes(ex, seeds=range(20) if ex.kind == "implement" else [0])


@pytest.mark.parametrize("key, mistake", list(WRONG), ids=str)
def test_typical_mistake_fails_with_its_own_message(key, mistake):
    assert_mistake_named(exercise(key), WRONG[key, mistake], mistake)


def test_the_helpers_that_make_the_mistakes_give_the_right_answer_untouched():
    assert exercise("ch06.q2").evaluate(answer_from(FORWARD, "batchnorm2d_train"), seed=0).passed
    assert exercise("ch06.q3").evaluate(answer_from(FOLD, "fold_conv_bn"), seed=0).passed


@pytest.mark.parametrize("shortcut", [
    "nn.functional.batch_norm(x, running_mean.clone(), running_var.clone(), gamma, beta, True, momentum, eps)",
    "torch.batch_norm(x, gamma, beta, running_mean.clone(), running_var.clone(), True, momentum, eps, False)",
    "nn.functional.group_norm(x.transpose(0, 1), x.shape[1], eps=eps).transpose(0, 1)",
    "nn.functional.layer_norm(x, x.shape[1:], eps=eps)",
])
def test_pytorchs_normalisation_functions_are_switched_off_while_the_forward_runs(shortcut):
    q2 = exercise("ch06.q2")
    answer = answer_from(f"def batchnorm2d_train(x, gamma, beta, running_mean, running_var, momentum=0.1, "
                         f"eps=1e-5):\n    return {shortcut}, running_mean, running_var", "batchnorm2d_train")
    result = q2.evaluate(answer)
    assert result.status == "failed" and result.mistake == "forbidden function", result.message
    assert "switched off" in result.message
    x = torch.randn(2, 3, 4, 4)  # and they work again afterwards
    torch.testing.assert_close(nn.functional.batch_norm(x, None, None, training=True), nn.BatchNorm2d(3, affine=False)(x))


def test_an_nn_batchnorm2d_inside_the_answer_is_refused_too():
    source = """
def batchnorm2d_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    bn = nn.BatchNorm2d(x.shape[1], eps=eps, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(gamma); bn.bias.copy_(beta)
        bn.running_mean.copy_(running_mean); bn.running_var.copy_(running_var)
        y = bn(x)
    return y, bn.running_mean, bn.running_var"""
    result = exercise("ch06.q2").evaluate(answer_from(source, "batchnorm2d_train"))
    assert result.mistake == "forbidden function" and "torch.nn.functional.batch_norm" in result.message


def test_a_result_that_is_not_a_triple_is_named():
    q2 = exercise("ch06.q2")
    solution = answer_from(q2.solution_code, "batchnorm2d_train")
    result = q2.evaluate(lambda *args, **kwargs: solution(*args, **kwargs)[0])
    assert result.status == "failed" and "expected a tuple (y, running_mean, running_var)" in result.message


def test_the_forward_must_leave_the_running_statistics_it_receives_unchanged():
    q2 = exercise("ch06.q2")
    solution = answer_from(q2.solution_code, "batchnorm2d_train")

    def in_place(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
        y, new_mean, new_var = solution(x, gamma, beta, running_mean, running_var, momentum, eps)
        running_mean.copy_(new_mean)  # as nn.BatchNorm2d updates its buffers
        running_var.copy_(new_var)
        return y, running_mean, running_var

    result = q2.evaluate(in_place)
    assert result.mistake == "input changed in place" and "`running_mean`" in result.message


def test_pytorchs_own_fusion_passes_and_a_fold_must_be_a_float32_conv2d():
    q3 = exercise("ch06.q3")
    assert q3.evaluate(torch.nn.utils.fusion.fuse_conv_bn_eval).passed
    assert "should be one nn.Conv2d" in q3.evaluate(lambda conv, bn: nn.Sequential(conv, bn)).message
    solution = answer_from(q3.solution_code, "fold_conv_bn")
    result = q3.evaluate(lambda conv, bn: solution(conv, bn).double())
    assert result.mistake == "wrong dtype" and "float32" in result.message


def test_scaling_the_input_channels_raises_and_gets_a_hint_about_the_output_channels():
    q3 = exercise("ch06.q3")
    wrong = answer_from(q3.solution_code.replace("scale.view(-1, 1, 1, 1)", "scale.view(1, -1, 1, 1)"), "fold_conv_bn")
    for seed in range(10):
        result = q3.evaluate(wrong, seed=seed)
        assert result.status == "failed" and "output* channel" in result.message, result.message


def test_values_per_mean_comes_from_pytorchs_running_mean_and_names_each_wrong_count():
    q1 = exercise("ch06.q1")
    assert q1.expected() == 8 * 12 * 12
    for answer, mistake in ((8, "averaged over N only"), (144, "averaged over H and W only"),
                            (16 * 144, "averaged over C, H and W"), (8 * 16 * 144, "averaged over everything"),
                            (16, "number of means"), (8 * 100, "padding ignored")):
        result = q1.evaluate(answer)
        assert result.status == "failed" and result.mistake == mistake, (answer, result.message)


def test_the_diagnosis_needs_both_causes_and_the_fix():
    q4 = exercise("ch06.q4")
    assert q4.evaluate("ABC").passed and q4.evaluate("cba").passed
    result = q4.evaluate("AD")
    assert not result.passed and "D is not right" in result.message and "C is missing" in result.message


def test_the_statements_of_the_diagnosis_hold_for_pytorchs_batchnorm():
    """A Conv bias before BatchNorm2d is redundant at batch size 2 too (E is wrong); a batch of 2 is normalised
    alone, whatever other batches run before it (F is wrong); with momentum None the running mean is the plain
    average of the batch means, and re-estimating it changes no weight (C is right)."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3).train()
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        before = bn(conv(x))
        conv.bias.add_(torch.randn(3) * 5)
        torch.testing.assert_close(bn(conv(x)), before, atol=1e-4, rtol=1e-4)
        bn(conv(torch.randn(30, 1, 6, 6)))  # other batches first
        torch.testing.assert_close(bn(conv(x)), before, atol=1e-4, rtol=1e-4)
        weights = [p.clone() for p in bn.parameters()]
        bn.reset_running_stats()
        bn.momentum = None
        batches = [conv(torch.randn(64, 1, 6, 6) + i) for i in range(4)]
        for z in batches:
            bn(z)
    torch.testing.assert_close(bn.running_mean, torch.stack([z.mean(dim=(0, 2, 3)) for z in batches]).mean(0))
    assert all(torch.equal(a, b) for a, b in zip(weights, bn.parameters()))


def test_the_diagnosis_names_the_tempting_wrong_fixes():
    q4 = exercise("ch06.q4")
    for wrong, words in (("ABF", "changes the optimiser's step"), ("ABG", "choice to test"),
                         ("ABD", "noisier, not better")):
        result = q4.evaluate(wrong)
        assert not result.passed and words in result.message and "C is missing" in result.message, wrong


@pytest.mark.parametrize("mistake", ["eps argument ignored", "eps left out"])
def test_of_two_mistakes_that_fit_the_nearer_is_named(mistake):
    # eps = 1e-5 and eps = 0 differ by less than the tolerance on these seeds' inputs: both mistakes fit the answer
    assert_mistake_named(exercise("ch06.q2"), WRONG["ch06.q2", mistake], mistake, seeds=(16, 19, 22, 47, 48))

"""Exercises for the chapter *BatchNorm in an MLP* (``ch01``): the train-mode forward pass of BatchNorm1d and of
BatchNorm2d, the lecture's parameter count, parameters versus buffers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import batch_and_features, feature_batch, normal, randint, uniform

SIZE_HINT = "Check which axis your statistics run over: one value per feature, over the batch."


def normalise(x, mean, var, eps, gamma, beta):
    return gamma * (x - mean) / torch.sqrt(var + eps) + beta


def eps_of(case: Case) -> float:
    return case.kwargs.get("eps", 1e-5)


def eps_text(case: Case) -> str:
    return f"eps={case.kwargs['eps']:.3g}" if "eps" in case.kwargs else "the default eps"


def in_float64(case: Case) -> tuple:
    """The case's x, gamma, beta (in float64, for the reference) and eps."""
    return (*(case.args[k].to(torch.float64) for k in ("x", "gamma", "beta")), eps_of(case))


class BatchNormForward(FunctionExercise):
    """``batchnorm_forward(x, gamma, beta, eps=1e-5)`` for a float32 x of shape (N, C), in train mode."""

    mistakes = {
        "unbiased variance": "You normalised with the unbiased variance (dividing by N - 1). In train mode BatchNorm "
                             "normalises with the biased batch variance, dividing by N: "
                             "x.var(dim=0, unbiased=False).",
        "eps outside the square root": "eps is outside the square root: BatchNorm divides by sqrt(var + eps), "
                                       "not by sqrt(var) + eps.",
        "statistics over the wrong axis": "Statistics over the wrong axis: you normalised each example over its "
                                          "features (dim=1). BatchNorm1d keeps one mean and one variance per "
                                          "feature, computed over the batch (dim=0).",
        "statistics over the whole tensor": "One mean and one variance for the whole tensor: BatchNorm1d keeps one "
                                            "per feature (column), computed over the batch (dim=0).",
        "eps argument ignored": "Your function ignores its eps argument (a fixed eps, or none): use the eps it is "
                                "given, inside the square root.",
        "gamma and beta swapped": "gamma and beta are swapped: gamma scales the normalised value and beta shifts it, "
                                  "gamma * x_hat + beta.",
        "gamma and beta missing": "gamma and beta are missing: the output is gamma * x_hat + beta, not x_hat.",
    }
    hint_on_error = {"size of tensor": SIZE_HINT}

    def make_case(self, generator, index):
        n, c = batch_and_features(generator)
        args = {"x": feature_batch(generator, n, c), "gamma": 1 + 0.5 * normal(generator, c),
                "beta": normal(generator, c)}
        return Case(args, {} if index == 0 else {"eps": float(uniform(generator, 0.05, 0.5, 1))})

    def expected(self, case):
        x, gamma, beta, eps = in_float64(case)
        return F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)

    def variants(self, case):
        x, gamma, beta, eps = in_float64(case)
        mean, var = x.mean(0), x.var(0, unbiased=False)
        x_hat = (x - mean) / torch.sqrt(var + eps)
        return {
            "unbiased variance": normalise(x, mean, x.var(0, unbiased=True), eps, gamma, beta),
            "eps outside the square root": gamma * (x - mean) / (torch.sqrt(var) + eps) + beta,
            "statistics over the wrong axis": normalise(
                x, x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True), eps, gamma, beta),
            "statistics over the whole tensor": normalise(x, x.mean(), x.var(unbiased=False), eps, gamma, beta),
            "eps argument ignored": normalise(x, mean, var, 1e-5, gamma, beta),
            "gamma and beta swapped": beta * x_hat + gamma,
            "gamma and beta missing": x_hat,
        }

    def describe(self, case):
        n, c = case.args["x"].shape
        return f"a float32 x of shape ({n}, {c}) and {eps_text(case)}"


class BatchNorm2dForward(FunctionExercise):
    """``batchnorm2d_forward(x, gamma, beta, eps=1e-5)`` for a float32 x of shape (N, C, H, W), in train mode."""

    mistakes = {
        "statistics over the batch axis only": "Statistics over the wrong axes: you kept one mean per pixel "
                                               "(over dim=0 alone), as if every pixel were a feature. BatchNorm2d "
                                               "keeps one mean and one variance per channel, over N, H and W: "
                                               "dim=(0, 2, 3).",
        "statistics per example and channel": "Statistics over the wrong axes: you normalised each example's "
                                              "channel over H and W alone (dim=(2, 3)). BatchNorm2d includes the "
                                              "batch: dim=(0, 2, 3).",
        "statistics per example": "Statistics over the wrong axes: you normalised each example over C, H and W "
                                  "(dim=(1, 2, 3)). BatchNorm2d keeps one mean and variance per channel, over "
                                  "N, H and W: dim=(0, 2, 3).",
        "unbiased variance": "You normalised with the unbiased variance (dividing by n - 1). BatchNorm normalises "
                             "with the biased variance: unbiased=False.",
        "eps outside the square root": "eps is outside the square root: divide by sqrt(var + eps).",
        "eps argument ignored": "Your function ignores its eps argument: use the eps it is given.",
    }
    hint_on_error = {
        "size of tensor": "Line the statistics and gamma, beta up with (N, C, H, W): keepdim=True for the "
                          "statistics, and gamma.view(1, -1, 1, 1) for the (C,) parameters.",
    }

    def make_case(self, generator, index):
        n, c = randint(generator, 2, 4), randint(generator, 2, 4)
        h, w = randint(generator, 2, 5), randint(generator, 2, 5)
        h, w = (h + 2 if h == c else h), (w + 3 if w == c else w)  # C differs from H and W: broadcasting errors show
        scale = uniform(generator, 0.2, 2.0, 1, c, 1, 1)
        x = normal(generator, n, c, h, w) * scale + uniform(generator, -2.0, 2.0, 1, c, 1, 1)
        args = {"x": x, "gamma": 1 + 0.5 * normal(generator, c), "beta": normal(generator, c)}
        return Case(args, {} if index == 0 else {"eps": float(uniform(generator, 0.05, 0.5, 1))})

    expected = BatchNormForward.expected

    def variants(self, case):
        x, gamma, beta, eps = in_float64(case)
        g, b = gamma.view(1, -1, 1, 1), beta.view(1, -1, 1, 1)

        def over(dims, unbiased=False, eps_=eps):
            return normalise(x, x.mean(dims, keepdim=True), x.var(dims, unbiased=unbiased, keepdim=True), eps_, g, b)

        mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
        return {
            "statistics over the batch axis only": over((0,)),
            "statistics per example and channel": over((2, 3)),
            "statistics per example": over((1, 2, 3)),
            "unbiased variance": over((0, 2, 3), unbiased=True),
            "eps outside the square root": g * (x - mean) / (torch.sqrt(var) + eps) + b,
            "eps argument ignored": over((0, 2, 3), eps_=1e-5),
        }

    def describe(self, case):
        return f"a float32 x of shape {tuple(case.args['x'].shape)} and {eps_text(case)}"


class LectureParameters(ValueExercise):
    """Learnable parameters of the lecture's MLP."""

    def model(self, **changes):
        from bnlab.models import MLPConfig, build_mlp  # the checking side only

        return build_mlp(MLPConfig(hidden=tuple(self.params["hidden"]), placement="before", **changes))

    def expected(self):
        return float(sum(p.numel() for p in self.model(bias=False).parameters()))

    def mistakes(self):
        model = self.model(bias=False)
        want = self.expected()
        buffers = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
        counters = sum(b.numel() for name, b in model.named_buffers() if name.endswith("num_batches_tracked"))
        hidden_biases = sum(self.params["hidden"])
        bn_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm1d) for p in m.parameters())
        buffer_message = ("running_mean and running_var are buffers, not parameters: BatchNorm updates them itself "
                          "and the optimiser never sees them.")
        return [
            ("buffers counted", want + buffers, buffer_message),
            ("buffers counted", want + buffers + counters, buffer_message),
            ("hidden biases counted", want + hidden_biases,
             "The hidden Linear layers have bias=False: the BatchNorm after them makes a bias redundant."),
            ("BatchNorm parameters left out", want - bn_params,
             "Each BatchNorm1d(C) has 2C learnable parameters: its weight (gamma) and bias (beta)."),
            ("output bias left out", want - 10,
             "The output layer Linear(45, 10) has no BatchNorm after it and keeps its bias."),
        ]

    def matches(self, got, want):
        return abs(got - want) < 0.5


EXERCISES = ExerciseSet("ch01", "BatchNorm in an MLP", [
    BatchNormForward(
        "ch01.q1", "the train-mode forward", "batchnorm_forward", points=3,
        hint="""
Per feature (column) j, over the batch (dim=0): mean_j = x[:, j].mean() and var_j = the *biased* variance
(divide by N). Then y = gamma * (x - mean) / sqrt(var + eps) + beta. keepdim is not needed for (N, C): the
(C,) statistics broadcast along the rows. Keep x's dtype (float32) and leave x as it is (no x -= ...).""",
        solution='''
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=0)                    # one mean per feature, over the batch
    var = x.var(dim=0, unbiased=False)      # the biased variance: divide by N
    x_hat = (x - mean) / torch.sqrt(var + eps)
    return gamma * x_hat + beta'''),
    LectureParameters(
        "ch01.q2", "parameters of the lecture's MLP", "answer_q2", points=2, params={"hidden": (75, 45)},
        hint="""
Count weights and biases layer by layer. Linear(784, 75, bias=False) has 784 * 75 weights and no bias.
BatchNorm1d(C) has two learnable vectors of length C, weight (gamma) and bias (beta); its running_mean and
running_var are buffers, not parameters. The output layer Linear(45, 10) has a bias.""",
        solution='''
from bnlab.models import MLPConfig, build_mlp, count_parameters
model = build_mlp(MLPConfig(hidden=(75, 45), placement="before", bias=False))
answer_q2 = count_parameters(model)
# by hand: 784*75 + 2*75  +  75*45 + 2*45  +  45*10 + 10'''),
    BatchNorm2dForward(
        "ch01.q3", "BatchNorm2d's forward", "batchnorm2d_forward", points=3,
        hint="""
BatchNorm2d keeps one mean and one variance per channel, computed over the batch and both spatial axes:
dim=(0, 2, 3), with keepdim=True so that they broadcast against (N, C, H, W). gamma and beta have shape (C,):
reshape them to (1, C, 1, 1).""",
        solution='''
def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)                 # (1, C, 1, 1)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + eps)
    return gamma.view(1, -1, 1, 1) * x_hat + beta.view(1, -1, 1, 1)'''),
    ChoiceExercise(
        "ch01.q4", "parameters or buffers", "answer_q4", points=1,
        options={"A": "weight", "B": "bias", "C": "running_mean", "D": "running_var", "E": "num_batches_tracked"},
        correct="AB",
        why={
            "A": "weight is gamma, a learnable parameter (it starts at 1).",
            "B": "bias is beta, a learnable parameter (it starts at 0).",
            "C": "running_mean is a buffer: BatchNorm updates it itself in train mode; the optimiser never sees it.",
            "D": "running_var is a buffer, updated by BatchNorm in train mode, not by the optimiser.",
            "E": "num_batches_tracked is a buffer that counts the train-mode forward passes.",
        },
        hint="Compare `[name for name, _ in bn.named_parameters()]` with `list(bn.state_dict())`."),
])

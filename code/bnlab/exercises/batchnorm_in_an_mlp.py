"""Exercises for the chapter *BatchNorm in an MLP* (``ch01``): the train-mode forward pass of BatchNorm1d (written
from what the chapter taught, no formula given), the lecture's parameter count, a BatchNorm2d forward pass with two
bugs to find and fix, parameters versus buffers, and what eps does to a feature of small variance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import batch_and_features, feature_batch, image_batch, normal, uniform

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


# The function ch01.q3 asks the learner to debug: it runs on images, but two lines are wrong.
BUGGY_BATCHNORM2D = '''
def batchnorm2d_draft(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=0, keepdim=True)
    var = x.var(dim=0, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + eps)
    return gamma.view(1, -1, 1, 1) * x_hat + beta.view(1, -1, 1, 1)'''.strip()


class BatchNorm2dForward(FunctionExercise):
    """``batchnorm2d_forward(x, gamma, beta, eps=1e-5)`` for a float32 x of shape (N, C, H, W), in train mode: the
    learner debugs ``BUGGY_BATCHNORM2D`` (statistics over the batch axis alone, and the unbiased variance)."""

    mistakes = {
        "both bugs left": "Both bugs are still there: the statistics run over the batch axis alone (one mean per "
                          "pixel), and the variance is the unbiased one. Compare with nn.BatchNorm2d's output on a "
                          "small batch, one channel at a time.",
        "statistics over the batch axis only": "One bug is left: the statistics run over the batch axis alone "
                                               "(dim=0), so every pixel gets its own mean, as if every pixel were "
                                               "a feature. BatchNorm2d keeps one mean and one variance per "
                                               "channel, over N, H and W: dim=(0, 2, 3).",
        "statistics per example and channel": "Statistics over the wrong axes: you normalised each example's "
                                              "channel over H and W alone (dim=(2, 3)). BatchNorm2d includes the "
                                              "batch: dim=(0, 2, 3).",
        "statistics per example": "Statistics over the wrong axes: you normalised each example over C, H and W "
                                  "(dim=(1, 2, 3)). BatchNorm2d keeps one mean and variance per channel, over "
                                  "N, H and W: dim=(0, 2, 3).",
        "unbiased variance": "One bug is left: x.var() divides by n - 1 (the unbiased variance) unless told "
                             "otherwise. In train mode BatchNorm normalises with the biased variance: unbiased=False.",
        "eps outside the square root": "eps is outside the square root: divide by sqrt(var + eps).",
        "eps argument ignored": "Your function ignores its eps argument: use the eps it is given.",
    }
    hint_on_error = {
        "size of tensor": "Line the statistics and gamma, beta up with (N, C, H, W): keepdim=True for the "
                          "statistics, and gamma.view(1, -1, 1, 1) for the (C,) parameters.",
    }

    def make_case(self, generator, index):
        x = image_batch(generator)
        c = x.shape[1]
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
            "both bugs left": over((0,), unbiased=True),
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


class SmallVarianceOutput(ValueExercise):
    """The standard deviation BatchNorm gives a feature whose batch variance is close to eps."""

    def batch(self) -> torch.Tensor:
        """Four values with mean 0 and biased variance ``params["variance"]``, as a (4, 1) float64 batch."""
        a = self.params["variance"] ** 0.5
        return torch.tensor([[a], [-a], [a], [-a]], dtype=torch.float64)

    def expected(self):
        bn = nn.BatchNorm1d(1, eps=self.params["eps"]).double().train()
        with torch.no_grad():
            return float(bn(self.batch()).std(unbiased=False))

    def mistakes(self):
        v, eps = self.params["variance"], self.params["eps"]
        return [
            ("unit variance assumed", 1.0,
             "BatchNorm divides by sqrt(var + eps), not by sqrt(var): the output has standard deviation 1 only "
             "while the variance is large against eps. Here it is not."),
            ("variance given", v / (v + eps),
             "That is the output's variance; the question asks for its standard deviation."),
            ("eps outside the square root", v ** 0.5 / (v ** 0.5 + eps),
             "eps goes inside the square root: BatchNorm divides by sqrt(var + eps)."),
        ]


EXERCISES = ExerciseSet("ch01", "BatchNorm in an MLP", [
    BatchNormForward(
        "ch01.q1", "the train-mode forward", "batchnorm_forward", points=3,
        hint="""
One mean and one variance per feature (column), over the batch (dim=0); the variance is the *biased* one (divide
by N). Normalise, with eps inside the square root, then scale by gamma and shift by beta. The (C,) statistics
broadcast along the rows of (N, C). Compare with nn.BatchNorm1d(C, eps=eps) in train mode, with its weight set
to gamma and its bias to beta. Keep x's dtype (float32) and leave x as it is (no x -= ...).""",
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
        "ch01.q3", "debug a BatchNorm2d forward", "batchnorm2d_forward", points=3,
        hint="""
Run the draft and nn.BatchNorm2d(C) (train mode) on the same small batch and compare. How many means does the
draft compute: one per channel, or one per (channel, pixel)? And which variance does x.var() compute unless
told otherwise? BatchNorm2d averages over the batch and both spatial axes, dim=(0, 2, 3).""",
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
    SmallVarianceOutput(
        "ch01.q5", "a feature whose variance is close to eps", "answer_q5", points=2,
        params={"variance": 0.003, "eps": 0.001},
        hint="""
BatchNorm divides x - mean by sqrt(var + eps), not by sqrt(var). With gamma = 1 and beta = 0, what is the
standard deviation of (x - mean) / sqrt(var + eps) when x has variance var?""",
        solution='''
bn = nn.BatchNorm1d(1, eps=0.001)                        # train mode
x = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]) * 0.003 ** 0.5   # mean 0, biased variance 0.003
answer_q5 = bn(x).std(unbiased=False).item()             # by hand: sqrt(0.003 / (0.003 + 0.001)) = sqrt(0.75)'''),
])

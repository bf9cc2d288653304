"""Exercises for the chapter *The redundant bias* (``ch03``): parameters saved by ``bias=False``, a fold of BatchNorm
into the Linear layer before it with two bugs to find, which biases are redundant (Dropout between Linear and
BatchNorm included), the bias in train and eval mode, and folding a BatchNorm that follows a ReLU into the Linear
layer after it."""

from __future__ import annotations

import torch
from torch import nn

from .checks import Problem, describe_value, folded_layer_problem
from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import build_sequential, eval_batchnorm, normal, randint, random_mlp_layers, uniform


BOTH_LAYERS = "Both hidden Linear layers are followed by BatchNorm: both lose their bias."


class ParametersSaved(ValueExercise):
    def model(self, bias):
        from bnlab.models import MLPConfig, build_mlp  # the checking side only

        return build_mlp(MLPConfig(hidden=tuple(self.params["hidden"]), placement="before", bias=bias))

    @staticmethod
    def count(model):
        return sum(p.numel() for p in model.parameters())

    def expected(self):
        return float(self.count(self.model(True)) - self.count(self.model(False)))

    def mistakes(self):
        want = self.expected()
        first, second = self.params["hidden"]
        return [
            ("output bias counted", want + 10,
             "The output layer keeps its bias: no BatchNorm follows it, so that bias is not redundant."),
            ("one layer only", float(first), BOTH_LAYERS),
            ("one layer only", float(second), BOTH_LAYERS),
            ("BatchNorm parameters counted", 2 * want,
             "bias=False removes the Linear layers' biases; BatchNorm's gamma and beta stay."),
        ]

    def matches(self, got, want):
        return abs(got - want) < 0.5


def random_linear(generator, n_in: int, n_out: int, bias: bool) -> nn.Linear:
    linear = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(normal(generator, n_out, n_in) * 0.7)
        if bias:
            linear.bias.copy_(normal(generator, n_out))
    return linear


def distinct_sizes(generator) -> tuple:
    """Two feature counts that differ, so that W's rows and columns cannot be confused."""
    a, b = randint(generator, 3, 6), randint(generator, 2, 5)
    return a, (b + 1 if b == a else b)


def case_eps(generator, index: int) -> float:
    return 1e-5 if index == 2 else float(uniform(generator, 0.05, 0.5, 1))


# The fold ch03.q2 asks the learner to debug: right on the layers its author tried (bias=True, the default eps), wrong
# on others.
BUGGY_FOLD = '''
def fold_draft(linear, bn):
    scale = bn.weight / (torch.sqrt(bn.running_var) + bn.eps)
    fused = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale[:, None])
        fused.bias.copy_((linear.bias - bn.running_mean) * scale + bn.bias)
    return fused'''.strip()


class FoldBatchNorm(FunctionExercise):
    """``fold_batchnorm(linear, bn)`` -> one new float32 nn.Linear equal to bn(linear(x)) in eval mode: the learner
    debugs ``BUGGY_FOLD`` (eps outside the square root; a Linear layer without a bias breaks it)."""

    n_cases = 5
    rtol, atol = 1e-4, 1e-4
    mistakes = {
        "eps left out": "eps is missing: the eval-mode BatchNorm divides by sigma = sqrt(running_var + eps).",
        "eps outside the square root": "eps is outside the square root: sigma = sqrt(running_var + eps).",
        "variance instead of standard deviation": "You divided by the variance: divide by the standard deviation "
                                                  "sigma = sqrt(running_var + eps).",
        "Linear bias dropped": "The Linear layer's own bias b is missing: b' = gamma * (b - mu) / sigma + beta.",
        "beta dropped": "beta is missing from the folded bias: b' = gamma * (b - mu) / sigma + beta.",
        "running mean not subtracted": "The running mean is missing: b' = gamma * (b - mu) / sigma + beta.",
    }
    hint_on_error = {
        "size of tensor": "gamma / sigma has one entry per output feature: it scales the rows of W, "
                          "W * (gamma / sigma)[:, None].",
        "NoneType": "Some Linear layers have no bias (linear.bias is None, after bias=False): then b = 0.",
        "dtype": "Keep the folded layer's dtype equal to the input layer's (copy into it with torch.no_grad()).",
    }

    def make_case(self, generator, index):
        n_in, n_out = distinct_sizes(generator)
        has_bias = index != 1 and (index == 0 or bool(randint(generator, 0, 1)))
        linear = random_linear(generator, n_in, n_out, has_bias)
        bn = eval_batchnorm(generator, n_out, case_eps(generator, index))
        return Case({"linear": linear.eval(), "bn": bn}, info={"x": normal(generator, 4, n_in)})

    @staticmethod
    def fold(case, *, sigma=None, b=None, beta=None, mean=None):
        """The folded layer's output on the case's x, in float64, with any part replaced by a mistake's."""
        linear, bn = case.args["linear"], case.args["bn"]
        as64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
        zeros = torch.zeros(linear.out_features, dtype=torch.float64)
        b = (as64(linear.bias) if linear.bias is not None else zeros) if b is None else b
        beta = as64(bn.bias) if beta is None else beta
        mean = as64(bn.running_mean) if mean is None else mean
        sigma = torch.sqrt(as64(bn.running_var) + bn.eps) if sigma is None else sigma
        gamma = as64(bn.weight)
        weight = as64(linear.weight) * (gamma / sigma)[:, None]
        bias = gamma * (b - mean) / sigma + beta
        return as64(case.info["x"]) @ weight.T + bias

    def expected(self, case):
        return self.fold(case)

    def variants(self, case):
        var, eps = case.args["bn"].running_var.to(torch.float64), case.args["bn"].eps
        zeros = torch.zeros(case.args["linear"].out_features, dtype=torch.float64)
        found = {
            "eps left out": self.fold(case, sigma=torch.sqrt(var)),
            "eps outside the square root": self.fold(case, sigma=torch.sqrt(var) + eps),
            "variance instead of standard deviation": self.fold(case, sigma=var + eps),
            "beta dropped": self.fold(case, beta=zeros),
            "running mean not subtracted": self.fold(case, mean=zeros),
        }
        if case.args["linear"].bias is not None:
            found["Linear bias dropped"] = self.fold(case, b=zeros)
        return found

    def problem(self, case, got, want):
        n_out, n_in = case.args["linear"].weight.shape
        return folded_layer_problem(got, "Linear", {"in_features": n_in, "out_features": n_out}, case.info["x"], want,
                                    rtol=self.rtol, atol=self.atol)

    def describe(self, case):
        linear = case.args["linear"]
        bias = "with a bias" if linear.bias is not None else "without a bias (bias=False)"
        return (f"Linear({linear.in_features}, {linear.out_features}) {bias} and "
                f"BatchNorm1d({linear.out_features}, eps={case.args['bn'].eps:.3g})")


class RedundantBiases(FunctionExercise):
    """``redundant_biases(model)`` -> the indices of the Linear layers whose bias is redundant."""

    n_cases = 6
    mistakes = {
        "Dropout in between counted": "A Dropout between the Linear layer and BatchNorm keeps the bias useful: in "
                                      "train mode Dropout multiplies every value, bias included, by its own random "
                                      "factor (0 or 1 / (1 - p)), so the bias no longer adds the same number to "
                                      "every example, and BatchNorm's mean subtraction does not remove it.",
        "BatchNorm after the activation counted": "A Linear layer followed by ReLU and only then by BatchNorm keeps "
                                                  "its bias: the ReLU in between is not linear, so the bias changes "
                                                  "which values pass it, and the output changes.",
        "BatchNorm two layers on counted": "Only a BatchNorm *directly* after the Linear layer makes its bias "
                                           "redundant. With a ReLU in between, the bias changes which values pass "
                                           "it; with a Dropout in between, every example's bias gets its own "
                                           "random factor, so the mean subtraction no longer removes it.",
        "every Linear before a BatchNorm": "Only a BatchNorm directly after the Linear layer makes its bias "
                                           "redundant.",
        "BatchNorm indices": "Return the indices of the Linear layers (model[i] is the Linear layer), not those of "
                             "the BatchNorm layers after them.",
        "output layer counted": "The output layer has no BatchNorm after it: its bias matters.",
    }

    PATTERNS = (("before", "after"), ("none", "dropout before"), ("after", "none", "before"),
                ("dropout before", "after", "before"), ("before", "dropout before"), ("none", "after", "before"))
    PLACEMENTS = ("before", "after", "none", "dropout before")

    def make_case(self, generator, index):
        placements = list(self.PATTERNS[index % len(self.PATTERNS)])
        placements += [self.PLACEMENTS[randint(generator, 0, 3)] for _ in range(randint(generator, 0, 1))]
        layers = random_mlp_layers(generator, placements=placements, flatten=bool(randint(generator, 0, 1)),
                                   dropout=bool(randint(generator, 0, 1)))
        if index == 0:  # a redundant bias that is there: an answer that deletes biases in place always shows it
            first = next(i for i, (a, b) in enumerate(zip(layers, layers[1:]))
                         if a[0] == "Linear" and b[0] == "BatchNorm1d")
            layers[first][3] = True
        return Case({"model": build_sequential(layers, generator)}, info={"layers": layers})

    @staticmethod
    def types(case):
        return [layer[0] for layer in case.info["layers"]]

    def expected(self, case):
        t = self.types(case)
        return [i for i in range(len(t) - 1) if t[i] == "Linear" and t[i + 1] == "BatchNorm1d"]

    def variants(self, case):
        t = self.types(case)
        linear = [i for i, kind in enumerate(t) if kind == "Linear"]
        want = self.expected(case)

        def also(between):  # the right answer, plus the Linear layers with `between` before their BatchNorm
            return sorted(want + [i for i in linear if t[i + 1: i + 3] in ([b, "BatchNorm1d"] for b in between)])

        return {
            "Dropout in between counted": also(["Dropout"]),
            "BatchNorm after the activation counted": also(["ReLU"]),
            "BatchNorm two layers on counted": also(["ReLU", "Dropout"]),
            "every Linear before a BatchNorm": [i for i in linear if "BatchNorm1d" in t[i + 1:]],
            "BatchNorm indices": [i + 1 for i in want],
            "output layer counted": want + [linear[-1]],
        }

    @staticmethod
    def indices(value):
        """The answer as a sorted list of distinct indices: from a list or tuple of integers, or an integer
        tensor of one dimension; None for anything else."""
        if isinstance(value, torch.Tensor) and value.dim() <= 1 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = value.flatten().tolist()
        if not isinstance(value, (list, tuple)) or not all(type(v) is int for v in value):
            return None
        return sorted(set(value))

    def problem(self, case, got, want):
        found = self.indices(got)
        if found is None:
            return Problem(f"expected a list of integer indices, got {describe_value(got)}")
        return None if found == want else Problem(f"expected {want}, got {found}")

    def describe(self, case):
        return "the model " + " → ".join(
            f"[{i}] {kind}" + (f"({', '.join(str(a) for a in args[:2])})" if kind == "Linear" else "")
            for i, (kind, *args) in enumerate(case.info["layers"]))


class FoldIntoNext(FunctionExercise):
    """``fold_into_next(bn, linear)`` -> one new float32 nn.Linear equal to linear(bn(h)) with bn in eval mode: the
    fold of a BatchNorm that follows a ReLU into the Linear layer after it."""

    n_cases = 5
    rtol, atol = 1e-4, 1e-4
    mistakes = {
        "shift left out": "The folded bias lacks BatchNorm's shift: bn(h) = s * h + (beta - s * mu) with "
                          "s = gamma / sigma, so the new bias is b + W (beta - s * mu), not b.",
        "beta dropped": "beta is missing from the folded bias: b'' = b + W (beta - gamma * mu / sigma).",
        "running mean not subtracted": "The running mean is missing from the folded bias: "
                                       "b'' = b + W (beta - gamma * mu / sigma).",
        "beta scaled": "beta is scaled too: BatchNorm adds beta after the scaling, so only mu is multiplied by "
                       "gamma / sigma: b'' = b + W (beta - gamma * mu / sigma).",
        "Linear bias dropped": "The Linear layer's own bias b is missing: b'' = b + W (beta - gamma * mu / sigma).",
        "eps left out": "eps is missing: the eval-mode BatchNorm divides by sigma = sqrt(running_var + eps).",
        "eps outside the square root": "eps is outside the square root: sigma = sqrt(running_var + eps).",
        "variance instead of standard deviation": "You divided by the variance: divide by the standard deviation "
                                                  "sigma = sqrt(running_var + eps).",
    }
    hint_on_error = {
        "size of tensor": "Here gamma / sigma has one entry per *input* feature of the Linear layer: it scales the "
                          "columns of W, W * (gamma / sigma)[None, :], and W @ shift maps the (C,) shift to the "
                          "layer's outputs.",
        "NoneType": "Some Linear layers have no bias (linear.bias is None, after bias=False): then b = 0.",
    }

    def make_case(self, generator, index):
        n_mid, n_out = distinct_sizes(generator)
        has_bias = index != 1 and (index == 0 or bool(randint(generator, 0, 1)))
        bn = eval_batchnorm(generator, n_mid, case_eps(generator, index))
        linear = random_linear(generator, n_mid, n_out, has_bias)
        h = torch.relu(normal(generator, 4, n_mid) * 2)  # what a ReLU hands to BatchNorm
        return Case({"bn": bn, "linear": linear.eval()}, info={"h": h})

    def expected(self, case):
        bn, linear = (case.inputs()[k].double() for k in ("bn", "linear"))
        with torch.no_grad():
            return linear(bn(case.info["h"].to(torch.float64)))

    @staticmethod
    def fold(case, *, sigma=None, shift=None, b=None):
        """The folded layer's output on the case's h, in float64, with any part replaced by a mistake's."""
        bn, linear = case.args["bn"], case.args["linear"]
        as64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
        weight = as64(linear.weight)
        sigma = torch.sqrt(as64(bn.running_var) + bn.eps) if sigma is None else sigma
        scale = as64(bn.weight) / sigma
        shift = as64(bn.bias) - scale * as64(bn.running_mean) if shift is None else shift
        zeros = torch.zeros(linear.out_features, dtype=torch.float64)
        b = (as64(linear.bias) if linear.bias is not None else zeros) if b is None else b
        return as64(case.info["h"]) @ (weight * scale[None, :]).T + b + weight @ shift

    def variants(self, case):
        bn, linear = case.args["bn"], case.args["linear"]
        var, eps = bn.running_var.to(torch.float64), bn.eps
        gamma, beta, mu = (t.detach().to(torch.float64) for t in (bn.weight, bn.bias, bn.running_mean))
        scale = gamma / torch.sqrt(var + eps)
        found = {
            "shift left out": self.fold(case, shift=torch.zeros_like(mu)),
            "beta dropped": self.fold(case, shift=-scale * mu),
            "running mean not subtracted": self.fold(case, shift=beta),
            "beta scaled": self.fold(case, shift=scale * (beta - mu)),
            "eps left out": self.fold(case, sigma=torch.sqrt(var)),
            "eps outside the square root": self.fold(case, sigma=torch.sqrt(var) + eps),
            "variance instead of standard deviation": self.fold(case, sigma=var + eps),
        }
        if linear.bias is not None:
            found["Linear bias dropped"] = self.fold(case, b=torch.zeros(linear.out_features, dtype=torch.float64))
        return found

    def problem(self, case, got, want):
        linear = case.args["linear"]
        return folded_layer_problem(got, "Linear", {"in_features": linear.in_features,
                                                    "out_features": linear.out_features},
                                    case.info["h"], want, rtol=self.rtol, atol=self.atol)

    def describe(self, case):
        linear, bn = case.args["linear"], case.args["bn"]
        bias = "with a bias" if linear.bias is not None else "without a bias (bias=False)"
        return (f"BatchNorm1d({bn.num_features}, eps={bn.eps:.3g}) followed by Linear({linear.in_features}, "
                f"{linear.out_features}) {bias}")


EXERCISES = ExerciseSet("ch03", "The redundant bias", [
    ParametersSaved(
        "ch03.q1", "parameters saved by bias=False", "answer_q1", points=2, params={"hidden": (75, 45)},
        hint="""
Only the Linear layers directly followed by BatchNorm lose their bias. A bias has one entry per output
feature.""",
        solution='''
from bnlab.models import MLPConfig, build_mlp, count_parameters
with_bias = count_parameters(build_mlp(MLPConfig(hidden=(75, 45), placement="before", bias=True)))
without_bias = count_parameters(build_mlp(MLPConfig(hidden=(75, 45), placement="before", bias=False)))
answer_q1 = with_bias - without_bias   # by hand: 75 + 45'''),
    FoldBatchNorm(
        "ch03.q2", "debug a fold of BatchNorm into the Linear layer", "fold_batchnorm", points=3,
        hint="""
Try the draft on nn.Linear(3, 2, bias=False), and on an nn.BatchNorm1d(2, eps=0.1) with random running
statistics, and compare with bn(linear(x)) in eval mode. In eval mode, bn(z) = gamma * (z - mu) / sigma + beta
with sigma = sqrt(running_var + eps). If linear.bias is None, b = 0.""",
        solution='''
def fold_batchnorm(linear, bn):
    sigma = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / sigma                                  # one factor per output feature
    b = linear.bias if linear.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale[:, None])
        fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return fused
# PyTorch has it too: torch.nn.utils.fusion.fuse_linear_bn_eval(linear, bn)'''),
    RedundantBiases(
        "ch03.q3", "which biases are redundant", "redundant_biases", points=3,
        hint="""
Walk over the layers with their positions: `layers = list(model)`. Which layer must come right after a Linear
layer for the batch mean to remove its bias? Test a guess: set torch.manual_seed(0) before each of two forward
passes in train mode (then Dropout draws the same masks), once with the bias and once with it set to 0.""",
        solution='''
def redundant_biases(model):
    layers = list(model)
    return [i for i in range(len(layers) - 1)
            if isinstance(layers[i], nn.Linear) and isinstance(layers[i + 1], nn.BatchNorm1d)]'''),
    ChoiceExercise(
        "ch03.q4", "the bias in train and eval mode", "answer_q4", points=1,
        options={
            "A": "In train mode, the block's output does not depend on b.",
            "B": "In train mode, the gradient of the loss with respect to b is zero (up to rounding).",
            "C": "In eval mode, changing b after training changes the output.",
            "D": "In eval mode, b can be deleted after training without changing the output: running_mean has "
                 "absorbed it.",
        },
        correct="ABC",
        why={
            "A": "The batch mean includes b, so x - mean(x) removes it: the output does not depend on b.",
            "B": "An output that does not depend on b gives b a zero gradient.",
            "C": "Eval mode subtracts the fixed running_mean, so a changed b passes through, scaled by gamma / sigma.",
            "D": "running_mean learned the mean *with* b; deleting b without also subtracting it from running_mean "
                 "shifts every output by gamma * b / sigma.",
        },
        hint="In train mode the mean comes from the batch; in eval mode it is a fixed number."),
    FoldIntoNext(
        "ch03.q5", "fold BatchNorm into the Linear layer after it", "fold_into_next", points=3,
        hint="""
In eval mode BatchNorm is an affine map of each feature: bn(h) = s * h + t, with s = gamma / sigma,
sigma = sqrt(running_var + eps) and t = beta - s * mu. Then W (s * h + t) + b = (W diag(s)) h + (b + W t): s
scales the *columns* of W (W * s), and the new bias is b + W @ t. If linear.bias is None, b = 0.""",
        solution='''
def fold_into_next(bn, linear):
    sigma = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / sigma                                  # one factor per input feature of linear
    shift = bn.bias - bn.running_mean * scale                  # bn(h) = scale * h + shift
    b = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    fused = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale)              # W diag(scale): scales the columns
        fused.bias.copy_(b + linear.weight @ shift)
    return fused'''),
])

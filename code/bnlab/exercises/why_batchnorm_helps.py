"""Exercises for the chapter *Why does BatchNorm help?* (``ch07``): scale invariance shown numerically (the output of
a weight scaled before BatchNorm, and its gradient), what doubling a weight's length does to its effective
learning rate, reading a learning-rate sweep, and the effective learning rate of a layer."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .checks import Problem, changed_inputs, describe_value, fmt, tensor_problem
from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import normal, randint, seeded, uniform

FACTORS = (2.0, 0.5, 10.0, 0.25, 3.0)  # the scale factors c the first cases use; later ones are drawn


class ScaledOutputAndGradient(FunctionExercise):
    """``scaled_output_and_gradient(linear, bn, x, y, c)`` -> ``(out, grad)``: BatchNorm's output (train mode) for
    the Linear layer's weight scaled by ``c``, and the gradient of ``cross_entropy(out, y)`` with respect to that
    scaled weight. The inputs stay as they were (BatchNorm's running statistics may move: a train-mode pass updates
    them)."""

    n_cases = 5
    rtol, atol = 1e-3, 1e-6
    mistakes = {
        "gradient of the unscaled weight": "Your gradient is c times too large: it is the gradient of the unscaled "
                                           "weight W (or the gradient with respect to W while the layer computes "
                                           "with c·W, where the chain rule multiplies by c). Take the gradient with "
                                           "respect to the scaled weight itself: it is 1/c times W's.",
        "gradient scaled by c": "Your gradient is c times W's gradient, but a weight scaled by c gets 1/c times "
                                "W's gradient: BatchNorm divides by the batch's standard deviation, which grew by c "
                                "too, so the output does not change and the gradient shrinks.",
        "BatchNorm in eval mode": "BatchNorm ran in eval mode: it then normalises with its fixed running statistics, "
                                  "so scaling W scales its output. Scale invariance holds in train mode, where the "
                                  "batch's own statistics grow with W: leave bn in train mode.",
    }
    hint_on_error = {
        "does not require grad": "Make the scaled weight a leaf that requires gradients, e.g. "
                                 "w = (c * linear.weight).detach().requires_grad_(), and compute with it.",
    }

    def make_case(self, generator, index):
        n_in, n_out, n = randint(generator, 3, 6), randint(generator, 2, 5), randint(generator, 6, 10)
        linear = seeded(nn.Linear(n_in, n_out, bias=bool(randint(generator, 0, 1))), generator)
        bn = nn.BatchNorm1d(n_out)
        with torch.no_grad():
            bn.weight.copy_(1 + 0.4 * normal(generator, n_out))
            bn.bias.copy_(normal(generator, n_out))
            bn.running_mean.copy_(normal(generator, n_out))
            bn.running_var.copy_(uniform(generator, 0.5, 2.0, n_out))
        x = normal(generator, n, n_in) * uniform(generator, 0.5, 2.0, n_in) + uniform(generator, -1.0, 1.0, n_in)
        y = torch.randint(0, n_out, (n,), generator=generator)
        c = FACTORS[index] if index < len(FACTORS) else round(float(uniform(generator, 1.5, 8.0, 1)), 2)
        return Case({"linear": linear, "bn": bn.train(), "x": x, "y": y, "c": c})

    @staticmethod
    def compute(case, *, train: bool = True):
        """``(out, grad)`` in float64 for the case, BatchNorm in train mode or not."""
        linear, bn = (copy.deepcopy(case.args[k]).double() for k in ("linear", "bn"))
        weight = (case.args["c"] * linear.weight.detach()).requires_grad_(True)
        out = bn.train(train)(F.linear(case.args["x"].double(), weight, linear.bias))
        (grad,) = torch.autograd.grad(F.cross_entropy(out, case.args["y"]), weight)
        return out.detach(), grad

    def expected(self, case):
        return self.compute(case)

    def variants(self, case):
        out, grad = self.compute(case)
        c = case.args["c"]
        return {
            "gradient of the unscaled weight": (out, c * grad),
            "gradient scaled by c": (out, c * c * grad),
            "BatchNorm in eval mode": self.compute(case, train=False),
        }

    def problem(self, case, got, want):
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Problem(f"expected a pair (out, grad), got {describe_value(got)}")
        for value, reference, what in zip(got, want, ("the output", "the gradient")):
            problem = tensor_problem(value, reference, dtype=self.dtype, what=what, rtol=self.rtol, atol=self.atol)
            if problem is not None:
                return problem
        return None

    def side_effects(self, case, run):
        """Parameters, modes, x, y and c must stay; BatchNorm's buffers may change (a train-mode pass updates them)."""
        changes = self.changes(case, run)
        changes["bn"] = {**changes["bn"], "buffers": []}
        return changed_inputs(changes)

    def describe(self, case):
        linear = case.args["linear"]
        bias = "with a bias" if linear.bias is not None else "without a bias"
        return (f"Linear({linear.in_features}, {linear.out_features}) {bias}, BatchNorm1d({linear.out_features}) in "
                f"train mode, a batch of {len(case.args['x'])} and c = {case.args['c']:g}")


class EffectiveRateRatio(ValueExercise):
    """By what factor the effective learning rate of a weight before BatchNorm changes when its length grows by
    ``params["factor"]``: measured as how far one small SGD step turns the weight's rows, at W and at factor·W."""

    @staticmethod
    def turn(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-4) -> float:
        """How far one SGD step turns the rows of ``weight`` (mean over rows of the change of their unit vectors)."""
        weight = weight.clone().requires_grad_(True)
        out = F.batch_norm(x @ weight.T, None, None, training=True, eps=1e-12)
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y), weight)
        after = weight.detach() - lr * grad
        unit = lambda w: w / w.norm(dim=1, keepdim=True)  # noqa: E731
        return (unit(after) - unit(weight.detach())).norm(dim=1).mean().item()

    def expected(self):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 8, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 4, (64,), generator=generator)
        weight = torch.randn(4, 8, generator=generator, dtype=torch.float64)
        return self.turn(self.params["factor"] * weight, x, y) / self.turn(weight, x, y)

    def mistakes(self):
        k = self.params["factor"]
        grows = ("The effective learning rate falls as the weight grows: a longer weight gets a smaller gradient, "
                 "and a step of the same size turns a longer vector less.")
        return [
            ("gradient factor only", 1 / k, f"1/{k:g} is the gradient's factor alone. The step also acts on a weight "
                                            f"{k:g} times as long, which it turns {k:g} times less: both factors "
                                            "count."),
            ("unchanged", 1.0, "The learning rate η stays the same, but what the step does to the weight's direction "
                               "depends on the weight's length."),
            ("grows", float(k), grows),
            ("grows", float(k * k), grows),
        ]


class EffectiveLearningRate(FunctionExercise):
    """``effective_lr(weight, lr)`` -> ``lr`` over the mean of the squared lengths of ``weight``'s rows."""

    n_cases = 4
    mistakes = {
        "whole matrix norm": "You divided by the squared norm of the whole matrix. Each unit has its own weight "
                             "vector, a row of W; average their squared lengths over the units.",
        "columns": "You averaged over the columns of W. A unit's weight vector is a row, weight[j]: average the "
                   "rows' squared lengths.",
        "length not squared": "You divided by the rows' lengths; the effective learning rate divides by their "
                              "squared lengths (the gradient shrinks by the length too).",
        "multiplied": "You multiplied by the squared lengths: a longer weight has a smaller effective learning "
                      "rate, so divide.",
    }

    def make_case(self, generator, index):
        n_out, n_in = randint(generator, 3, 6), randint(generator, 7, 12)
        scale = float(uniform(generator, 0.2, 3.0, 1))
        lr = float(uniform(generator, 0.01, 1.0, 1))
        return Case({"weight": normal(generator, n_out, n_in) * scale, "lr": lr})

    def expected(self, case):
        from bnlab.scale_invariance import effective_learning_rate  # the checking side only

        return effective_learning_rate(case.args["weight"], case.args["lr"])

    def variants(self, case):
        w, lr = case.args["weight"].double(), case.args["lr"]
        rows_sq = (w**2).sum(1)
        return {
            "whole matrix norm": lr / rows_sq.sum().item(),
            "columns": lr / (w**2).sum(0).mean().item(),
            "length not squared": lr / rows_sq.sqrt().mean().item(),
            "multiplied": lr * rows_sq.mean().item(),
        }

    def problem(self, case, got, want):
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.is_floating_point():
            got = float(got.reshape(()))
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            return Problem(f"expected a number, got {describe_value(got)}")
        if not math.isclose(got, want, rel_tol=1e-4):
            return Problem(f"expected {fmt(want)}, got {fmt(got)}")
        return None

    def describe(self, case):
        n_out, n_in = case.args["weight"].shape
        return f"a weight of shape ({n_out}, {n_in}) and lr = {case.args['lr']:.4g}"


SWEEP_OPTIONS = {
    "A": "Without BatchNorm, the largest learning rate at which no seed diverged is 0.3.",
    "B": "With BatchNorm, no seed diverged at any learning rate up to 3.",
    "C": "At learning rate 0.1, the seeds support BatchNorm's advantage.",
    "D": "BatchNorm's best mean accuracy comes at a larger learning rate than the best without it.",
    "E": "The sweep shows that BatchNorm helps only because it allows larger learning rates.",
}

EXERCISES = ExerciseSet("ch07", "Why does BatchNorm help?", [
    ScaledOutputAndGradient(
        "ch07.q1", "scale a weight before BatchNorm", "scaled_output_and_gradient", points=3,
        hint="""
Work on copies: `lin, norm = copy.deepcopy(linear), copy.deepcopy(bn)`. Make the scaled weight a leaf of its own,
`w = (c * lin.weight).detach().requires_grad_()`, compute `out = norm(F.linear(x, w, lin.bias))` with norm in
train mode, and take `torch.autograd.grad(F.cross_entropy(out, y), w)`. Then compare c = 1 with c = 2.""",
        solution='''
def scaled_output_and_gradient(linear, bn, x, y, c):
    lin, norm = copy.deepcopy(linear), copy.deepcopy(bn).train()
    w = (c * lin.weight).detach().requires_grad_()      # the scaled weight, a leaf of its own
    out = norm(F.linear(x, w, lin.bias))
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y), w)
    return out.detach(), grad'''),
    EffectiveRateRatio(
        "ch07.q2", "a weight twice as long", "answer_q2", points=2, params={"factor": 2},
        hint="""
Two things change when the weight doubles: the size of its gradient, and how far a change of that size turns a
vector of that length. Exercise 1 gives the first; the second is geometry.""",
        solution='''
answer_q2 = 0.25   # the gradient halves (1/2), and it acts on a weight twice as long (1/2): (1/2) * (1/2)'''),
    ChoiceExercise(
        "ch07.q3", "read a learning-rate sweep", "answer_q3", points=2,
        options=SWEEP_OPTIONS,
        correct="ABD",
        why={
            "A": "At 0.3 no seed diverged without BatchNorm; at 1, two of the three did.",
            "B": "The 'diverged' column with BatchNorm reads 0 of 3 up to learning rate 3 (one seed diverged only "
                 "at 10).",
            "C": "At 0.1 the 95 % confidence interval of the difference, -0.4 to +1.8, includes zero: the seeds do "
                 "not support a difference there (which is not the same as showing there is none).",
            "D": "Without BatchNorm the best mean is 96.0 % at 0.3; with BatchNorm it is 97.4 % at 1.",
            "E": "A sweep shows where each network trains and how well; it cannot show that larger learning rates "
                 "are the *only* reason. BatchNorm is also better at 0.01 and 0.3, where both train.",
        },
        hint="Read the 'diverged' columns for A and B, the confidence interval for C, and the largest mean of each "
             "network for D. What could a sweep show, and what not?"),
    EffectiveLearningRate(
        "ch07.q4", "the effective learning rate of a layer", "effective_lr", points=2,
        hint="""
Unit j of the layer has the weight vector weight[j], a row of the matrix. Square each row's length, average over
the units, and divide the learning rate by it.""",
        solution='''
def effective_lr(weight, lr):
    return lr / (weight ** 2).sum(dim=1).mean().item()'''),
])

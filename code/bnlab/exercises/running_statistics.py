"""Exercises for the chapter *Running statistics* (``ch04``): the momentum update (a draft with two bugs to find),
running_mean and running_var after k steps, Keras's momentum in PyTorch, why eval mode is worse after a short
training."""

from __future__ import annotations

import math

import torch
from torch import nn

from .checks import Problem, describe_value, tensor_problem
from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import batch_and_features, feature_batch, normal, uniform

SHORT_TRAINING = 20  # mini-batches of training in ch04.q5's question

# The update ch04.q1 asks the learner to debug: it runs, but two things are wrong.
BUGGY_UPDATE = '''
def update_draft(running_mean, running_var, x, momentum=0.1):
    new_mean = momentum * running_mean + (1 - momentum) * x.mean(dim=0)
    new_var = momentum * running_var + (1 - momentum) * x.var(dim=0, unbiased=False)
    return new_mean, new_var'''.strip()


class RunningStatsUpdate(FunctionExercise):
    """``update_running_stats(running_mean, running_var, x, momentum=0.1)`` -> (new running_mean, new running_var),
    float32 tensors of shape (C,), the inputs left unchanged: the learner debugs ``BUGGY_UPDATE`` (momentum on the
    wrong term, the biased variance in running_var)."""

    mistakes = {
        "momentum on the wrong term and biased variance in running_var": (
            "Both bugs are still there: momentum is on the wrong term, and running_var got the biased variance. "
            "Compare with the buffers of an nn.BatchNorm1d after one train-mode forward pass: what weight does the "
            "new batch get, and which variance ends up in running_var?"),
        "momentum on the wrong term": "Momentum is on the wrong term: PyTorch computes running = (1 - momentum) * "
                                      "running + momentum * batch_statistic, so the new batch gets weight momentum "
                                      "(0.1 by default) and the old value 1 - momentum.",
        "biased variance in running_var": "running_var stores the unbiased batch variance (dividing by N - 1, "
                                          "x.var(dim=0, unbiased=True)), although the normalisation itself uses "
                                          "the biased one.",
        "statistics over the whole tensor": "One mean for the whole batch: the running statistics hold one value per "
                                            "feature, computed over the batch (dim=0).",
        "momentum argument ignored": "Your function ignores its momentum argument: use the momentum it is given.",
    }
    hint_on_error = {"size of tensor": "Check which axis your statistics run over: one value per feature, over the "
                                       "batch."}

    def make_case(self, generator, index):
        n, c = batch_and_features(generator, n_range=(3, 8))
        args = {"running_mean": normal(generator, c), "running_var": uniform(generator, 0.5, 2.0, c),
                "x": feature_batch(generator, n, c)}
        return Case(args, {} if index == 0 else {"momentum": float(uniform(generator, 0.05, 0.3, 1))})

    def momentum(self, case) -> float:
        return case.kwargs.get("momentum", 0.1)

    def expected(self, case):
        x = case.args["x"].to(torch.float64)
        bn = nn.BatchNorm1d(x.shape[1], momentum=self.momentum(case)).double().train()
        with torch.no_grad():
            bn.running_mean.copy_(case.args["running_mean"])
            bn.running_var.copy_(case.args["running_var"])
            bn(x)
        return bn.running_mean.clone(), bn.running_var.clone()

    def variants(self, case):
        x, mean, var = (case.args[k].to(torch.float64) for k in ("x", "running_mean", "running_var"))
        m = self.momentum(case)

        def update(old, new, weight=m, swapped=False):
            return weight * old + (1 - weight) * new if swapped else (1 - weight) * old + weight * new

        unbiased, biased = x.var(0, unbiased=True), x.var(0, unbiased=False)
        return {
            "momentum on the wrong term and biased variance in running_var": (
                update(mean, x.mean(0), swapped=True), update(var, biased, swapped=True)),
            "momentum on the wrong term": (update(mean, x.mean(0), swapped=True), update(var, unbiased, swapped=True)),
            "biased variance in running_var": (update(mean, x.mean(0)), update(var, biased)),
            "statistics over the whole tensor": (update(mean, x.mean().expand_as(mean)),
                                                 update(var, x.var().expand_as(var))),
            "momentum argument ignored": (update(mean, x.mean(0), 0.1), update(var, unbiased, 0.1)),
        }

    def problem(self, case, got, want):
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Problem(f"expected a pair (running_mean, running_var), got {describe_value(got)}")
        for name, value, reference in zip(("running_mean", "running_var"), got, want):
            problem = tensor_problem(value, reference, what=f"the new {name}")
            if problem is not None:
                return problem
        return None

    def describe(self, case):
        n, c = case.args["x"].shape
        momentum = f"momentum={case.kwargs['momentum']:.3g}" if "momentum" in case.kwargs else "the default momentum"
        return f"a float32 x of shape ({n}, {c}) and {momentum}"


class RunningAfterSteps(ValueExercise):
    """running_mean or running_var of a fresh BatchNorm1d(1) after k identical batches."""

    def __init__(self, key, title, answer, *, statistic: str, **kwargs):
        super().__init__(key, title, answer, **kwargs)
        self.statistic = statistic

    def run(self, *, momentum=None, k=None, unbiased=True, start=None):
        p = self.params
        momentum = p["momentum"] if momentum is None else momentum
        k = p["k"] if k is None else k
        batch = torch.tensor(p["batch"], dtype=torch.float64)
        mean = 0.0 if start is None else start
        var = 1.0 if start is None else start
        for _ in range(k):
            mean = (1 - momentum) * mean + momentum * float(batch.mean())
            var = (1 - momentum) * var + momentum * float(batch.var(unbiased=unbiased))
        return mean if self.statistic == "mean" else var

    def expected(self):
        p = self.params
        bn = nn.BatchNorm1d(1, momentum=p["momentum"]).double().train()
        batch = torch.tensor(p["batch"], dtype=torch.float64).view(-1, 1)
        with torch.no_grad():
            for _ in range(p["k"]):
                bn(batch)
        buffer = bn.running_mean if self.statistic == "mean" else bn.running_var
        return float(buffer)

    def mistakes(self):
        p = self.params
        keep = (1 - p["momentum"]) ** p["k"]
        found = [
            ("momentum on the wrong term", self.run(momentum=1 - p["momentum"]),
             f"That is what momentum on the wrong term gives. PyTorch weights the new batch by momentum "
             f"({p['momentum']}) and the old value by 1 - momentum, so after k updates the start value still has "
             f"weight (1 - momentum)^k = {keep:.3f}."),
            ("steps miscounted", self.run(k=p["k"] - 1), "Count the updates: one per batch, k in all."),
            ("steps miscounted", self.run(k=p["k"] + 1), "Count the updates: one per batch, k in all."),
        ]
        if self.statistic == "var":
            found += [
                ("biased variance in running_var", self.run(unbiased=False),
                 "running_var stores the unbiased batch variance (dividing by N - 1), not the biased one."),
                ("start value 0", self.run(start=0.0), "running_var starts at 1, not 0."),
            ]
        else:
            found.append(("start value ignored", float(torch.tensor(p["batch"]).mean()),
                          f"running_mean starts at 0, and after k updates that start value still has weight "
                          f"(1 - momentum)^k = {keep:.3f}."))
        return found


class KerasMomentum(ValueExercise):
    def expected(self):
        return 1.0 - self.params["keras_momentum"]

    def mistakes(self):
        return [
            ("Keras value copied", self.params["keras_momentum"],
             "Keras's momentum weights the old running value; PyTorch's momentum weights the new batch statistic. "
             "The same average needs 1 minus the Keras value."),
            ("PyTorch default", 0.1, "0.1 is PyTorch's default, which is not the same average as Keras's default."),
        ]

    def matches(self, got, want):
        return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)


EXERCISES = ExerciseSet("ch04", "Running statistics", [
    RunningStatsUpdate(
        "ch04.q1", "debug the running-statistics update", "update_running_stats", points=3,
        hint="""
Make a BatchNorm1d(C, momentum=0.3), copy known values into its buffers, run one batch through it in train mode
and compare its buffers with the draft's result. Which term does PyTorch weight by momentum, the old running
value or the new batch statistic? And does running_var get the biased or the unbiased batch variance? Return new
tensors: running_mean.mul_(...) would change the caller's tensor.""",
        solution='''
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    new_mean = (1 - momentum) * running_mean + momentum * x.mean(dim=0)
    new_var = (1 - momentum) * running_var + momentum * x.var(dim=0, unbiased=True)
    return new_mean, new_var'''),
    RunningAfterSteps(
        "ch04.q2", "running_mean after k steps", "answer_q2", statistic="mean", points=2,
        params={"k": 10, "momentum": 0.1, "batch": (1.0, 3.0)},
        hint="""
Every batch has mean 2. After one update running_mean = 0.9 * 0 + 0.1 * 2. After k updates the start value 0
has weight 0.9^k and the batch mean the rest.""",
        solution='''
bn = nn.BatchNorm1d(1, momentum=0.1)
batch = torch.tensor([[1.0], [3.0]])
for _ in range(10):
    bn(batch)                         # train mode: every forward pass updates the running statistics
answer_q2 = bn.running_mean.item()   # by hand: 2 * (1 - 0.9**10)'''),
    RunningAfterSteps(
        "ch04.q3", "running_var after k steps", "answer_q3", statistic="var", points=2,
        params={"k": 10, "momentum": 0.1, "batch": (1.0, 3.0)},
        hint="""
running_var starts at 1 and moves toward the *unbiased* variance of the batch: for the two values 1 and 3 that
is ((1 - 2)^2 + (3 - 2)^2) / (2 - 1). After k updates the start value has weight 0.9^k.""",
        solution='''
bn = nn.BatchNorm1d(1, momentum=0.1)
batch = torch.tensor([[1.0], [3.0]])
for _ in range(10):
    bn(batch)
answer_q3 = bn.running_var.item()    # by hand: 0.9**10 * 1 + (1 - 0.9**10) * 2'''),
    KerasMomentum(
        "ch04.q4", "Keras's momentum in PyTorch", "answer_q4", points=1, params={"keras_momentum": 0.99},
        hint="""
Keras: running = momentum * running + (1 - momentum) * batch. PyTorch: running = (1 - momentum) * running +
momentum * batch. Which PyTorch momentum gives the same weights?""",
        solution='''
answer_q4 = 1 - 0.99   # PyTorch's momentum weights the new batch, Keras's the old running value'''),
    ChoiceExercise(
        "ch04.q5", "why eval mode is worse after a short training", "answer_q5", points=1,
        options={
            "A": "The running statistics still carry much of their start values 0 and 1, so eval mode normalises "
                 "with a mean and variance that are not the data's.",
            "B": "running_var holds the unbiased variance, which is too large for eval mode.",
            "C": "Eval mode switches off the gradients, and without them the weights are different.",
            "D": "The model overfits the training batches.",
        },
        correct="A",
        why={
            "A": f"After k updates the start values keep weight (1 - momentum)^k: after {SHORT_TRAINING} steps "
                 f"0.9^{SHORT_TRAINING} is about {0.9 ** SHORT_TRAINING:.2f}, far from negligible, so the running "
                 f"statistics are biased toward 0 and 1.",
            "B": "The unbiased and biased variances differ by the factor N / (N - 1), tiny for a batch of 256.",
            "C": "eval() changes no weights; it changes how BatchNorm and Dropout behave.",
            "D": f"Overfitting would show in train mode too, and {SHORT_TRAINING} steps are few.",
        },
        hint="After k updates, what weight do running_mean's and running_var's start values still have?"),
])

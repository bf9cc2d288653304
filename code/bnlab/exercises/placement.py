"""Exercises for the chapter *Placement* (``ch02``): a hidden block with BatchNorm before or after the activation,
a difference against the seed-to-seed spread, the "BAD" mnemonic, what five seeds support."""

from __future__ import annotations

import math

import torch

from .checks import Layer, Problem, describe_value, fmt
from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise
from .inputs import normal, randint, uniform


def layer_list(result) -> list | str:
    """The layers of a returned block, in order, as dicts (nested Sequentials flattened); or what is wrong."""
    if not isinstance(result, Layer) or result.kind != "Sequential" or result.custom:
        return f"expected an nn.Sequential of layers, got {describe_value(result)}"
    layers = []
    for _, child in result.children:
        if isinstance(child, Layer) and child.kind == "Sequential" and not child.custom:
            inner = layer_list(child)
            if isinstance(inner, str):
                return inner
            layers += inner
        elif not isinstance(child, Layer) or child.custom:
            return (f"the block holds {describe_value(child)}: build it from PyTorch's layers (nn.Linear, "
                    f"nn.BatchNorm1d, nn.ReLU, nn.Dropout)")
        else:
            layer = {"type": child.kind}
            if child.kind == "Linear":
                layer.update(n_in=child.spec["init"]["in_features"], n_out=child.spec["init"]["out_features"])
            elif child.kind.startswith("BatchNorm"):
                layer.update(num_features=child.spec["init"]["num_features"])
            elif child.kind == "Dropout":
                layer.update(p=child.spec["init"]["p"])
            layers.append(layer)
    return [l for l in layers if l["type"] != "Identity" and not (l["type"] == "Dropout" and l["p"] == 0)]


class HiddenBlock(FunctionExercise):
    """``hidden_block(n_in, n_out, placement, dropout=0.0)``: the layers of one hidden block."""

    n_cases = 6
    mistakes = {
        "placement swapped": "The placements are swapped: 'before' means BatchNorm before the activation "
                             "(Linear → BatchNorm1d → ReLU), 'after' means after it (Linear → ReLU → BatchNorm1d).",
        "dropout not last": "Dropout goes last in the block, after both BatchNorm and the activation.",
        "dropout missing": "With dropout > 0 the block ends with nn.Dropout(dropout); with dropout=0 it has none.",
        "wrong dropout probability": "nn.Dropout's probability should be the dropout argument.",
        "wrong sizes": "Linear(n_in, n_out) maps n_in features to n_out, and BatchNorm1d(n_out) normalises those "
                       "n_out features.",
    }

    def make_case(self, generator, index):
        placement = ("before", "after")[index % 2]
        dropout = 0.0 if index < 2 else round(float(uniform(generator, 0.1, 0.6, 1)), 2)
        n_in, n_out = randint(generator, 3, 40), randint(generator, 3, 40)
        args = {"n_in": n_in, "n_out": n_out, "placement": placement}
        default = dropout == 0.0 and n_in % 2  # sometimes the default dropout, sometimes dropout=0.0 given
        return Case(args, {} if default else {"dropout": dropout})

    @staticmethod
    def layers(n_in, n_out, placement, dropout) -> list:
        linear = {"type": "Linear", "n_in": n_in, "n_out": n_out}
        bn, relu = {"type": "BatchNorm1d", "num_features": n_out}, {"type": "ReLU"}
        layers = [linear, bn, relu] if placement == "before" else [linear, relu, bn]
        return layers + ([{"type": "Dropout", "p": dropout}] if dropout > 0 else [])

    def dropout(self, case) -> float:
        return case.kwargs.get("dropout", 0.0)

    def expected(self, case):
        return self.layers(case.args["n_in"], case.args["n_out"], case.args["placement"], self.dropout(case))

    def problem(self, case, got, want):
        layers = layer_list(got)
        if isinstance(layers, str):
            return Problem(layers)
        if any(t.is_floating_point() and t.dtype != torch.float32 for m in got.modules() for t in m.state.values()):
            return Problem("the layers' parameters should be float32 (PyTorch's default)", "wrong dtype")
        if layers == want:
            return None
        names = [l["type"] for l in layers]
        detail = f"expected {' → '.join(l['type'] for l in want)}, got {' → '.join(names) or 'no layers'}"
        other = "after" if case.args["placement"] == "before" else "before"
        dropout = self.dropout(case)
        if [l["type"] for l in self.layers(1, 1, other, dropout)] == names:
            return Problem(detail, "placement swapped")
        if "Dropout" in names and names[-1] != "Dropout":
            return Problem(detail, "dropout not last")
        if dropout > 0 and "Dropout" not in names:
            return Problem(detail, "dropout missing")
        if names == [l["type"] for l in want]:
            dropouts = [l for l in layers if l["type"] == "Dropout"]
            if dropouts and dropouts[0].get("p") != dropout:
                return Problem(f"expected Dropout(p={dropout}), got Dropout(p={dropouts[0].get('p')})",
                               "wrong dropout probability")
            return Problem(f"expected {want}, got {layers}", "wrong sizes")
        return Problem(detail)

    def consistent_mistake(self, cases, outputs):
        return None

    def describe(self, case):
        a = case.args
        given = f", dropout={case.kwargs['dropout']}" if "dropout" in case.kwargs else ""
        return f"hidden_block({a['n_in']}, {a['n_out']}, {a['placement']!r}{given})"


def sample_std(values) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def population_std(values) -> float:
    return sample_std(values) * math.sqrt((len(values) - 1) / len(values))


def as_bool(value):
    """True or False for a Python bool or a one-element bool tensor; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype == torch.bool:
        return bool(value.reshape(()))
    return None


class DiffersBeyondNoise(FunctionExercise):
    """``differs_beyond_noise(a, b)``: is |mean(a) - mean(b)| larger than the larger sample standard deviation?

    The cases put the difference between the thresholds that the typical mistakes use, so that each mistake gives
    its own pattern of answers."""

    n_cases = 7
    mistakes = {
        "signed difference": "Compare the size of the difference, |mean(a) - mean(b)|: a variant can be better or "
                             "worse.",
        "population standard deviation": "Use the sample standard deviation (divide by n - 1, as "
                                         "statistics.stdev and torch.std do), not the population one (divide by n).",
        "smaller spread": "Compare with the larger of the two standard deviations, not the smaller.",
        "sum of spreads": "Compare with the larger of the two standard deviations, not their sum.",
        "variance instead of standard deviation": "Compare with a standard deviation, not a variance: the spread is "
                                                  "in the same units as the accuracies.",
    }

    def make_case(self, generator, index):
        n = randint(generator, 3, 6)
        large = float(uniform(generator, 0.1, 0.25, 1))  # below 0.3: large**2 < small, variances show
        small = large * float(uniform(generator, 0.3, 0.5, 1))  # clearly different spreads
        sa, sb = (small, large) if randint(generator, 0, 1) else (large, small)

        def with_std(std):  # n values with exactly this sample standard deviation
            z = normal(generator, n, dtype=torch.float64)
            z = (z - z.mean()) / z.std()
            return [97.0 + std * float(v) for v in z]

        a, b = with_std(sa), with_std(sb)
        population = large * math.sqrt((n - 1) / n)
        gaps = [
            3 * (sa + sb),  # clearly larger
            0.4 * min(small, large ** 2),  # clearly not
            -3 * (sa + sb),  # clearly larger, b ahead
            (population + large) / 2,  # between the population and the sample spread
            (small + large) / 2,  # between the smaller and the larger spread
            (large + sa + sb) / 2,  # between the larger spread and the sum
            (large ** 2 + small) / 2,  # between the larger variance and the smaller spread
        ]
        gap = gaps[index % len(gaps)]
        return Case({"a": [round(v + gap, 10) for v in a], "b": [round(v, 10) for v in b]})

    @staticmethod
    def verdict(a, b, *, spread=max, std=sample_std, signed=False) -> bool:
        difference = sum(a) / len(a) - sum(b) / len(b)
        return (difference if signed else abs(difference)) > spread(std(a), std(b))

    def expected(self, case):
        return self.verdict(case.args["a"], case.args["b"])

    def variants(self, case):
        a, b = case.args["a"], case.args["b"]
        return {
            "signed difference": self.verdict(a, b, signed=True),
            "population standard deviation": self.verdict(a, b, std=population_std),
            "smaller spread": self.verdict(a, b, spread=min),
            "sum of spreads": self.verdict(a, b, spread=lambda x, y: x + y),
            "variance instead of standard deviation": self.verdict(a, b, std=lambda v: sample_std(v) ** 2),
        }

    def problem(self, case, got, want):
        verdict = as_bool(got)
        if verdict is None:
            return Problem(f"expected True or False, got {describe_value(got)}")
        if verdict is want:
            return None
        a, b = case.args["a"], case.args["b"]
        gap = abs(sum(a) / len(a) - sum(b) / len(b))
        return Problem(f"the means differ by {fmt(gap)}, the standard deviations are {fmt(sample_std(a))} and "
                       f"{fmt(sample_std(b))}: expected {want}, got {verdict}")

    def describe(self, case):
        return f"a = {[round(v, 3) for v in case.args['a']]}, b = {[round(v, 3) for v in case.args['b']]}"


EXERCISES = ExerciseSet("ch02", "Placement", [
    HiddenBlock(
        "ch02.q1", "a hidden block with BatchNorm before or after the activation", "hidden_block", points=3,
        hint="""
Build a list of layers and wrap it: nn.Sequential(*layers). 'before': Linear, BatchNorm1d, ReLU. 'after': Linear,
ReLU, BatchNorm1d. Then, only if dropout > 0, nn.Dropout(dropout) at the end.""",
        solution='''
def hidden_block(n_in, n_out, placement, dropout=0.0):
    if placement == "before":
        layers = [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU()]
    elif placement == "after":
        layers = [nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out)]
    else:
        raise ValueError(f"placement must be 'before' or 'after'; got {placement!r}")
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)'''),
    DiffersBeyondNoise(
        "ch02.q2", "a difference larger than the seed-to-seed spread?", "differs_beyond_noise", points=3,
        hint="""
Compute each list's mean and sample standard deviation (statistics.fmean and statistics.stdev, which divides by
n - 1). The answer is abs(mean_a - mean_b) > max(std_a, std_b).""",
        solution='''
import statistics

def differs_beyond_noise(a, b):
    difference = statistics.fmean(a) - statistics.fmean(b)
    return abs(difference) > max(statistics.stdev(a), statistics.stdev(b))'''),
    ChoiceExercise(
        "ch02.q3", "the 'BAD' mnemonic", "answer_q3", points=1,
        options={
            "A": "Linear → BatchNorm1d → ReLU → Dropout",
            "B": "Linear → ReLU → BatchNorm1d → Dropout",
            "C": "Linear → ReLU → Dropout → BatchNorm1d",
            "D": "Linear → Dropout → BatchNorm1d → ReLU",
        },
        correct="B",
        why={
            "A": "BatchNorm, Activation, Dropout is the order that spells 'BAD': the one the mnemonic warns against.",
            "B": "BatchNorm after the activation, then Dropout: the order the lecture suggests with dropout (and a "
                 "hyperparameter to try, not a law: on the MNIST MLP it saw no difference).",
            "C": "Here Dropout comes before BatchNorm. In both of the lecture's variants Dropout comes last.",
            "D": "Dropout straight after the Linear layer is not one of the lecture's variants; Dropout comes last.",
        },
        hint="Spell the first letters of BatchNorm, Activation, Dropout in that order. Is that a good word?"),
    ChoiceExercise(
        "ch02.q4", "what five seeds support", "answer_q4", points=1,
        options={
            "A": "'after' is the better placement: its mean is higher.",
            "B": "The difference is smaller than the seed-to-seed spread: these runs show no difference between the "
                 "placements.",
            "C": "'before' is the better placement: its standard deviation is smaller.",
            "D": "Nothing at all: with five seeds no difference could ever count as real.",
        },
        correct="B",
        why={
            "A": "The means differ by less than either standard deviation: another set of seeds could reverse the "
                 "order.",
            "B": "A difference within the seed-to-seed spread is no evidence for either placement.",
            "C": "A smaller spread says the runs agree more with each other, not that they are better.",
            "D": "A difference several times larger than the spread would count, even with five seeds.",
        },
        hint="Compare the difference of the means with the standard deviations."),
])

"""Exercises for the chapter *Placement* (``ch02``): a hidden block with BatchNorm before or after the activation,
the paired t statistic of two placements run with the same seeds, the "BAD" mnemonic, what five seeds support."""

from __future__ import annotations

import torch

from .checks import Layer, Problem, describe_value
from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import randint, uniform


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


# ch02.q2 and q4: test accuracies in percent of the two placements, paired by seed (made up for the question: the
# means differ by less than either standard deviation, but every seed favours "after" by about the same margin).
SEED_RESULTS = {
    "before": (97.62, 97.81, 97.70, 97.55, 97.87),
    "after": (97.71, 97.93, 97.78, 97.66, 97.95),
}
T_CRITICAL_4 = 2.776  # two-sided 95 % quantile of the t distribution with 4 degrees of freedom


def t_statistic(differences: torch.Tensor, *, unbiased: bool = True, n_in_error=None) -> float:
    """The one-sample t statistic of ``differences``: their mean over its standard error (``n_in_error``: the n
    under the square root, n by default; ``unbiased``: the sample standard deviation)."""
    n = len(differences) if n_in_error is None else n_in_error
    return float(differences.mean() / (differences.std(unbiased=unbiased) / n ** 0.5))


class PairedT(ValueExercise):
    """The paired t statistic of "after" minus "before", over the seeds."""

    def accuracies(self, name: str) -> torch.Tensor:
        return torch.tensor(self.params[name], dtype=torch.float64)

    def expected(self):
        return t_statistic(self.accuracies("after") - self.accuracies("before"))

    def mistakes(self):
        after, before = self.accuracies("after"), self.accuracies("before")
        d = after - before
        n = len(d)
        welch = float(d.mean() / (after.var() / n + before.var() / n) ** 0.5)
        return [
            ("unpaired test", welch,
             "That is the unpaired (Welch) t statistic: it compares the two lists as if their seeds had nothing to "
             "do with each other. Both placements ran the same seeds: pair them, and look at the five differences "
             "after - before."),
            ("sign", -self.expected(), "The sign is the other way round: the question asks for after - before."),
            ("population standard deviation", t_statistic(d, unbiased=False),
             "Use the sample standard deviation of the differences (divide by n - 1, as statistics.stdev and "
             "torch.std do), not the population one."),
            ("no square root of n", float(d.mean() / d.std()),
             "The standard error of a mean of n values is their standard deviation divided by sqrt(n)."),
            ("n - 1 in the standard error", t_statistic(d, n_in_error=n - 1),
             "The standard error divides the standard deviation by sqrt(n), with n = 5 differences (the n - 1 "
             "belongs inside the standard deviation)."),
        ]


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
    PairedT(
        "ch02.q2", "the paired t statistic", "answer_q2", points=2, params=SEED_RESULTS, rel_tol=5e-3,
        hint="""
Pair the runs by seed: d = after - before, one difference per seed. The paired t statistic is the mean of d
divided by its standard error, statistics.stdev(d) / sqrt(len(d)).""",
        solution='''
import statistics

before = [97.62, 97.81, 97.70, 97.55, 97.87]
after = [97.71, 97.93, 97.78, 97.66, 97.95]
d = [a - b for a, b in zip(after, before)]                  # one difference per seed
answer_q2 = statistics.fmean(d) / (statistics.stdev(d) / len(d) ** 0.5)'''),
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
        "ch02.q4", "what five seeds support", "answer_q4", points=2,
        options={
            "A": "'after' is better in these runs, and the seeds support it: every seed favours 'after', and the "
                 "paired t-test gives |t| > 2.776 (p < 0.05).",
            "B": "No difference: the means differ by less than either standard deviation, so the difference is "
                 "within the seed-to-seed noise.",
            "C": "'after' is the better placement for MLPs in general.",
            "D": "Nothing at all: five seeds are too few for any verdict.",
        },
        correct="A",
        why={
            "A": "Pairing by seed removes what a seed does to both placements alike; what is left, the five "
                 "differences, are all positive and close together, far from 0 against their standard error.",
            "B": "The standard deviations measure how much a seed moves *both* placements; the comparison is about "
                 "the differences seed by seed, which vary much less. The unpaired view misses a consistent gain.",
            "C": "The runs support a difference for this model, data and training setup; other networks, data sets "
                 "or learning rates may differ.",
            "D": "Five paired runs can support a difference when the differences are consistent, as here.",
        },
        hint="Look at the five differences after - before, seed by seed, and at the t statistic of exercise 2."),
])

"""Exercises for the chapter *Eval mode* (``ch05``): train mode at a small batch size, predicting without side
effects, num_batches_tracked under no_grad, what switches BatchNorm to its running statistics, freezing BatchNorm.

Models come in mixed modes too (a frozen BatchNorm inside a train-mode model): "the mode it had" is every layer's
own ``training`` flag, not only the model's."""

from __future__ import annotations

import torch
from torch import nn

from .checks import Problem, changed_inputs, tensor_problem
from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import build_sequential, normal, randint, random_mlp_layers, seeded, uniform

# How a case sets the layers' modes: the model's own flag, then the BatchNorm layers' flag.
MODE_PATTERNS = (
    ("train mode", True, True),
    ("eval mode", False, False),
    ("train mode with its BatchNorm layers frozen in eval mode", True, False),
    ("eval mode with its BatchNorm layers in train mode", False, True),
)


def set_modes(model: nn.Module, pattern: tuple) -> nn.Module:
    _, model_flag, bn_flag = pattern
    model.train(model_flag)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.training = bn_flag
    return model


def modes(model: nn.Module) -> list:
    """Every layer's mode, as the probe reports it after a call."""
    return [[name or "(model)", type(m).__name__, m.training] for name, m in model.named_modules()]


def modes_text(reported: list) -> str:
    return ", ".join(f"{name} ({kind}) {'train' if flag else 'eval'}" for name, kind, flag in reported)


class PredictInEvalMode(FunctionExercise):
    """``predict(model, x)``: eval-mode outputs (float32), no gradients, every layer left as it was."""

    mistakes = {
        "eval() forgotten": "Forgetting eval(): the model ran in train mode, so BatchNorm normalised with the "
                            "statistics of this batch (and updated its running statistics) instead of using the "
                            "running statistics.",
        "only the model's mode restored": "model.train(was_training) sets every layer to the model's mode, so a "
                                          "layer that had a mode of its own (a BatchNorm frozen in eval mode inside "
                                          "a train-mode model) comes back changed. Remember each layer's mode, "
                                          "{m: m.training for m in model.modules()}, and restore each one.",
        "mode not restored": "The model was left in a different mode: remember each layer's mode before, and put it "
                             "back afterwards.",
        "running statistics changed": "The running statistics changed: a forward pass in train mode updates them, "
                                      "even under torch.no_grad().",
        "gradients tracked": "The output tracks gradients: compute it inside torch.no_grad() (or "
                             "torch.inference_mode()).",
    }

    def make_case(self, generator, index):
        n_in, hidden, n_out = randint(generator, 3, 6), randint(generator, 3, 6), randint(generator, 2, 4)
        model = seeded(nn.Sequential(nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                     nn.Linear(hidden, n_out)), generator, std=0.8)
        bn = model[1]
        bn.running_mean.copy_(normal(generator, hidden) * 0.8)
        bn.running_var.copy_(uniform(generator, 0.5, 2.0, hidden))
        bn.num_batches_tracked.fill_(100)
        pattern = MODE_PATTERNS[index % len(MODE_PATTERNS)]
        return Case({"model": set_modes(model, pattern), "x": normal(generator, randint(generator, 4, 8), n_in)},
                    info={"pattern": pattern})

    def forward(self, case, *, train: bool):
        model = case.inputs()["model"].double().train(train)
        with torch.no_grad():
            return model(case.args["x"].to(torch.float64))

    def expected(self, case):
        return self.forward(case, train=False)

    def problem(self, case, got, want):
        problem = tensor_problem(got, want, atol=1e-4, what="the output")
        if problem is not None and problem.mistake is None and isinstance(got, torch.Tensor) and \
                tensor_problem(got, self.forward(case, train=True), atol=1e-4) is None:
            return Problem("the outputs are those of train mode", "eval() forgotten")
        if problem is None and got.requires_grad:
            return Problem("the output has requires_grad=True", "gradients tracked")
        return problem

    def assess(self, case, run):
        problem = super().assess(case, run)
        if problem is not None and problem.mistake is None and self.changes(case, run)["model"]["buffers"]:
            return Problem(f"{problem.detail}, and running_mean, running_var or num_batches_tracked changed",
                           "running statistics changed")
        return problem

    def side_effects(self, case, run):
        changes = self.changes(case, run)
        report = changes["model"]
        if report.get("buffers"):
            return Problem("running_mean, running_var or num_batches_tracked changed", "running statistics changed")
        before = modes(case.args["model"])
        after = report.get("modes")
        if after != before:
            was = case.info["pattern"][1]
            mistake = "only the model's mode restored" if after == [[n, k, was] for n, k, _ in before] \
                else "mode not restored"
            return Problem(f"the model was in {case.info['pattern'][0]}; afterwards its layers are in "
                           f"{modes_text(after or [])}", mistake)
        return changed_inputs(changes)

    def consistent_mistake(self, cases, outputs):
        return None

    def describe(self, case):
        linear, bn, _, last = case.args["model"]
        return (f"a Linear({linear.in_features}, {linear.out_features}) → BatchNorm1d({bn.num_features}) → ReLU → "
                f"Linear({last.in_features}, {last.out_features}) model in {case.info['pattern'][0]} and a float32 "
                f"batch of {len(case.args['x'])}")


class FreezeBatchNorm(FunctionExercise):
    """``train_with_frozen_batchnorm(model)``: train mode, except every BatchNorm layer stays in eval mode; the
    weights and statistics untouched."""

    mistakes = {
        "BatchNorm left in train mode": "The BatchNorm layers are in train mode: model.train() switches every layer, "
                                        "BatchNorm included, so call .eval() on each BatchNorm layer after it.",
        "everything in eval mode": "The whole model is in eval mode, so Dropout is off too: only the BatchNorm "
                                   "layers should be in eval mode.",
        "some BatchNorm layers in train mode": "Every BatchNorm layer should be in eval mode, not only some of them.",
        "other layers in eval mode": "Only the BatchNorm layers should be in eval mode; the rest of the model trains.",
    }

    def make_case(self, generator, index):
        layers = random_mlp_layers(generator, placements=["before"] * randint(generator, 2, 3), flatten=False,
                                   dropout=True)
        model = build_sequential(layers, generator)
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):  # statistics worth keeping
            bn.running_mean.copy_(normal(generator, bn.num_features))
            bn.running_var.copy_(uniform(generator, 0.5, 2.0, bn.num_features))
            bn.num_batches_tracked.fill_(100)
        pattern = MODE_PATTERNS[index % len(MODE_PATTERNS)]
        return Case({"model": set_modes(model, pattern)}, info={"pattern": pattern})

    def expected(self, case):
        return [[name, kind, kind != "BatchNorm1d"] for name, kind, _ in modes(case.args["model"])]

    def problem(self, case, got, want):
        return None  # what it returns does not matter; the modes it leaves do (side_effects)

    def side_effects(self, case, run):
        changes = self.changes(case, run)
        problem = changed_inputs(changes)
        if problem is not None:
            return problem
        got, want = changes["model"]["modes"], self.expected(case)
        if got == want:
            return None
        detail = f"layers in eval mode afterwards: {', '.join(k for _, k, flag in got if not flag) or 'none'}"
        bn = [flag for (_, kind, flag) in got if kind == "BatchNorm1d"]
        others = [flag for (_, kind, flag) in got if kind != "BatchNorm1d"]
        if all(bn) and all(others):
            return Problem(detail, "BatchNorm left in train mode")
        if not any(bn) and not any(others):
            return Problem(detail, "everything in eval mode")
        if any(bn):
            return Problem(detail, "some BatchNorm layers in train mode")
        return Problem(detail, "other layers in eval mode")

    def consistent_mistake(self, cases, outputs):
        return None

    def describe(self, case):
        return (f"a model in {case.info['pattern'][0]}: "
                + " → ".join(type(m).__name__ for m in case.args["model"]))


class BatchesTracked(ValueExercise):
    def expected(self):
        p = self.params
        bn = nn.BatchNorm1d(4).train()
        batch = torch.randn(8, 4)
        with torch.no_grad():
            for _ in range(p["no_grad_batches"]):
                bn(batch)
        with torch.inference_mode():
            for _ in range(p["inference_mode_batches"]):
                bn(batch)
        return float(bn.num_batches_tracked)

    def mistakes(self):
        p = self.params
        message = ("torch.no_grad() and torch.inference_mode() stop gradient tracking but do not switch to eval "
                   "mode: in train mode every forward pass updates the running statistics and the counter.")
        return [
            ("no_grad switches mode", 0.0, message),
            ("inference_mode switches mode", float(p["no_grad_batches"]), message),
            ("no_grad switches mode", float(p["inference_mode_batches"]), message),
        ]

    def matches(self, got, want):
        return abs(got - want) < 0.5


EXERCISES = ExerciseSet("ch05", "Eval mode", [
    ChoiceExercise(
        "ch05.q1", "train mode at batch size 8", "answer_q1", points=1,
        options={
            "A": "In train mode BatchNorm normalises each batch of 8 with that batch's own mean and variance: noisy "
                 "estimates, and every prediction depends on the other 7 examples in its batch.",
            "B": "In train mode Dropout switches off units at random.",
            "C": "A forward pass in train mode changes the weights.",
            "D": "In train mode BatchNorm normalises with the unbiased variance, which is too large for 8 examples.",
        },
        correct="A",
        why={
            "A": "Eight examples give noisy means and variances, and the output for one example changes with its "
                 "batch-mates; eval mode uses the running statistics and treats each example alone.",
            "B": "The lecture's model has no Dropout layer.",
            "C": "Only an optimiser step changes weights. A train-mode forward pass does change the running "
                 "statistics, but not the weights.",
            "D": "The normalisation uses the biased variance in train mode; the unbiased one only goes into "
                 "running_var.",
        },
        hint="What does BatchNorm use for the mean and variance in train mode, and how good are those from 8 "
             "examples?"),
    PredictInEvalMode(
        "ch05.q2", "predict without side effects", "predict", points=3,
        hint="""
Remember every layer's mode, `modes = {m: m.training for m in model.modules()}` (a model's layers need not all
be in its mode), call `model.eval()`, compute the output inside `torch.no_grad()`, then give each layer its mode
back: `m.training = mode` for each (use try/finally, so that the modes come back even after an error).""",
        solution='''
def predict(model, x):
    modes = {module: module.training for module in model.modules()}   # every layer's own mode
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for module, mode in modes.items():
            module.training = mode'''),
    BatchesTracked(
        "ch05.q3", "num_batches_tracked under no_grad", "answer_q3", points=2,
        params={"no_grad_batches": 3, "inference_mode_batches": 2},
        hint="Does torch.no_grad() or torch.inference_mode() change `bn.training`? Only eval mode stops the updates.",
        solution='''
bn = nn.BatchNorm1d(4)            # train mode
batch = torch.randn(8, 4)
with torch.no_grad():
    for _ in range(3):
        bn(batch)
with torch.inference_mode():
    for _ in range(2):
        bn(batch)
answer_q3 = bn.num_batches_tracked.item()'''),
    ChoiceExercise(
        "ch05.q4", "what switches BatchNorm to its running statistics", "answer_q4", points=1,
        options={
            "A": "model.eval()",
            "B": "with torch.no_grad():",
            "C": "with torch.inference_mode():",
            "D": "model.train(False)",
            "E": "calling .eval() on every BatchNorm layer",
            "F": "model.requires_grad_(False)",
        },
        correct="ADE",
        why={
            "A": "model.eval() sets training=False on every submodule.",
            "B": "torch.no_grad() only stops gradient tracking: BatchNorm stays in train mode and still updates its "
                 "running statistics.",
            "C": "torch.inference_mode() only stops gradient tracking, like no_grad: it does not switch the mode.",
            "D": "model.train(False) is what model.eval() calls.",
            "E": "Each BatchNorm layer's own training flag decides; .eval() on it sets it to False.",
            "F": "requires_grad_(False) freezes the parameters for the optimiser; the mode stays as it was.",
        },
        hint="Which of these set a module's `training` flag? Try them and print `bn.training`."),
    FreezeBatchNorm(
        "ch05.q5", "freeze BatchNorm for fine-tuning", "train_with_frozen_batchnorm", points=2,
        hint="""
First model.train() (every layer to train mode), then loop over model.modules() and call .eval() on every
nn.BatchNorm1d. The order matters: model.train() after the loop would undo it.""",
        solution='''
def train_with_frozen_batchnorm(model):
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):   # BatchNorm1d, 2d and 3d
            module.eval()
    return model'''),
])

"""Exercises for the chapter *Eval mode* (``ch05``): train mode at a small batch size, predicting without side
effects, num_batches_tracked under no_grad, what switches BatchNorm to its running statistics, freezing BatchNorm,
and a model whose eval accuracy collapsed: diagnose it (``scenarios.collapsed_model`` hands it over with its
data), then re-estimate its running statistics.

Models come in mixed modes too (a frozen BatchNorm inside a train-mode model): "the mode it had" is every layer's
own ``training`` flag, not only the model's."""

from __future__ import annotations

import torch
from torch import nn

from .checks import Layer, Problem, changed_inputs, describe_value, same_value, tensor_problem
from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import build_sequential, normal, randint, random_mlp_layers, seeded, uniform
from .scenarios import single_threaded

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


# --- a model whose eval accuracy collapsed (ch05.q6, q7) ------------------------------------------------------

def recalibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` (changed in place) with every BatchNorm's running statistics those of one train-mode pass of
    ``x`` (reset, then a cumulative average over that one batch), each layer's momentum kept, in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for bn, momentum in zip(layers, momenta):
        bn.momentum = momentum
    return model.eval()


class Recalibrate(FunctionExercise):
    """``recalibrate(model, x)`` -> the model with its BatchNorm running statistics re-estimated from the batch x,
    in eval mode, its weights unchanged. Judged on the returned model's outputs for a batch it never saw."""

    rtol, atol = 1e-3, 1e-4
    mistakes = {
        "momentum kept": "One pass in train mode moves the running statistics only part of the way: by momentum "
                         "(0.1 by default, not at all with momentum=0) or, with momentum=None, by "
                         "1 / num_batches_tracked. Reset them first (bn.reset_running_stats()) and set "
                         "bn.momentum = None for the pass: then they become exactly the statistics of x.",
        "counter not reset": "With momentum=None BatchNorm averages over every batch it has counted "
                             "(num_batches_tracked), so the old statistics still outweigh x: call "
                             "bn.reset_running_stats() first, which also sets the counter to 0.",
        "reset only": "reset_running_stats() sets running_mean to 0 and running_var to 1; pass x through the model "
                      "in train mode afterwards, so that the statistics become those of x.",
        "statistics unchanged": "The running statistics are as they were: a forward pass in eval mode does not "
                                "update them. Put the BatchNorm layers in train mode for the pass.",
        "left in train mode": "The model came back in train mode: call model.eval() at the end, so that BatchNorm "
                              "uses the statistics you just estimated.",
        "weights changed": "The weights changed: re-estimating the running statistics needs no training step and no "
                           "optimizer; only BatchNorm's buffers change.",
    }
    MOMENTA = ((0.0,), (0.1,), (None,), (0.0, 0.1, None, 0.3))

    def make_case(self, generator, index):
        n_in = randint(generator, 3, 6)
        layers, width = [], n_in
        for block in range(randint(generator, 2, 3)):
            out = randint(generator, 4, 8)
            bn = nn.BatchNorm1d(out, momentum=self.MOMENTA[index % 4][block % len(self.MOMENTA[index % 4])])
            relu = nn.ReLU()
            layers += [nn.Linear(width, out), *((bn, relu) if randint(generator, 0, 1) else (relu, bn))]
            width = out
        model = seeded(nn.Sequential(*layers, nn.Linear(width, randint(generator, 2, 4))), generator, std=0.6)
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
            with torch.no_grad():
                bn.weight.copy_(1 + 0.3 * normal(generator, bn.num_features))
                if index % 4 != 0:  # stale statistics; the first case keeps the start values 0 and 1
                    bn.running_mean.copy_(normal(generator, bn.num_features) * 3)
                    bn.running_var.copy_(uniform(generator, 0.05, 4.0, bn.num_features))
                bn.num_batches_tracked.fill_(randint(generator, 3, 6))  # momentum=None: 1 / (counter + 1)
        model.train(bool(randint(generator, 0, 1)))
        offset = uniform(generator, 1.0, 4.0, n_in)
        x = normal(generator, randint(generator, 48, 96), n_in) * 2 + offset
        return Case({"model": model, "x": x}, info={"test": normal(generator, 6, n_in) * 2 + offset})

    def outputs(self, case, change=None) -> torch.Tensor:
        """The eval-mode outputs on the case's test batch of the model after ``change(model, x)`` (by default the
        reference recalibration), in float64."""
        model, x = case.inputs()["model"].double(), case.args["x"].to(torch.float64)
        with single_threaded():
            (change or recalibrated)(model, x)
            with torch.no_grad():
                return model.eval()(case.info["test"].to(torch.float64))

    def expected(self, case):
        return self.outputs(case)

    def variants(self, case):
        def one_pass(model, x, *, reset=False, cumulative=False, forward=True):
            for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
                if reset:
                    bn.reset_running_stats()
                if cumulative:
                    bn.momentum = None
            if forward:
                with torch.no_grad():
                    model.train()(x)

        return {
            "momentum kept": self.outputs(case, one_pass),
            "counter not reset": self.outputs(case, lambda m, x: one_pass(m, x, cumulative=True)),
            "reset only": self.outputs(case, lambda m, x: one_pass(m, x, reset=True, forward=False)),
            "statistics unchanged": self.outputs(case, lambda m, x: None),
        }

    def problem(self, case, got, want):
        model = case.decoded()["model"]
        if got is None:
            return Problem("recalibrate returned None: return the model (the same object, fixed in place, is fine)")
        if not isinstance(got, Layer) or got.custom or \
                [(n, m.kind) for n, m in got.named_modules()] != [(n, m.kind) for n, m in model.named_modules()]:
            return Problem(f"expected the model with the same layers, got {describe_value(got)}")
        params = got.named_tensors("params")
        changed = [n for n, t in model.named_tensors("params").items() if not same_value(t, params.get(n))]
        if changed:
            return Problem(f"its parameters {', '.join(changed[:3])} changed", "weights changed")
        training = [f"{name or '(model)'} ({kind})" for name, kind, flag in got.modes() if flag]
        if training:
            return Problem(f"layers in train mode: {', '.join(training[:4])}", "left in train mode")
        built = got.build().double().eval()
        with torch.no_grad(), single_threaded():
            y = built(case.info["test"].to(torch.float64)).to(torch.float32)
        return tensor_problem(y, want, rtol=self.rtol, atol=self.atol, what="the model's eval-mode output")

    def side_effects(self, case, run):
        """Changing the model's buffers and modes is the task; its parameters and x must stay as they were."""
        changes = self.changes(case, run)
        if changes["model"]["params"]:
            return Problem(f"it changed the model's parameters {', '.join(changes['model']['params'][:3])}",
                           "weights changed")
        return changed_inputs({"x": changes["x"]})

    def describe(self, case):
        model = case.args["model"]
        momenta = sorted({str(m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm1d)})
        return (f"the model {' → '.join(type(m).__name__ for m in model)} (BatchNorm momentum "
                f"{', '.join(momenta)}) and a batch x of {len(case.args['x'])} examples")


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
    ChoiceExercise(
        "ch05.q6", "the eval accuracy collapsed: why?", "answer_q6", points=2,
        options={
            "A": "BatchNorm's momentum was 0 while the model trained, so its running statistics never left their "
                 "start values 0 and 1.",
            "B": "The running statistics were reset (reset_running_stats()) after training.",
            "C": "After training, test batches of a single class went through the model in train mode, so the "
                 "running statistics describe that class.",
            "D": "The model trained too briefly for its running statistics to settle.",
            "E": "The model overfits its training data.",
        },
        correct="A",
        why={
            "A": "running_mean is all 0 and running_var all 1, although num_batches_tracked counted every training "
                 "step, and the layers have momentum=0.0: each step kept the old running values in full. Eval mode "
                 "then treats every feature reaching BatchNorm as if it had mean 0 and variance 1; with inputs "
                 "around 20, they are far from that.",
            "B": "A reset also sets num_batches_tracked to 0, but the counter holds the number of training steps; "
                 "and the layers' momentum is 0.0.",
            "C": "The counter equals the number of training steps, so nothing went through in train mode after "
                 "training; and the statistics are exactly 0 and 1, not any class's.",
            "D": "With momentum 0.1, after 125 steps the start values would keep a weight of 0.9^125, about 2e-6: "
                 "the statistics would have settled. These never moved at all.",
            "E": "In train mode the model classifies the *test* set almost perfectly: it has learned the task; only "
                 "the eval-mode normalisation is wrong.",
        },
        hint="Look at each BatchNorm layer: print(model), then its running_mean, running_var and "
             "num_batches_tracked, next to the mean and variance of what reaches it from the training data."),
    Recalibrate(
        "ch05.q7", "re-estimate the running statistics", "recalibrate", points=3,
        hint="""
For every BatchNorm layer: reset_running_stats() (running_mean 0, running_var 1, counter 0) and momentum = None
(a cumulative average: after one batch, exactly that batch's statistics). Then one forward pass of x in train
mode under torch.no_grad(), each layer's momentum put back, and model.eval() before you return the model.""",
        solution='''
def recalibrate(model, x):
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()        # running_mean 0, running_var 1, num_batches_tracked 0
        bn.momentum = None              # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for bn, momentum in zip(layers, momenta):
        bn.momentum = momentum          # the layers' own setting, for any later training
    return model.eval()'''),
])

"""Why does BatchNorm help? Four explanations from the literature, each as a measurement on the course's MLP.

Every function computes and returns data (tidy records: one dict per measurement); the chapter draws them.
The experiments that need a measurement at every step run the course's plain step (``bnlab.training.PlainStep``,
``torch.optim.SGD``) on batches in ``BatchLoader``'s order (``batches``); the learning-rate sweep trains cached
runs with ``bnlab.experiments``.

1. **Internal covariate shift** (Ioffe & Szegedy 2015). After every step, the per-unit mean ``m`` and standard
   deviation ``s`` of a hidden layer's input on a fixed probe batch; the shift between steps ``t`` and ``t + 1`` is
   the 2-Wasserstein distance between the Gaussians with those moments, in units of the old standard deviation,
   averaged over the units::

       shift_t = mean_j sqrt((m_{t+1,j} - m_{t,j})^2 + (s_{t+1,j} - s_{t,j})^2) / s_{t,j}

   ``ShiftNoise`` is Santurkar et al.'s (2018) test: after BatchNorm, ``y = a * x + b`` with a new random scale
   ``a`` and shift ``b`` per unit at every step, so that the distribution moves on purpose.
2. **Smoothness** (Santurkar et al. 2018). At a point ``w`` with gradient ``g`` of the batch loss ``L``, for step
   sizes ``eta``: the loss ``L(w - eta g)``, the gradient change ``|grad L(w - eta g) - grad L(w)|`` and the
   effective beta-smoothness ``max_eta |grad L(w - eta g) - grad L(w)| / |eta g|``.
3. **Larger learning rates** (Bjorck et al. 2018). A sweep over learning rates; a run *diverged* when its final
   training loss is not finite or no lower than the loss it started from.
4. **Scale invariance** (van Laarhoven 2017; Kohler et al. 2019): ``bnlab.scale_invariance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .data import BatchLoader, Dataset, Split
from .experiments import run_many
from .models import MLPConfig, build_mlp, is_finite_number, is_integer
from .modes import preserved_state
from .training import PlainStep, TrainConfig

VARIANTS = {  # the chapter's three networks: label -> (MLPConfig, noise after BatchNorm?)
    "without BatchNorm": (MLPConfig(placement="none"), False),
    "BatchNorm": (MLPConfig(), False),
    "noisy BatchNorm": (MLPConfig(), True),
}
LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
STEP_SIZES = (0.025, 0.05, 0.1, 0.2, 0.4)  # the landscape probe's: a quarter to four times the lecture's lr 0.1
LANDSCAPE_MEASURES = {  # landscape_summary's columns, as the chapter names them
    "loss_range": "loss range over the step sizes",
    "max_grad_change": "largest gradient change",
    "beta": "effective β-smoothness",
}


def check_positive_int(name: str, value) -> None:
    if not (is_integer(value) and value > 0):
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


# --- how big the experiments are ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big the chapter's experiments are in a run profile.

    Attributes:
        steps: SGD steps of each per-step run (covariate shift, landscape, weight norms), batch size 256.
        probe_size: images in the fixed probe batch on which the covariate shift is measured.
        sweep_epochs: epochs of each run of the learning-rate sweep.
        probes: points of training (step 0 included) at which the landscape is probed.
    """

    steps: int
    probe_size: int
    sweep_epochs: int
    probes: int

    def __post_init__(self):
        for name in ("steps", "probe_size", "sweep_epochs", "probes"):
            check_positive_int(f"Sizes.{name}", getattr(self, name))


SIZES = {
    "full": Sizes(steps=600, probe_size=256, sweep_epochs=3, probes=12),
    "ci": Sizes(steps=60, probe_size=256, sweep_epochs=2, probes=6),
}


def sizes_for(profile_name: str) -> "Sizes":
    """The chapter's sizes in the profile ``profile_name`` (``"full"`` or ``"ci"``)."""
    if profile_name not in SIZES:
        raise ValueError(f"profile_name must be one of {sorted(SIZES)}; got {profile_name!r}.")
    return SIZES[profile_name]


def probe_points(steps: int, count: int) -> list[int]:
    """``count`` steps at which to probe a run of ``steps`` steps: 0, then from 10 (or less, in short runs) to the
    last step, evenly spaced on a log scale."""
    check_positive_int("steps", steps)
    check_positive_int("count", count)
    first, last = min(10, steps - 1), steps - 1
    points = {0}
    for k in range(count - 1):
        points.add(round(first * (last / first) ** (k / max(count - 2, 1))) if first > 0 else 0)
    return sorted(points)


# --- tidy records -------------------------------------------------------------------------------------------------


def select(records: list[dict], **where) -> list[dict]:
    """The records whose fields equal every ``where`` value."""
    return [r for r in records if all(r[k] == v for k, v in where.items())]


def seed_means(records: list[dict], value: str, *, by: str = "variant", **where) -> dict:
    """``{group: (mean of value over the seed's records, one per seed in ascending order)}``, after ``select``:
    one number per seed and group, ready for ``bnlab.stats.compare``."""
    sums: dict = {}
    for r in select(records, **where):
        sums.setdefault(r[by], {}).setdefault(r["seed"], []).append(r[value])
    return {group: tuple(sum(v) / len(v) for _, v in sorted(seeds.items())) for group, seeds in sums.items()}


def curve(records: list[dict], x: str, value: str, **where) -> tuple[list, list[float]]:
    """``value`` averaged over the selected records at each ``x`` (e.g. over seeds at each step), ``x`` ascending."""
    points: dict = {}
    for r in select(records, **where):
        points.setdefault(r[x], []).append(r[value])
    xs = sorted(points)
    return xs, [sum(points[k]) / len(points[k]) for k in xs]


# --- the plain loop -----------------------------------------------------------------------------------------------


def batches(split: Split, batch_size: int, seed: int):
    """Mini-batches in ``BatchLoader``'s order, epoch after epoch, without end."""
    loader = BatchLoader(split, batch_size, seed=seed)
    while True:
        yield from loader


def sgd(model: nn.Module, lr: float, weight_decay: float = 0.0) -> PlainStep:
    """The plain SGD step on ``model``: ``step(xb, yb)`` trains on one batch and returns its loss."""
    return PlainStep(model, torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay))


def build_variant(label: str, seed: int, **noise) -> nn.Sequential:
    """One of ``VARIANTS``, with its weights drawn from ``seed``."""
    if label not in VARIANTS:
        raise ValueError(f"label must be one of {list(VARIANTS)}; got {label!r}.")
    config, noisy = VARIANTS[label]
    torch.manual_seed(seed)
    model = build_mlp(config)
    return add_shift_noise(model, **noise) if noisy else model


def untouched_rng(device: torch.device):
    """A block whose random draws (e.g. ``ShiftNoise`` while measuring) leave PyTorch's generators as they were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


# --- 1. internal covariate shift ----------------------------------------------------------------------------------


class ShiftNoise(nn.Module):
    """Noise that moves a layer's output distribution on purpose: in train mode, ``y = a * x + b`` with, per
    feature and drawn anew at every forward pass (every step), ``a ~ U(scale)`` and ``b ~ U(-shift, shift)``.
    ``E[a] = 1`` and ``E[b] = 0`` for a symmetric ``scale`` range, so eval mode returns ``x`` unchanged.
    The draws come from PyTorch's global generator (seed it with ``torch.manual_seed``)."""

    def __init__(self, num_features: int, *, shift: float = 1.0, scale: tuple[float, float] = (0.5, 1.5)):
        super().__init__()
        check_positive_int("num_features", num_features)
        if not (is_finite_number(shift) and shift >= 0):
            raise ValueError(f"shift must be a finite number >= 0; got {shift!r}.")
        if not (len(scale) == 2 and all(is_finite_number(v) for v in scale) and 0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high; got {scale!r}.")
        self.num_features, self.shift, self.scale = num_features, float(shift), (float(scale[0]), float(scale[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        a = torch.empty(self.num_features, device=x.device).uniform_(*self.scale)
        b = torch.empty(self.num_features, device=x.device).uniform_(-self.shift, self.shift)
        return x * a + b

    def extra_repr(self) -> str:
        return f"{self.num_features}, shift={self.shift}, scale={self.scale}"


def add_shift_noise(model: nn.Sequential, **noise) -> nn.Sequential:
    """``model`` with a ``ShiftNoise`` after every ``BatchNorm1d`` (the layers themselves are shared, not copied)."""
    layers = []
    for layer in model:
        layers.append(layer)
        if isinstance(layer, nn.BatchNorm1d):
            layers.append(ShiftNoise(layer.num_features, **noise))
    return nn.Sequential(*layers)


POSITIONS = ("Linear output", "ReLU input")


@torch.no_grad()
def input_moments(model: nn.Sequential, probe: torch.Tensor) -> dict[tuple[int, str], tuple[torch.Tensor, ...]]:
    """Per-unit mean and standard deviation over ``probe`` of each hidden layer's Linear output (the input of its
    BatchNorm, if any) and of its ReLU's input (what the nonlinearity sees: the BatchNorm output where there is
    one), in train mode, as the layer sees its inputs during training. Keys are ``(layer, position)``, layers
    counted from 1. Buffers, mode flags and PyTorch's random generator are left as they were."""
    seen: dict[tuple[int, str], torch.Tensor] = {}
    hooks, layer = [], 0
    output_layer = [m for m in model if isinstance(m, nn.Linear)][-1]
    for module in model:
        if isinstance(module, nn.Linear) and module is not output_layer:
            layer += 1
            key = (layer, POSITIONS[0])
            hooks.append(module.register_forward_hook(lambda m, a, out, k=key: seen.__setitem__(k, out)))
        elif isinstance(module, nn.ReLU):
            key = (layer, POSITIONS[1])
            hooks.append(module.register_forward_pre_hook(lambda m, a, k=key: seen.__setitem__(k, a[0])))
    try:
        with preserved_state(model), untouched_rng(probe.device):
            model.train()
            model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return {key: (x.mean(0), x.std(0, correction=0)) for key, x in seen.items()}


def distribution_shift(before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean over units of the 2-Wasserstein distance between N(m, s^2) before and after, divided by s before."""
    (m0, s0), (m1, s1) = before, after
    return (torch.sqrt((m1 - m0) ** 2 + (s1 - s0) ** 2) / s0.clamp_min(1e-6)).mean().item()


def shift_run(
    model: nn.Sequential,
    split: Split,
    probe: torch.Tensor,
    *,
    steps: int,
    lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
) -> list[dict]:
    """Train ``model`` for ``steps`` SGD steps; after each, the distribution shift of every hidden layer's input on
    ``probe`` since the step before. Records: ``step``, ``layer``, ``position``, ``shift``."""
    check_positive_int("steps", steps)
    torch.manual_seed(seed)
    train_step = sgd(model, lr)
    records, before = [], input_moments(model, probe)
    for step, (xb, yb) in zip(range(1, steps + 1), batches(split, batch_size, seed)):
        train_step(xb, yb)
        after = input_moments(model, probe)
        for (layer, position), moments in after.items():
            shift = distribution_shift(before[layer, position], moments)
            records.append({"step": step, "layer": layer, "position": position, "shift": shift})
        before = after
    return records


# --- 2. smoothness of the loss landscape --------------------------------------------------------------------------


@dataclass(frozen=True)
class GradientProbe:
    """The loss and the gradient along the negative gradient from one point, for several step sizes."""

    step_sizes: tuple[float, ...]
    loss: float  # at the point itself
    grad_norm: float  # |g|
    losses: tuple[float, ...]  # L(w - eta g), one per step size
    grad_changes: tuple[float, ...]  # |grad L(w - eta g) - g|

    @property
    def loss_range(self) -> float:
        """Loss landscape variation: max - min of the loss over the step sizes."""
        return max(self.losses) - min(self.losses)

    @property
    def max_grad_change(self) -> float:
        """Gradient predictiveness (smaller is more predictive): the largest gradient change."""
        return max(self.grad_changes)

    @property
    def beta(self) -> float:
        """Effective beta-smoothness: the largest gradient change per unit of distance moved."""
        return max(c / (eta * self.grad_norm) for c, eta in zip(self.grad_changes, self.step_sizes))


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def along_gradient(loss_fn, params: list[torch.Tensor], step_sizes) -> GradientProbe:
    """Probe ``loss_fn()`` (a function of ``params``) along ``-g`` from the current point. ``params`` are restored."""
    step_sizes = tuple(float(eta) for eta in step_sizes)
    if not step_sizes or any(not eta > 0 for eta in step_sizes):
        raise ValueError(f"step_sizes must be one or more positive numbers; got {step_sizes!r}.")
    start = [p.detach().clone() for p in params]
    loss = loss_fn()
    g = flat_grad(loss, params)
    losses, changes = [], []
    try:
        for eta in step_sizes:
            with torch.no_grad():
                offset = 0
                for p, p0 in zip(params, start):
                    p.copy_(p0 - eta * g[offset : offset + p.numel()].view_as(p))
                    offset += p.numel()
            moved = loss_fn()
            losses.append(moved.item())
            changes.append((flat_grad(moved, params) - g).norm().item())
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
    return GradientProbe(step_sizes, loss.item(), g.norm().item(), tuple(losses), tuple(changes))


def landscape_run(
    model: nn.Module,
    split: Split,
    *,
    steps: int,
    probe_at,
    step_sizes,
    lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
) -> list[dict]:
    """Train ``model`` for ``steps`` SGD steps; before the steps in ``probe_at`` (0 = at the start), probe the
    landscape on that step's batch, in train mode, leaving BatchNorm's running statistics untouched.
    Records, one per probe and step size: ``step``, ``step_size``, ``loss``, ``grad_change``, ``grad_norm``."""
    check_positive_int("steps", steps)
    probe_at = set(probe_at)
    if not probe_at or not all(isinstance(s, int) and 0 <= s < steps for s in probe_at):
        raise ValueError(f"probe_at must hold step numbers in [0, steps={steps}); got {sorted(probe_at)!r}.")
    torch.manual_seed(seed)
    train_step = sgd(model, lr)
    params = [p for p in model.parameters() if p.requires_grad]
    records = []
    for step, (xb, yb) in zip(range(steps), batches(split, batch_size, seed)):
        if step in probe_at:
            with preserved_state(model), untouched_rng(xb.device):
                probe = along_gradient(lambda: F.cross_entropy(model(xb), yb), params, step_sizes)
            records += [
                {"step": step, "step_size": eta, "loss": loss, "grad_change": change, "grad_norm": probe.grad_norm}
                for eta, loss, change in zip(probe.step_sizes, probe.losses, probe.grad_changes)
            ]
        train_step(xb, yb)
    return records


def landscape_summary(records: list[dict]) -> list[dict]:
    """Per probe (records grouped by every key except the per-step-size ones): ``loss_range``, ``max_grad_change``
    and ``beta`` (see ``GradientProbe``)."""
    per_step = ("step_size", "loss", "grad_change", "grad_norm")
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple((k, v) for k, v in r.items() if k not in per_step), []).append(r)
    summary = []
    for key, rows in groups.items():
        probe = GradientProbe(
            tuple(r["step_size"] for r in rows), float("nan"), rows[0]["grad_norm"],
            tuple(r["loss"] for r in rows), tuple(r["grad_change"] for r in rows),
        )
        measures = {"loss_range": probe.loss_range, "max_grad_change": probe.max_grad_change, "beta": probe.beta}
        summary.append({**dict(key), **measures})
    return summary


# --- 3. larger learning rates -------------------------------------------------------------------------------------


def diverged(final_loss: float, start_loss: float) -> bool:
    """Whether a run diverged: its final training loss is not finite or no lower than the loss it started from
    (a run that learns slowly still ends lower; one that blew up does not)."""
    return not math.isfinite(final_loss) or final_loss >= start_loss


@torch.no_grad()
def start_loss(model_config: MLPConfig, data: Dataset, seed: int, batch_size: int = 256) -> float:
    """The mean training loss of the model ``train_model`` starts from with ``seed`` (seeded, then built), over the
    training split's batches in train mode, as an epoch's loss is measured; BatchNorm's buffers are left alone."""
    torch.manual_seed(seed)
    model = build_mlp(model_config)
    total, count = 0.0, 0
    with preserved_state(model):
        model.train()
        for xb, yb in BatchLoader(data.train, batch_size, shuffle=False):
            total += F.cross_entropy(model(xb), yb, reduction="sum").item()
            count += len(yb)
    return total / count


def lr_sweep(
    variants: dict[str, MLPConfig], lrs, config: TrainConfig, data: Dataset, seeds, *, workers: int = 1, **run_options
) -> list[dict]:
    """Train every variant at every learning rate with every seed, as cached runs (``bnlab.experiments.run_many``,
    which gets ``workers`` and ``run_options``; with one worker, the runs train in this process: worker processes
    would start anew for every learning rate). A diverging run is recorded, not raised.
    Records: ``variant``, ``lr``, ``seed``, ``test_acc``, ``start_loss``, ``final_loss``, ``diverged``, ``dataset``,
    and the run's curves, one entry per epoch: ``epoch_loss`` (training loss) and ``epoch_val_acc``."""
    lrs, seeds = tuple(lrs), tuple(seeds)
    if not lrs or any(not (is_finite_number(lr) and lr > 0) for lr in lrs):
        raise ValueError(f"lrs must be one or more finite positive numbers; got {lrs!r}.")
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed.")
    start = {
        (label, seed): start_loss(model, data, seed, config.batch_size)
        for label, model in variants.items()
        for seed in seeds
    }
    records = []
    for lr in lrs:
        runs = run_many(variants, replace(config, lr=float(lr)), data, seeds, workers=workers,
                        **{"progress": False, **run_options})
        for label, histories in runs.items():
            for seed, history in zip(seeds, histories):
                loss = history.final.loss
                records.append({
                    "variant": label, "lr": float(lr), "seed": seed, "test_acc": history.test_acc,
                    "start_loss": start[label, seed], "final_loss": loss,
                    "diverged": diverged(loss, start[label, seed]), "dataset": history.dataset,
                    "epoch_loss": tuple(history.column("loss")), "epoch_val_acc": tuple(history.column("val_acc")),
                })
    return sorted(records, key=lambda r: (list(variants).index(r["variant"]), r["lr"], seeds.index(r["seed"])))

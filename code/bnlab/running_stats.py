"""Running statistics: the momentum average BatchNorm keeps for eval mode, and the exact alternative.

In train mode every BatchNorm layer updates two buffers per channel after each forward pass (PyTorch's rule)::

    running_mean = (1 - momentum) * running_mean + momentum * batch_mean
    running_var  = (1 - momentum) * running_var  + momentum * batch_var_unbiased     (correction=1)

``momentum=0.1`` by default: the *new* batch statistic gets weight 0.1. With ``momentum=None`` the factor is
``1 / num_batches_tracked`` instead, a plain (cumulative) average of all batch statistics so far. The start values
(``running_mean = 0``, ``running_var = 1``) keep weight ``(1 - momentum)^k`` after ``k`` updates.

The alternative is to compute statistics for the fixed, trained weights once, after training. Two designs exist:

* PreciseBN (Wu & Johnson 2021; fvcore's ``update_bn_stats``) and ``torch.optim.swa_utils.update_bn`` run the model
  in *train mode* over many batches and average the per-batch means and unbiased variances with equal weights: the
  statistics of each layer's input as training produced it, each layer normalised by the ones before it with the
  batch's own statistics. That is their design, not an approximation.
* ``precise_bn`` here computes the exact mean and population variance of each layer's input in *eval mode*, layer
  by layer in forward order, so that afterwards every layer normalises the split exactly in eval mode.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .data import BatchLoader, Dataset, Split
from .layers import batchnorm_layers, model_device, preserved_modes
from .models import MLPConfig, build_mlp
from .training import accuracy, pick_device, seed_everything

# --- the update rule ---------------------------------------------------------------------------------------------


def check_momentum(momentum, *, allow_none: bool = True) -> None:
    """``ValueError`` unless ``momentum`` is a number in (0, 1] (or ``None``, the cumulative average)."""
    if momentum is None and allow_none:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
        allowed = "a number in (0, 1] or None" if allow_none else "a number in (0, 1]"
        raise ValueError(f"momentum must be {allowed}; got {momentum!r}.")


def start_weight(momentum: float, steps: int) -> float:
    """Weight ``(1 - momentum)^steps`` that the start value still has after ``steps`` updates."""
    check_momentum(momentum, allow_none=False)
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}.")
    return (1 - momentum) ** steps


def steps_to_forget(momentum: float, *, weight: float = 0.01) -> int:
    """The fewest updates after which the start value weighs at most ``weight``:
    the smallest ``k`` with ``(1 - momentum)^k <= weight``, i.e. ``ceil(log(weight) / log(1 - momentum))``."""
    check_momentum(momentum, allow_none=False)
    if not 0 < weight < 1:
        raise ValueError(f"weight must be a number in (0, 1); got {weight!r}.")
    if momentum == 1:
        return 1
    k = math.ceil(math.log(weight) / math.log(1 - momentum))
    while k > 0 and (1 - momentum) ** (k - 1) <= weight:  # guard against rounding in the logarithms
        k -= 1
    while (1 - momentum) ** k > weight:
        k += 1
    return k


def synthetic_batches(
    *, batch_size: int = 64, steps: int = 300, true_mean: float = 2.0, true_std: float = 1.0, seed: int = 0
) -> torch.Tensor:
    """``steps`` batches of ``batch_size`` values drawn from ``N(true_mean, true_std^2)``, shaped as one feature
    for ``BatchNorm1d(1)``: ``(steps, batch_size, 1)``. The same ``seed`` gives the same batches."""
    for name, value in (("batch_size", batch_size), ("steps", steps)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (BatchNorm needs two values per feature); got {batch_size}.")
    generator = torch.Generator().manual_seed(seed)
    return true_mean + true_std * torch.randn(steps, batch_size, 1, generator=generator)


def running_mean_trajectory(
    *,
    momentum: float | None = 0.1,
    batch_size: int = 64,
    steps: int = 300,
    true_mean: float = 2.0,
    true_std: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """The ``running_mean`` a ``BatchNorm1d(1)`` in train mode holds after each of the ``synthetic_batches``:
    ``(steps + 1,)``, starting with the start value 0. Computed with PyTorch's rule on the batch means (the
    cumulative average for ``momentum=None``), which is what the layer does, without running it step by step."""
    check_momentum(momentum)
    batch_means = synthetic_batches(
        batch_size=batch_size, steps=steps, true_mean=true_mean, true_std=true_std, seed=seed
    ).double().mean(dim=(1, 2))
    trajectory = [0.0]
    for k, batch_mean in enumerate(batch_means.tolist(), start=1):
        factor = 1.0 / k if momentum is None else momentum
        trajectory.append((1 - factor) * trajectory[-1] + factor * batch_mean)
    return torch.tensor(trajectory, dtype=torch.float64)


def expected_running_mean(momentum: float | None, steps: int, *, true_mean: float = 2.0) -> torch.Tensor:
    """The running mean's expected value after ``k = 0 ... steps`` updates, when every batch mean has expected
    value ``true_mean`` and the start value is 0: ``true_mean * (1 - (1 - momentum)^k)``. With ``momentum=None``
    (the cumulative average) the start value is gone after the first update: ``true_mean`` for every ``k >= 1``."""
    check_momentum(momentum)
    k = torch.arange(steps + 1, dtype=torch.float64)
    if momentum is None:
        return torch.where(k > 0, true_mean, 0.0).double()
    return true_mean * (1 - (1 - momentum) ** k)


def ema_noise(momentum: float, batch_size: int, *, true_std: float = 1.0) -> float:
    """Standard deviation of the running mean around the true mean once the start value is forgotten, for
    independent batches: each batch mean has standard deviation ``s = true_std / sqrt(batch_size)``, and the
    exponential average of them has ``s * sqrt(momentum / (2 - momentum))``."""
    check_momentum(momentum, allow_none=False)
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    return true_std / math.sqrt(batch_size) * math.sqrt(momentum / (2 - momentum))


# --- BatchNorm layers in a model ---------------------------------------------------------------------------------


def tracked_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """``(name, layer)`` for every BatchNorm layer of ``model`` that keeps running statistics."""
    return [(name, layer) for name, layer in batchnorm_layers(model) if layer.track_running_stats]


def set_momentum(model: nn.Module, momentum: float | None) -> nn.Module:
    """Set ``momentum`` on every BatchNorm layer of ``model`` (in place); returns the model."""
    check_momentum(momentum)
    layers = tracked_layers(model)
    if not layers:
        raise ValueError("model has no BatchNorm layer with running statistics; there is no momentum to set.")
    for _, layer in layers:
        layer.momentum = momentum
    return model


# --- precise BN: exact statistics over a whole split -------------------------------------------------------------


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has seen its input."""


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations per channel, merged batch by batch (Chan et al.), in float64."""

    count: int = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        values = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()  # (channels, everything else)
        n = values.shape[1]
        mean = values.mean(dim=1)
        m2 = ((values - mean[:, None]) ** 2).sum(dim=1)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / self.count


def input_images(data) -> torch.Tensor:
    """The inputs of ``data``, a ``Split`` or a tensor of inputs, checked to hold at least 2 examples."""
    images = data.images if isinstance(data, Split) else data
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"split must be a bnlab Split or a tensor of inputs; got {type(data).__name__}.")
    if len(images) < 2:
        raise ValueError(f"split must hold at least 2 examples; got {len(images)}.")
    return images


def input_batches(images: torch.Tensor, batch_size: int, device: torch.device):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size].to(device)


def forward_order(model: nn.Module, layers: list[_BatchNorm], example: torch.Tensor) -> list[_BatchNorm]:
    """``layers`` in the order a forward pass reaches them (layers it never reaches are left out)."""
    order: list[_BatchNorm] = []

    def record(module, inputs):
        if module not in order:
            order.append(module)

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


@torch.no_grad()
def precise_bn(model: nn.Module, split, *, batch_size: int = 1_000) -> int:
    """Replace every BatchNorm layer's ``running_mean`` and ``running_var`` by the exact statistics of its input
    over ``split`` (a ``Split`` or a tensor of inputs), in place. Returns the number of layers updated.

    For a layer whose input over the split is ``x_1 ... x_N`` (for BatchNorm2d, every position of every image),
    per channel::

        running_mean = (1/N) * sum_n x_n
        running_var  = (1/N) * sum_n (x_n - running_mean)^2       (the population variance)

    The input of a layer is the one it sees in *eval mode*: layers are done in the order the forward pass reaches
    them, each after the ones before it already hold their new statistics, so afterwards every layer normalises
    the split exactly in eval mode. ``batch_size`` only bounds memory; the result does not depend on it, and a
    last batch of a single example is fine (eval mode needs no batch statistics).
    Parameters, ``momentum`` and ``num_batches_tracked`` are not touched; every submodule's train/eval flag is
    restored.

    Layers with ``track_running_stats=False`` have no buffers to update. After every layer that has them they are
    skipped; *before* one, ``precise_bn`` refuses with a ``ValueError``: such a layer normalises each batch with
    that batch's own statistics even in eval mode, so the input of the layers after it would depend on how the
    split is cut into batches, and no statistics are exact for every batch size.
    """
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    named = batchnorm_layers(model)
    if not any(layer.track_running_stats for _, layer in named):
        raise ValueError("model has no BatchNorm layer with running statistics (track_running_stats=True).")
    images = input_images(split)
    device = model_device(model)
    names = {layer: name for name, layer in named}
    with preserved_modes(model):
        model.eval()
        # at least 2 rows: a layer without running statistics needs two values per channel even in eval mode
        order = forward_order(model, [layer for _, layer in named], images[: max(batch_size, 2)].to(device))
        tracked = [layer for layer in order if layer.track_running_stats]
        for earlier in order[: order.index(tracked[-1])] if tracked else []:
            if not earlier.track_running_stats:
                raise ValueError(
                    f"BatchNorm layer {names[earlier]!r} has no running statistics (track_running_stats=False) and "
                    f"runs before {names[tracked[-1]]!r}: in eval mode it normalises each batch with that batch's "
                    "own statistics, so the input of the layers after it, and the statistics precise_bn would "
                    "compute for them, would depend on batch_size. Give it running statistics "
                    "(track_running_stats=True) to use precise_bn on this model."
                )
        for layer in tracked:
            moments = _Moments()

            def collect(module, inputs):
                moments.add(inputs[0])
                raise _Stop

            handle = layer.register_forward_pre_hook(collect)
            try:
                for xb in input_batches(images, batch_size, device):
                    try:
                        model(xb)
                    except _Stop:
                        pass
            finally:
                handle.remove()
            layer.running_mean.copy_(moments.mean.to(layer.running_mean.dtype))
            layer.running_var.copy_(moments.var.to(layer.running_var.dtype))
    return len(tracked)


def with_precise_bn(model: nn.Module, split, *, batch_size: int = 1_000) -> nn.Module:
    """A copy of ``model`` with precise statistics (``precise_bn``); ``model`` itself is unchanged."""
    twin = copy.deepcopy(model)
    precise_bn(twin, split, batch_size=batch_size)
    return twin


def stats_gap(model: nn.Module, reference: nn.Module) -> float:
    """How far ``model``'s running variances are from ``reference``'s, as a factor: the largest
    ``|log(running_var / reference_var)|`` over every channel of every BatchNorm layer, returned as
    ``exp`` of it (1.0: equal; 2.0: some channel's variance is off by a factor of 2, either way)."""
    pairs = list(zip(tracked_layers(model), tracked_layers(reference)))
    if not pairs:
        raise ValueError("model has no BatchNorm layer with running statistics.")
    worst = max(
        (a.running_var.double().log() - b.running_var.double().log()).abs().max().item() for (_, a), (_, b) in pairs
    )
    return math.exp(worst)


# --- early in training: momentum vs eval accuracy ----------------------------------------------------------------


class ShadowStats:
    """Running averages with another ``momentum``, kept beside a model's own buffers during training.

    After every train-mode forward pass of each BatchNorm layer, the batch mean and unbiased variance of its
    input (per channel) update a private copy of ``running_mean`` and ``running_var`` by PyTorch's rule, starting
    from 0 and 1. Momentum does not enter the train-mode forward pass, so these are exactly the buffers the same
    training run would have produced with this momentum. ``apply(model)`` returns a copy of the model that uses
    them; ``remove()`` stops tracking.
    """

    def __init__(self, model: nn.Module, momentum: float | None):
        check_momentum(momentum)
        layers = tracked_layers(model)
        if not layers:
            raise ValueError("model has no BatchNorm layer with running statistics to shadow.")
        self.momentum = momentum
        self.updates = 0
        self.mean = {name: torch.zeros_like(layer.running_mean) for name, layer in layers}
        self.var = {name: torch.ones_like(layer.running_var) for name, layer in layers}
        self.counts = {name: 0 for name, _ in layers}
        self.handles = [layer.register_forward_pre_hook(self.hook(name)) for name, layer in layers]

    def hook(self, name: str):
        def update(module, inputs):
            if not module.training:
                return
            x = inputs[0].detach()
            dims = [d for d in range(x.dim()) if d != 1]
            self.counts[name] += 1
            factor = 1.0 / self.counts[name] if self.momentum is None else self.momentum
            with torch.no_grad():
                self.mean[name].mul_(1 - factor).add_(x.mean(dim=dims), alpha=factor)
                self.var[name].mul_(1 - factor).add_(x.var(dim=dims, correction=1), alpha=factor)

        return update

    def apply(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` whose BatchNorm layers hold these running averages (and this momentum)."""
        twin = copy.deepcopy(model)
        for name, layer in tracked_layers(twin):
            if name not in self.mean:
                raise ValueError(f"model has a BatchNorm layer {name!r} that these statistics did not track.")
            layer.running_mean.copy_(self.mean[name])
            layer.running_var.copy_(self.var[name])
            layer.momentum = self.momentum
        return twin

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@dataclass(frozen=True)
class EarlyRun:
    """Validation accuracy (eval mode) of one training run after each of ``steps`` SGD steps.

    ``accuracy[label][i]`` is the accuracy after ``steps[i]`` steps with the statistics ``label`` names:
    ``"momentum 0.1"`` etc. (running averages kept during training), or ``"precise"`` (``precise_bn`` on the
    training split), all for the same weights. ``gap[label][i]`` is ``stats_gap`` against the precise statistics.
    """

    dataset: str
    seed: int
    steps: tuple[int, ...]
    accuracy: dict[str, tuple[float, ...]]
    gap: dict[str, tuple[float, ...]]


def early_accuracy(
    data: Dataset,
    *,
    momenta: tuple[float, ...] = (0.1, 0.01),
    steps: tuple[int, ...] = (1, 3, 10, 30, 100),
    seed: int = 1,
    model_config: MLPConfig = MLPConfig(),
    batch_size: int = 256,
    lr: float = 0.1,
    device: str | torch.device | None = None,
) -> EarlyRun:
    """Train the MLP with plain SGD, keeping running averages for every momentum in ``momenta``
    (``ShadowStats``), and measure validation accuracy in eval mode after each number of ``steps``: with each
    momentum's running averages and with precise statistics of the training split, for the same weights."""
    momenta = tuple(momenta)
    if not momenta:
        raise ValueError("momenta is empty: give at least one momentum.")
    for m in momenta:
        check_momentum(m, allow_none=False)
    steps = tuple(sorted(set(steps)))
    if not steps or not all(isinstance(k, int) and k >= 1 for k in steps):
        raise ValueError(f"steps must be one or more positive integers; got {steps!r}.")
    device = pick_device(device)
    data = data.to(device)
    seed_everything(seed)
    model = build_mlp(model_config).to(device).train()
    shadows = {f"momentum {m:g}": ShadowStats(model, m) for m in momenta}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = BatchLoader(data.train, batch_size, shuffle=True, drop_last=True, seed=seed)
    acc: dict[str, list[float]] = {label: [] for label in [*shadows, "precise"]}
    gap: dict[str, list[float]] = {label: [] for label in shadows}

    done = 0
    try:
        while done < steps[-1]:
            for xb, yb in loader:
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
                if done in steps:
                    precise = with_precise_bn(model, data.train)
                    acc["precise"].append(accuracy(precise, data.val))
                    for label, shadow in shadows.items():
                        averaged = shadow.apply(model)
                        acc[label].append(accuracy(averaged, data.val))
                        gap[label].append(stats_gap(averaged, precise))
                if done == steps[-1]:
                    break
    finally:
        for shadow in shadows.values():
            shadow.remove()
    return EarlyRun(
        dataset=data.name,
        seed=seed,
        steps=steps,
        accuracy={k: tuple(v) for k, v in acc.items()},
        gap={k: tuple(v) for k, v in gap.items()},
    )

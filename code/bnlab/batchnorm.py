"""BatchNorm from scratch: what ``torch.nn.BatchNorm1d`` and ``torch.nn.BatchNorm2d`` compute, in a few lines.

For an input ``x`` of shape ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` every channel ``c`` gets its own
statistics, taken over all the other dimensions: the batch, and the length ``L`` or the image's ``H x W`` where
there is one. So ``n``, the number of values per channel, is ``N``, ``N * L`` or ``N * H * W``: in a CNN, one mean
and one variance per channel, over every position of every image in the batch.

Train mode normalises with the statistics of the batch, using the *biased* variance (divide by ``n``)::

    mean_B = 1/n * sum_i x_i
    var_B  = 1/n * sum_i (x_i - mean_B)^2
    y      = weight * (x - mean_B) / sqrt(var_B + eps) + bias

and updates the running statistics, with the *unbiased* variance ``var_B * n / (n - 1)``::

    running_mean = (1 - momentum) * running_mean + momentum * mean_B
    running_var  = (1 - momentum) * running_var  + momentum * var_B * n / (n - 1)

``momentum=None`` uses ``1 / num_batches_tracked`` as the factor instead: the plain (cumulative) average of all
batch statistics so far.

Eval mode normalises with the running statistics and changes nothing::

    y = weight * (x - running_mean) / sqrt(running_var + eps) + bias

``weight`` (gamma) and ``bias`` (beta) are learnable parameters; ``running_mean``, ``running_var`` and
``num_batches_tracked`` are buffers: saved in ``state_dict()`` and moved by ``.to(device)``, but never trained.

One class, ``BatchNorm``, does the work for every shape; ``BatchNorm1d`` and ``BatchNorm2d`` only say which input
shapes they accept, as PyTorch's classes of the same names do.

What BatchNorm does to a network's activations while it trains: ``preactivations`` reads what reaches a ReLU
(BatchNorm's output where BatchNorm sits before it, the Linear layer's output where there is none), and
``preactivations_during_training`` records it before training and after chosen epochs.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .data import Dataset
from .layers import model_device
from .models import build_model
from .modes import preserved_state
from .training import TrainConfig, seed_everything, train


def channel_dims(ndim: int) -> tuple[int, ...]:
    """The dimensions BatchNorm averages over: all but the channel dimension 1.

    ``(N, C)`` -> ``(0,)``; ``(N, C, L)`` -> ``(0, 2)``; ``(N, C, H, W)`` -> ``(0, 2, 3)`` (what BatchNorm2d uses).
    """
    if ndim < 2:
        raise ValueError(f"ndim must be at least 2 (a batch dimension and a channel dimension); got {ndim}.")
    return (0, *range(2, ndim))


class BatchNorm(nn.Module):
    """Batch normalisation of ``(N, C, ...)`` inputs, written from the formulas (see the module docstring).

    Statistics are per channel (dimension 1), over every other dimension. ``BatchNorm1d`` and ``BatchNorm2d``
    are this class restricted to the shapes PyTorch's classes accept.

    Args:
        num_features: ``C``, the number of channels (features).
        eps: added to the variance before the square root, for numerical safety.
        momentum: weight of the new batch statistic in the running average, or ``None`` for the cumulative
            average. Not an optimiser's momentum.
    """

    shapes = "(N, C, ...)"  # the input shapes accepted, as error messages show them (C: num_features)
    input_dims: tuple[int, ...] | None = None  # their numbers of dimensions; None: any from 2 on

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        if not (isinstance(num_features, int) and not isinstance(num_features, bool) and num_features > 0):
            raise ValueError(f"num_features must be a positive integer; got {num_features!r}.")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps must be a positive number; got {eps!r}.")
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be a number in [0, 1] or None (cumulative average); got {momentum!r}.")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset; weight (gamma) 1 and bias (beta) 0."""
        self.reset_running_stats()
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()

    def check_input(self, x: torch.Tensor) -> None:
        dims_ok = x.dim() >= 2 if self.input_dims is None else x.dim() in self.input_dims
        if not dims_ok or x.shape[1] != self.num_features:
            expected = self.shapes.replace("C", str(self.num_features))
            raise ValueError(f"expected input of shape {expected}; got shape {tuple(x.shape)}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        dims = channel_dims(x.dim())
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)  # broadcast per-channel vectors over N (L, H, W)
        if self.training:
            n = x.numel() // self.num_features  # values per channel
            if n < 2:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, correction=0)  # biased: divide by n
            self.update_running_stats(mean.detach(), var.detach() * n / (n - 1))  # unbiased: divide by n - 1
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return self.weight.view(shape) * x_hat + self.bias.view(shape)

    @torch.no_grad()
    def update_running_stats(self, batch_mean: torch.Tensor, batch_var_unbiased: torch.Tensor) -> None:
        """``running = (1 - factor) * running + factor * batch``, factor = momentum or 1 / num_batches_tracked."""
        self.num_batches_tracked += 1
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(factor * batch_mean)
        self.running_var.mul_(1 - factor).add_(factor * batch_var_unbiased)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(BatchNorm):
    """``BatchNorm`` for ``(N, C)`` or ``(N, C, L)`` inputs; matches ``torch.nn.BatchNorm1d(num_features, eps=eps,
    momentum=momentum)`` in outputs, gradients and buffers."""

    shapes = "(N, C) or (N, C, L)"
    input_dims = (2, 3)


class BatchNorm2d(BatchNorm):
    """``BatchNorm`` for ``(N, C, H, W)`` inputs (a batch of C-channel images); matches
    ``torch.nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)`` in outputs, gradients and buffers."""

    shapes = "(N, C, H, W)"
    input_dims = (4,)


# --- Checking a BatchNorm against PyTorch's -----------------------------------------------------------------

COMPARED = ("output", "input grad", "weight grad", "bias grad", "running_mean", "running_var", "num_batches_tracked")


def max_differences(
    ours: nn.Module,
    reference: nn.Module,
    batches: list[torch.Tensor],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Feed the same batches through both modules, in each module's current mode; return, for every quantity in
    ``COMPARED``, the largest absolute difference seen over all batches.

    Gradients come from ``loss = sum(y * g)`` with a random ``g`` (seeded by ``seed``): with ``g = 1`` the input
    gradient of a train-mode BatchNorm is exactly zero and would prove nothing. Buffers are compared after every
    batch. Both modules must start from the same state (e.g. both freshly built).
    """
    if not batches:
        raise ValueError("batches is empty: give at least one input tensor.")
    if ours.training != reference.training:
        raise ValueError(f"ours and reference must be in the same mode; got training={ours.training} and {reference.training}.")
    generator = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(COMPARED, 0.0)

    def note(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        worst[name] = max(worst[name], (a.detach().double() - b.detach().double()).abs().max().item())

    for batch in batches:
        x_ours = batch.detach().clone().requires_grad_(True)
        x_ref = batch.detach().clone().requires_grad_(True)
        y_ours, y_ref = ours(x_ours), reference(x_ref)
        g = torch.randn(y_ref.shape, generator=generator, dtype=y_ref.dtype).to(y_ref.device)
        for module in (ours, reference):
            module.zero_grad(set_to_none=True)
        (y_ours * g).sum().backward()
        (y_ref * g).sum().backward()
        note("output", y_ours, y_ref)
        note("input grad", x_ours.grad, x_ref.grad)
        note("weight grad", ours.weight.grad, reference.weight.grad)
        note("bias grad", ours.bias.grad, reference.bias.grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            note(name, getattr(ours, name), getattr(reference, name))
    return worst


# --- What reaches the activations, during training ------------------------------------------------------------


def preactivations(model: nn.Module, inputs: torch.Tensor, *, layer: int = 0) -> torch.Tensor:
    """What reaches the model's ``layer``-th ``nn.ReLU`` (counted from 0) for ``inputs``: a ``(N, units)`` tensor
    on the CPU. With BatchNorm before the ReLU that is BatchNorm's output; without BatchNorm, the Linear layer's.

    Computed as during training: in train mode, so that BatchNorm normalises with the statistics of ``inputs``
    (give it a batch of a realistic size). Nothing changes: no gradients are taken, and the model's mode flags and
    buffers (BatchNorm's running statistics) are as they were afterwards.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("model has no nn.ReLU: preactivations reads the input of a ReLU layer.")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(relus):
        raise ValueError(
            f"layer must be an integer from 0 to {len(relus) - 1} (the model has {len(relus)} ReLU layers); "
            f"got {layer!r}."
        )
    seen = []

    def record(module, args):
        seen.append(args[0].detach().flatten(1).cpu())

    handle = relus[layer].register_forward_pre_hook(record)
    try:
        with preserved_state(model), torch.no_grad():
            model.train()
            model(inputs.to(model_device(model)))
    finally:
        handle.remove()
    return seen[0]


def preactivations_during_training(
    model_config,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    epochs: tuple[int, ...] = (0, 1, 5, 20),
    layer: int = 0,
    probe_size: int = 1_000,
    device: str | torch.device | None = None,
) -> dict[int, torch.Tensor]:
    """Build the model ``model_config`` describes (seeded with ``config.seed``), train it with ``config``'s
    settings, and return ``{epoch: preactivations(model, probe, layer=layer)}`` for every epoch in ``epochs``
    (0: before training). The probe is the first ``probe_size`` validation images: the same images every time,
    none of them trained on.

    Training runs in segments, one ``bnlab.training.train`` call from one recorded epoch to the next; each segment
    draws its batch order from the seed ``config.seed + the epoch it starts at``. ``config.epochs`` is not used
    (the last recorded epoch is where training stops). Plain SGD only: a momentum would restart at every segment.
    """
    epochs = tuple(epochs)
    if not epochs or any(isinstance(e, bool) or not isinstance(e, int) for e in epochs) or epochs[0] < 0 or any(
        a >= b for a, b in zip(epochs, epochs[1:])
    ):
        raise ValueError(f"epochs must be increasing whole numbers from 0 up, e.g. (0, 1, 5, 20); got {epochs!r}.")
    if config.momentum != 0:
        raise ValueError(
            f"config.momentum must be 0 (plain SGD): training runs in segments and would restart it; "
            f"got {config.momentum!r}."
        )
    if isinstance(probe_size, bool) or not isinstance(probe_size, int) or not 2 <= probe_size <= len(data.val):
        raise ValueError(
            f"probe_size must be an integer from 2 to {len(data.val)} (the validation images); got {probe_size!r}."
        )
    seed_everything(config.seed)
    model = build_model(model_config)
    probe = data.val.images[:probe_size]
    recorded, trained = {}, 0
    for epoch in epochs:
        if epoch > trained:
            segment = dataclasses.replace(config, epochs=epoch - trained, seed=config.seed + trained)
            train(model, data, dataclasses.replace(segment, record_train_acc=False), device=device, progress=False)
            trained = epoch
        recorded[epoch] = preactivations(model, probe, layer=layer)
    return recorded

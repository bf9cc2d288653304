"""Scale invariance and the effective learning rate (van Laarhoven 2017; Kohler et al. 2019).

BatchNorm divides each unit by its standard deviation over the batch, so for a weight ``W`` followed by BatchNorm::

    BN((cW) x) = BN(W x)              for every c > 0 (up to BatchNorm's eps)
    grad_{cW} L = grad_W L / c         the gradient shrinks by the factor the weight grew
    w_j . g_j = 0                      each unit's weight row is orthogonal to its gradient

so one SGD step with learning rate ``eta`` and weight decay ``lambda`` gives exactly
``|w'|^2 = (1 - eta lambda)^2 |w|^2 + eta^2 |g|^2``, and the direction of ``w`` moves with the effective learning
rate ``eta / |w|^2``: a twin with weights ``c`` times longer and learning rate ``c^2`` times larger for them trains
exactly like the original (``scaled_twin_difference``). Experiments train with ``bnlab.explanations``' plain loop.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split
from .explanations import batches, check_positive_int, sgd
from .models import is_finite_number, is_integer
from .training import PlainStep

WEIGHT_DECAYS = (0.0, 0.001, 0.01)  # the chapter's


def hidden_linears(model: nn.Sequential) -> list[nn.Linear]:
    """The Linear layers that a BatchNorm follows directly (their weights are scale-invariant)."""
    layers = list(model)
    return [m for m, nxt in zip(layers, layers[1:]) if isinstance(m, nn.Linear) and isinstance(nxt, nn.BatchNorm1d)]


def effective_learning_rate(weight: torch.Tensor, lr: float) -> float:
    """``lr`` over the mean, over the units (the rows of ``weight``), of each unit's squared weight length
    ``|w_j|^2``: how fast one step turns the units' directions, up to the gradients' own sizes."""
    return lr / (weight.detach().double() ** 2).sum(1).mean().item()


@dataclass(frozen=True)
class ScaleCheck:
    """What scaling one weight matrix before BatchNorm by ``factor`` does, on one batch in train mode."""

    factor: float
    output_difference: float  # max |f_scaled(x) - f(x)| over the batch's logits
    gradient_ratio: float  # |grad of the scaled weight| / |grad of the original weight|
    gradient_error: float  # max |factor * grad_scaled - grad| / max |grad|
    orthogonality: float  # max over units of |w . g| / (|w| |g|), for the original weight


def scale_check(model: nn.Sequential, layer: int, factor: float, xb: torch.Tensor, yb: torch.Tensor) -> ScaleCheck:
    """Scale the weight of hidden Linear ``layer`` (0-based, among ``hidden_linears``) of a copy of ``model`` by
    ``factor`` and compare outputs and gradients on one batch. ``model`` is not changed."""
    if not (is_finite_number(factor) and factor > 0):
        raise ValueError(f"factor must be a finite positive number; got {factor!r}.")
    count = len(hidden_linears(model))
    if not (is_integer(layer) and 0 <= layer < count):
        raise ValueError(f"layer must be an index in [0, {count}) (Linear layers before BatchNorm); got {layer!r}.")
    results = []
    for c in (1.0, float(factor)):
        twin = copy.deepcopy(model).train()
        weight = hidden_linears(twin)[layer].weight
        with torch.no_grad():
            weight.mul_(c)
        out = twin(xb)
        F.cross_entropy(out, yb).backward()
        results.append((out.detach(), weight.detach(), weight.grad.detach()))
    (out0, w0, g0), (out1, _, g1) = results
    dots = (w0 * g0).sum(1).abs() / (w0.norm(dim=1) * g0.norm(dim=1)).clamp_min(1e-30)
    return ScaleCheck(
        factor=float(factor),
        output_difference=(out1 - out0).abs().max().item(),
        gradient_ratio=(g1.norm() / g0.norm()).item(),
        gradient_error=((factor * g1 - g0).abs().max() / g0.abs().max()).item(),
        orthogonality=dots.max().item(),
    )


def norm_run(
    model: nn.Sequential,
    split: Split,
    *,
    steps: int,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    every: int = 1,
) -> list[dict]:
    """Train with SGD (``weight_decay`` on every parameter, as ``torch.optim.SGD`` applies it) and record, every
    ``every`` steps and for each hidden Linear before BatchNorm: ``weight_norm`` |W|, ``effective_lr``
    (``lr`` / mean over units of |w_j|^2) and ``predicted_norm``, what ``|w'|^2 = (1 - lr wd)^2 |w|^2 + lr^2 |g|^2``
    gives from the step before (``nan`` at step 0). Records also hold ``step`` and ``layer`` (from 1)."""
    check_positive_int("steps", steps)
    check_positive_int("every", every)
    if not (is_finite_number(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0; got {weight_decay!r}.")
    torch.manual_seed(seed)
    weights = [m.weight for m in hidden_linears(model)]
    train_step = sgd(model, lr, weight_decay)

    def record(step, predicted):
        for i, w in enumerate(weights):
            records.append({
                "step": step, "layer": i + 1, "weight_norm": w.detach().norm().item(),
                "effective_lr": effective_learning_rate(w, lr), "predicted_norm": predicted[i],
            })

    records: list[dict] = []
    record(0, [float("nan")] * len(weights))
    for step, (xb, yb) in zip(range(1, steps + 1), batches(split, batch_size, seed)):
        before = [(w.detach() ** 2).sum().item() for w in weights]
        train_step(xb, yb)
        if step % every == 0 or step == steps:
            grads_sq = [(w.grad**2).sum().item() for w in weights]
            shrink = (1 - lr * weight_decay) ** 2
            record(step, [math.sqrt(shrink * b + lr**2 * g) for b, g in zip(before, grads_sq)])
    return records


def scaled_twin_difference(
    model: nn.Sequential,
    split: Split,
    *,
    factor: float,
    steps: int,
    lr: float = 0.1,
    compensate: bool = True,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Train ``model`` and a twin whose weights before BatchNorm are ``factor`` times larger on the same batches;
    with ``compensate``, those weights of the twin get the learning rate ``lr * factor**2``. Returns the largest
    difference of the two models' logits on the last batch (train mode).

    Compensated, the twin's weights stay ``factor`` times the original's at every step, since its gradient is
    ``1 / factor`` times as large: ``c w - (lr c^2)(g / c) = c (w - lr g)``. The two compute the same function up
    to BatchNorm's ``eps`` (``BN(c z)`` equals ``BN(z)`` only when ``eps`` is negligible next to ``c^2 var(z)``)."""
    check_positive_int("steps", steps)
    if not (is_finite_number(factor) and factor > 0):
        raise ValueError(f"factor must be a finite positive number; got {factor!r}.")
    twin = copy.deepcopy(model)
    scaled = [m.weight for m in hidden_linears(twin)]
    with torch.no_grad():
        for w in scaled:
            w.mul_(factor)
    scaled_ids = {id(w) for w in scaled}
    others = [p for p in twin.parameters() if id(p) not in scaled_ids]
    twin_lr = lr * factor**2 if compensate else lr
    steps_of = [
        sgd(model, lr),
        PlainStep(twin, torch.optim.SGD([{"params": scaled, "lr": twin_lr}, {"params": others, "lr": lr}])),
    ]
    for _, (xb, yb) in zip(range(steps), batches(split, batch_size, seed)):
        for train_step in steps_of:
            train_step(xb, yb)
    with torch.no_grad():
        return (model.train()(xb) - twin.train()(xb)).abs().max().item()

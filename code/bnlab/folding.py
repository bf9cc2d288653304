"""Folding eval-mode BatchNorm into a Linear layer, for inference.

In eval mode ``BatchNorm1d`` normalises with its running statistics, so it is a fixed affine map per feature,
``bn(z) = gamma * (z - mu) / sigma + beta`` with ``sigma = sqrt(running_var + eps)`` and ``mu = running_mean``.
A fixed affine map merges with the Linear layer next to it, on either side.

**Into the Linear layer before it** (``Linear -> BatchNorm1d``, the course's "before" placement)::

    bn(W x + b) = (gamma / sigma * W) x + gamma * (b - mu) / sigma + beta

    W' = diag(gamma / sigma) W                  (row j of W scaled by gamma_j / sigma_j)
    b' = gamma * (b - mu) / sigma + beta        (b = 0 where the Linear layer has no bias)

**Into the Linear layer after it** (``ReLU -> BatchNorm1d -> Linear``, the "after" placement)::

    W bn(h) + b = W diag(gamma / sigma) h + b + W (beta - gamma * mu / sigma)

    W'' = W diag(gamma / sigma)                 (column j of W scaled by gamma_j / sigma_j)
    b'' = b + W (beta - gamma * mu / sigma)

Either way the folded layer always has a bias, even where the original Linear had none. Which layers BatchNorm can
be moved across: layers that are the identity in eval mode (``Dropout``, ``Identity``) pass it on; anything
nonlinear stops it, because the affine map would then act on the other side of the nonlinearity. A ReLU between a
Linear layer and its BatchNorm therefore blocks folding backwards, but the BatchNorm still folds forwards into the
next Linear layer when only such identity layers lie between them. In train mode BatchNorm normalises with the
statistics of each batch, which no fixed Linear layer can reproduce, so only eval-mode BatchNorm with running
statistics folds.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import batchnorm_layers

PASS_THROUGH = (nn.Identity, nn.Dropout, nn.AlphaDropout)  # the identity in eval mode


def _affine_of(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` in float64 with ``bn(z) = scale * z + shift`` in eval mode:
    ``scale = gamma / sigma``, ``shift = beta - gamma * mu / sigma``."""
    mu = bn.running_mean.detach().double()
    sigma = torch.sqrt(bn.running_var.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mu)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mu)
    scale = gamma / sigma
    return scale, beta - scale * mu


def _new_linear(like: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    folded = nn.Linear(like.in_features, like.out_features, bias=True, device=like.weight.device,
                       dtype=like.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    folded.train(like.training)
    return folded


def fold_batchnorm(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """A new ``nn.Linear`` that computes ``bn(linear(x))`` for an eval-mode ``bn``; the inputs are not changed.

    ``W' = gamma / sigma * W`` and ``b' = gamma * (b - mu) / sigma + beta`` with ``sigma = sqrt(running_var + eps)``
    and ``mu = running_mean`` (``gamma = 1, beta = 0`` where ``bn.affine`` is False). The arithmetic runs in float64
    and the result has ``linear``'s dtype and device. The new layer always has a bias.

    Raises ``ValueError`` if ``bn`` is in train mode, has no running statistics (``track_running_stats=False``),
    or has a different number of features than ``linear`` has outputs.
    """
    check_foldable(linear, bn)
    if linear.out_features != bn.num_features:
        raise ValueError(
            f"linear has {linear.out_features} output features but bn has num_features={bn.num_features}; "
            "they must be equal: fold each BatchNorm1d into the Linear layer directly before it."
        )
    weight = linear.weight.detach().double()
    bias = linear.bias.detach().double() if linear.bias is not None else torch.zeros_like(weight[:, 0])
    scale, shift = _affine_of(bn)
    return _new_linear(linear, scale[:, None] * weight, scale * bias + shift)


def fold_into_next(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """A new ``nn.Linear`` that computes ``linear(bn(x))`` for an eval-mode ``bn``; the inputs are not changed.

    ``W'' = W diag(gamma / sigma)`` and ``b'' = b + W (beta - gamma * mu / sigma)``. The arithmetic runs in float64
    and the result has ``linear``'s dtype and device. The new layer always has a bias.

    Raises ``ValueError`` if ``bn`` is in train mode, has no running statistics, or has a different number of
    features than ``linear`` has inputs.
    """
    check_foldable(linear, bn)
    if linear.in_features != bn.num_features:
        raise ValueError(
            f"linear has {linear.in_features} input features but bn has num_features={bn.num_features}; "
            "they must be equal: fold each BatchNorm1d into the Linear layer that reads its output."
        )
    weight = linear.weight.detach().double()
    bias = linear.bias.detach().double() if linear.bias is not None else torch.zeros_like(weight[:, 0])
    scale, shift = _affine_of(bn)
    return _new_linear(linear, weight * scale[None, :], bias + weight @ shift)


def check_foldable(linear: nn.Module, bn: nn.Module) -> None:
    """Raise ``ValueError``, saying what to do, unless ``bn`` is an eval-mode ``BatchNorm1d`` with running
    statistics and ``linear`` an ``nn.Linear`` (the sizes are checked by the fold that needs them)."""
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"linear must be an nn.Linear; got {type(linear).__name__}.")
    check_fixed(bn)


def check_fixed(bn: nn.Module, kind: type = nn.BatchNorm1d, into: str = "Linear") -> None:
    """Raise ``ValueError``, saying what to do, unless ``bn`` is an eval-mode ``kind`` with running statistics: a
    fixed affine map, which can be folded into an ``into`` layer."""
    if not isinstance(bn, kind):
        raise ValueError(f"bn must be an nn.{kind.__name__}; got {type(bn).__name__}.")
    if bn.training:
        raise ValueError(
            f"bn is in train mode: it normalises with each batch's own statistics, which no fixed {into} layer can "
            "reproduce. Call model.eval() (or bn.eval()) before folding."
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "bn has no running statistics (track_running_stats=False): it normalises with batch statistics even "
            "in eval mode, so there is nothing fixed to fold. Keep this BatchNorm layer, or train with "
            "track_running_stats=True."
        )


def _children(model: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every entry of ``model``, nested ``nn.Sequential`` blocks expanded in place, a module
    that appears twice listed twice (``named_children`` lists it once)."""
    entries = []
    for name, layer in model.named_modules(remove_duplicate=False):
        if name and "." not in name:
            if isinstance(layer, nn.Sequential):
                entries += [(f"{name}.{inner}", m) for inner, m in _children(layer)]
            else:
                entries.append((name, layer))
    return entries


def _passes_through(layer: nn.Module) -> bool:
    return isinstance(layer, PASS_THROUGH) and not (isinstance(layer, (nn.Dropout, nn.AlphaDropout)) and layer.training)


def fold_batchnorms(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` with every eval-mode ``BatchNorm1d`` folded into a Linear layer next to it.

    Each BatchNorm folds into the Linear layer before it (``fold_batchnorm``) when only ``Dropout`` or ``Identity``
    layers lie between them, else into the Linear layer after it (``fold_into_next``) when only such layers lie
    between those. ``model`` must be in eval mode (``model.eval()``); nested ``nn.Sequential`` blocks are expanded,
    so the result is one flat ``nn.Sequential``. Every other layer is copied (a module used twice stays one shared
    copy), and ``model`` itself is not changed. The result holds no BatchNorm layer and, in eval mode, computes
    what ``model`` computes (up to float rounding).

    Raises ``ValueError`` if ``model`` is not an ``nn.Sequential``, or if a BatchNorm layer cannot be folded:
    in train mode, without running statistics, of the wrong size, with a nonlinear layer (a ReLU, ...) between it
    and the Linear layers on both sides, or inside a module that is not an ``nn.Sequential``.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential; got {type(model).__name__}.")
    memo: dict = {}  # one deep-copy memo, so that a module used twice stays one module
    out: list[nn.Module] = []
    pending: list[tuple[str, nn.Module]] = []  # BatchNorm layers waiting for the next Linear layer
    children = _children(model)
    for i, (name, layer) in enumerate(children):
        if isinstance(layer, _BatchNorm):
            before = next((m for m in reversed(out) if not _passes_through(m)), None)
            if not pending and isinstance(before, nn.Linear):
                index = max(j for j, m in enumerate(out) if m is before)
                out[index] = fold_batchnorm(before, layer)
                continue
            check_fixed(layer)
            pending.append((name, layer))
            continue
        if pending:
            if isinstance(layer, nn.Linear):
                linear = copy.deepcopy(layer, memo)
                for _, bn in reversed(pending):
                    linear = fold_into_next(bn, linear)
                out.append(linear)
                pending = []
                continue
            if not _passes_through(layer):
                raise _unfoldable(pending[0], children, layer)
        elif batchnorm_layers(layer):
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) contains BatchNorm inside a module that is not an "
                "nn.Sequential; fold its layers with fold_batchnorm or fold_into_next yourself."
            )
        out.append(copy.deepcopy(layer, memo))
    if pending:
        raise _unfoldable(pending[0], children, None)
    folded = nn.Sequential(*out)
    folded.train(model.training)
    return folded


def _unfoldable(entry: tuple[str, nn.Module], children: list, blocker: nn.Module | None) -> ValueError:
    name, bn = entry
    index = next(i for i, (n, m) in enumerate(children) if n == name)
    before = next((type(m).__name__ for _, m in reversed(children[:index]) if not _passes_through(m)),
                  "the start of the model")
    after = type(blocker).__name__ if blocker is not None else "the end of the model"
    return ValueError(
        f"layer {name!r} ({type(bn).__name__}) cannot be folded: it follows {before} and is followed by {after}, "
        "so no nn.Linear sits next to it on either side (only Dropout or Identity may lie between). Keep this "
        "BatchNorm in the model, or place it directly before or after a Linear layer to fold it."
    )


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers (1d, 2d, 3d) ``model`` holds, at any depth."""
    return len(batchnorm_layers(model))


# --- Conv2d + BatchNorm2d ------------------------------------------------------------------------------------------
#
# The same fold into the layer before, one output channel at a time: in eval mode BatchNorm2d scales and shifts
# channel c of the Conv's output by the same numbers at every position, so it folds into the Conv's filter for
# channel c (all its input channels and kernel positions) and into its bias:
#
#     W'[c] = gamma_c / sigma_c * W[c]                     (W of shape (C_out, C_in / groups, kH, kW))
#     b'[c] = gamma_c * (b_c - mu_c) / sigma_c + beta_c


def fold_conv_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` that computes ``bn(conv(x))`` for an eval-mode ``bn``; the inputs are not changed.

    ``W'[c] = gamma_c / sigma_c * W[c]`` and ``b' = gamma * (b - mu) / sigma + beta`` per output channel ``c``;
    stride, padding, dilation and groups are kept. The arithmetic runs in float64 and the result has ``conv``'s
    dtype and device; it always has a bias. What ``torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)`` computes.

    Raises ``ValueError`` if ``bn`` is in train mode, has no running statistics, or has a different number of
    channels than ``conv`` has outputs.
    """
    check_conv_foldable(conv, bn)
    scale, shift = _affine_of(bn)
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    folded = copy.deepcopy(conv)
    folded.bias = nn.Parameter(torch.empty(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype))
    with torch.no_grad():
        folded.weight.copy_(scale.view(-1, 1, 1, 1) * weight)
        folded.bias.copy_(scale * bias + shift)
    return folded


def check_conv_foldable(conv: nn.Module, bn: nn.Module) -> None:
    """Raise ``ValueError``, saying what to do, unless ``bn`` can be folded into ``conv``."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"conv must be an nn.Conv2d; got {type(conv).__name__}.")
    check_fixed(bn, nn.BatchNorm2d, "Conv")
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"conv has {conv.out_channels} output channels but bn has num_features={bn.num_features}; they must be "
            "equal: fold each BatchNorm2d into the Conv2d layer directly before it."
        )


def fold_conv_batchnorms(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` (an ``nn.Sequential`` in eval mode, e.g. from ``bnlab.models.build_cnn``) with every
    ``Conv2d -> BatchNorm2d`` pair replaced by one folded ``nn.Conv2d``. Nested ``nn.Sequential`` blocks are
    expanded, so the result is one flat ``nn.Sequential``; every other layer is copied (a module used twice stays
    one shared copy), and ``model`` itself is not changed.

    Raises ``ValueError`` if ``model`` is not an ``nn.Sequential``, or if a BatchNorm layer cannot be folded (in
    train mode, without running statistics, not directly after a Conv2d layer, e.g. after the ReLU, or inside a
    module that is not an ``nn.Sequential``).
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential; got {type(model).__name__}.")
    memo: dict = {}
    out: list[nn.Module] = []
    children = _children(model)
    for i, (name, layer) in enumerate(children):
        if isinstance(layer, _BatchNorm):
            before = children[i - 1][1] if i > 0 else None
            if not isinstance(before, nn.Conv2d):
                raise ValueError(
                    f"layer {name!r} ({type(layer).__name__}) follows "
                    f"{type(before).__name__ if before is not None else 'the start of the model'}, not an nn.Conv2d: "
                    "only Conv2d -> BatchNorm2d pairs fold (BatchNorm after the ReLU cannot move through it)."
                )
            out[-1] = fold_conv_batchnorm(before, layer)
            continue
        if batchnorm_layers(layer):
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) contains BatchNorm inside a module that is not an "
                "nn.Sequential; fold its pairs with fold_conv_batchnorm yourself."
            )
        out.append(copy.deepcopy(layer, memo))
    folded = nn.Sequential(*out)
    folded.train(model.training)
    return folded

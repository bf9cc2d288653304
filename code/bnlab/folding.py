"""Folding BatchNorm into the Linear layer before it, for inference.

In eval mode ``BatchNorm1d`` uses its running statistics, so it is a fixed affine map per feature. Applied after
``z = W x + b`` it gives::

    y = gamma * (z - mu) / sigma + beta,        sigma = sqrt(running_var + eps),  mu = running_mean
      = (gamma / sigma * W) x + gamma * (b - mu) / sigma + beta

which is one Linear layer with::

    W' = gamma / sigma * W                      (row j of W scaled by gamma_j / sigma_j)
    b' = gamma * (b - mu) / sigma + beta        (b = 0 where the Linear layer has no bias)

The folded layer always has a bias, even when the original Linear had none: the bias comes back at inference.
In train mode BatchNorm normalises with the statistics of each batch, which no fixed Linear layer can reproduce,
so only eval-mode BatchNorm with running statistics folds.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fold_batchnorm(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """A new ``nn.Linear`` that computes ``bn(linear(x))`` for an eval-mode ``bn``; the inputs are not changed.

    ``W' = gamma / sigma * W`` and ``b' = gamma * (b - mu) / sigma + beta`` with ``sigma = sqrt(running_var + eps)``
    and ``mu = running_mean`` (``gamma = 1, beta = 0`` where ``bn.affine`` is False). The arithmetic runs in float64
    and the result has ``linear``'s dtype and device. The new layer always has a bias.

    Raises ``ValueError`` if ``bn`` is in train mode, has no running statistics (``track_running_stats=False``),
    or has a different number of features than ``linear`` has outputs.
    """
    check_foldable(linear, bn)
    weight = linear.weight.detach().double()
    bias = linear.bias.detach().double() if linear.bias is not None else torch.zeros_like(weight[:, 0])
    mu = bn.running_mean.detach().double()
    sigma = torch.sqrt(bn.running_var.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mu)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mu)
    scale = gamma / sigma

    folded = nn.Linear(
        linear.in_features, linear.out_features, bias=True, device=linear.weight.device, dtype=linear.weight.dtype
    )
    with torch.no_grad():
        folded.weight.copy_(scale[:, None] * weight)
        folded.bias.copy_(scale * (bias - mu) + beta)
    folded.train(linear.training)
    return folded


def check_foldable(linear: nn.Module, bn: nn.Module) -> None:
    """Raise ``ValueError``, saying what to do, unless ``bn`` can be folded into ``linear``."""
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"linear must be an nn.Linear; got {type(linear).__name__}.")
    if not isinstance(bn, nn.BatchNorm1d):
        raise ValueError(f"bn must be an nn.BatchNorm1d; got {type(bn).__name__}.")
    if bn.training:
        raise ValueError(
            "bn is in train mode: it normalises with each batch's own statistics, which no fixed Linear layer can "
            "reproduce. Call model.eval() (or bn.eval()) before folding."
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "bn has no running statistics (track_running_stats=False): it normalises with batch statistics even "
            "in eval mode, so there is nothing fixed to fold. Keep this BatchNorm layer, or train with "
            "track_running_stats=True."
        )
    if linear.out_features != bn.num_features:
        raise ValueError(
            f"linear has {linear.out_features} output features but bn has num_features={bn.num_features}; "
            "they must be equal: fold each BatchNorm1d into the Linear layer directly before it."
        )


def fold_batchnorms(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` with every ``Linear -> BatchNorm1d`` pair replaced by one folded ``nn.Linear``.

    ``model`` must be in eval mode (``model.eval()``). Nested ``nn.Sequential`` blocks are folded too; every other
    layer is copied unchanged, and ``model`` itself is not changed. The result holds no BatchNorm layer and, in
    eval mode, computes what ``model`` computes (up to float rounding).

    Raises ``ValueError`` if ``model`` is not an ``nn.Sequential``, or if a BatchNorm layer cannot be folded:
    in train mode, without running statistics, of the wrong size, or not directly after a Linear layer.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential; got {type(model).__name__}.")
    layers: list[nn.Module] = []
    children = list(model.named_children())
    i = 0
    while i < len(children):
        name, layer = children[i]
        following = children[i + 1][1] if i + 1 < len(children) else None
        if isinstance(layer, nn.Linear) and isinstance(following, nn.modules.batchnorm._BatchNorm):
            layers.append(fold_batchnorm(layer, following))
            i += 2
            continue
        if isinstance(layer, nn.Sequential):
            layers.append(fold_batchnorms(layer))
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            before = type(children[i - 1][1]).__name__ if i > 0 else "the start of the model"
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) follows {before}, not an nn.Linear: only "
                "Linear -> BatchNorm1d pairs fold. Place BatchNorm directly after the Linear layer to fold it."
            )
        elif any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layer.modules()):
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) contains BatchNorm inside a module that is not an "
                "nn.Sequential; fold its Linear -> BatchNorm1d pairs with fold_batchnorm yourself."
            )
        else:
            layers.append(copy.deepcopy(layer))
        i += 1
    folded = nn.Sequential(*layers)
    folded.train(model.training)
    return folded


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers (1d, 2d, 3d) ``model`` holds, at any depth."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --- Conv2d + BatchNorm2d ------------------------------------------------------------------------------------------
#
# The same fold, one output channel at a time: BatchNorm2d scales and shifts channel c of the Conv's output by
# gamma_c / sigma_c and beta_c - gamma_c * mu_c / sigma_c, at every position, so it folds into the Conv's filter for
# channel c (all its input channels and kernel positions) and into its bias:
#
#     W'[c] = gamma_c / sigma_c * W[c]                     (W of shape (C_out, C_in, kH, kW))
#     b'[c] = gamma_c * (b_c - mu_c) / sigma_c + beta_c


def fold_conv_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` that computes ``bn(conv(x))`` for an eval-mode ``bn``; the inputs are not changed.

    ``W'[c] = gamma_c / sigma_c * W[c]`` and ``b' = gamma * (b - mu) / sigma + beta`` with
    ``sigma = sqrt(running_var + eps)`` and ``mu = running_mean``, per output channel ``c``; stride, padding,
    dilation and groups are kept. The arithmetic runs in float64 and the result has ``conv``'s dtype and device.
    The new layer always has a bias. What ``torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)`` computes.

    Raises ``ValueError`` if ``bn`` is in train mode, has no running statistics, or has a different number of
    channels than ``conv`` has outputs.
    """
    check_conv_foldable(conv, bn)
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
    mu = bn.running_mean.detach().double()
    sigma = torch.sqrt(bn.running_var.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mu)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mu)
    scale = gamma / sigma

    folded = copy.deepcopy(conv)
    folded.bias = nn.Parameter(torch.empty(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype))
    with torch.no_grad():
        folded.weight.copy_(scale.view(-1, 1, 1, 1) * weight)
        folded.bias.copy_(scale * (bias - mu) + beta)
    return folded


def check_conv_foldable(conv: nn.Module, bn: nn.Module) -> None:
    """Raise ``ValueError``, saying what to do, unless ``bn`` can be folded into ``conv``."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"conv must be an nn.Conv2d; got {type(conv).__name__}.")
    if not isinstance(bn, nn.BatchNorm2d):
        raise ValueError(f"bn must be an nn.BatchNorm2d; got {type(bn).__name__}.")
    if bn.training:
        raise ValueError(
            "bn is in train mode: it normalises with each batch's own statistics, which no fixed Conv layer can "
            "reproduce. Call model.eval() (or bn.eval()) before folding."
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "bn has no running statistics (track_running_stats=False): it normalises with batch statistics even "
            "in eval mode, so there is nothing fixed to fold. Keep this BatchNorm layer."
        )
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"conv has {conv.out_channels} output channels but bn has num_features={bn.num_features}; they must be "
            "equal: fold each BatchNorm2d into the Conv2d layer directly before it."
        )


def fold_conv_batchnorms(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` (a flat ``nn.Sequential`` in eval mode, e.g. from ``bnlab.models.build_cnn``) with every
    ``Conv2d -> BatchNorm2d`` pair replaced by one folded ``nn.Conv2d``; every other layer is copied unchanged.

    Raises ``ValueError`` if ``model`` is not an ``nn.Sequential``, or if a BatchNorm layer cannot be folded (in
    train mode, without running statistics, or not directly after a Conv2d layer, e.g. after the ReLU).
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential; got {type(model).__name__}.")
    layers: list[nn.Module] = []
    children = list(zip(model._modules, model))  # not named_children(): it skips a module used twice
    i = 0
    while i < len(children):
        name, layer = children[i]
        following = children[i + 1][1] if i + 1 < len(children) else None
        if isinstance(layer, nn.Conv2d) and isinstance(following, nn.modules.batchnorm._BatchNorm):
            layers.append(fold_conv_batchnorm(layer, following))
            i += 2
            continue
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            before = type(children[i - 1][1]).__name__ if i > 0 else "the start of the model"
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) follows {before}, not an nn.Conv2d: only Conv2d -> "
                "BatchNorm2d pairs fold (BatchNorm after the ReLU cannot move through it)."
            )
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layer.modules()):
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) contains BatchNorm inside it; fold_conv_batchnorms only "
                "folds a flat nn.Sequential. Fold its pairs with fold_conv_batchnorm yourself."
            )
        layers.append(copy.deepcopy(layer))
        i += 1
    folded = nn.Sequential(*layers)
    folded.train(model.training)
    return folded

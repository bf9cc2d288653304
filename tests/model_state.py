"""Helpers for tests that compare a model's state before and after a computation. Not a test module."""

from __future__ import annotations

import torch
from torch import nn


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two states hold the same names and bitwise the same tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def with_eps(model: nn.Module, eps: float) -> nn.Module:
    """``model`` with every BatchNorm1d's ``eps`` set to ``eps``."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.eps = eps
    return model

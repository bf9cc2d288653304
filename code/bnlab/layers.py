"""What every module that looks inside a model needs: its BatchNorm layers, its device, each module's mode flag.

``model.train()`` and ``model.eval()`` set the ``training`` flag of the model *and of every submodule*, so a model
whose BatchNorm layers alone are in eval mode (frozen for fine-tuning) is not described by ``model.training``
alone. Code that switches a model's mode for a while saves every module's flag and restores each one:
``preserved_modes``. ``called_layers`` lists the layers one forward pass runs, in the order it runs them (where a
block puts BatchNorm is an order of calls, which printing the block does not always show).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def check_module(model) -> None:
    """``ValueError`` unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """``(name, layer)`` for every BatchNorm layer of ``model`` (``BatchNorm1d``, ``2d``, ``3d``,
    ``SyncBatchNorm``, ...), in the order of ``model.named_modules()``, with or without running statistics
    (filter on ``layer.track_running_stats`` where that matters). A layer used twice is listed once."""
    check_module(model)
    return [(name, module) for name, module in model.named_modules() if isinstance(module, _BatchNorm)]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model that has neither)."""
    check_module(model)
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def mode_flags(model: nn.Module) -> tuple[bool, ...]:
    """Every module's ``training`` flag, in the order of ``model.modules()``."""
    check_module(model)
    return tuple(module.training for module in model.modules())


@contextmanager
def preserved_modes(model: nn.Module):
    """Inside the block, switch modes at will; on exit (also on an error) every module's ``training`` flag is
    what it was before, module by module."""
    check_module(model)
    flags = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@torch.no_grad()
def called_layers(model: nn.Module, *inputs) -> list[str]:
    """The class names of ``model``'s innermost modules (those without submodules) in the order one forward pass
    on ``inputs`` calls them; a module called twice (a ReLU reused in a residual block) appears twice.

    The pass runs in eval mode without gradients, so no BatchNorm buffer changes; every module's mode is restored.
    Operations that are not modules (``x + identity``, ``torch.flatten``) do not appear.
    """
    check_module(model)
    if not inputs:
        raise ValueError("inputs is empty: give the input(s) of one forward pass, e.g. torch.randn(2, 784).")
    calls: list[str] = []
    leaves = [module for module in model.modules() if next(module.children(), None) is None]
    handles = [leaf.register_forward_hook(lambda module, args, output: calls.append(type(module).__name__))
               for leaf in leaves]
    try:
        with preserved_modes(model):
            model.eval()(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls

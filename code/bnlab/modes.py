"""Train mode and eval mode: evaluating a model in either mode without side effects, and freezing BatchNorm.

``model.train()`` and ``model.eval()`` (which is ``model.train(False)``) set the ``training`` flag of the model and
of every submodule. BatchNorm reads it: in train mode it normalises with the statistics of the current batch and
updates its running buffers, ``running = (1 - momentum) * running + momentum * batch_statistic``; in eval mode it
normalises with the running buffers and changes nothing. Dropout reads it too.

Two things here:

* ``accuracy_in_mode``: test accuracy with the model in train or eval mode, at a chosen evaluation batch size,
  that leaves the model exactly as it found it. A train-mode forward pass *updates the running statistics*, even
  under ``torch.no_grad()`` or ``torch.inference_mode()``; a careless "what if I forget ``eval()``" experiment
  therefore damages the model it measures. ``preserved_state`` is the context manager that prevents it.
* ``freeze_batchnorm``: put the BatchNorm layers in eval mode for fine-tuning so that they *stay* there when the
  training loop calls ``model.train()`` (as every loop does, and as a plain ``bn.eval()`` does not survive).
  ``unfreeze_batchnorm`` undoes it; ``frozen_batchnorm`` is the same pair as a ``with`` block.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .data import Split
from .layers import batchnorm_layers, check_module, model_device, preserved_modes

MODES = ("train", "eval")


# --- evaluating in a mode, without side effects ----------------------------------------------------------------


@contextmanager
def preserved_state(model: nn.Module):
    """Inside the block, anything goes; on exit every submodule's ``training`` flag and every buffer (BatchNorm's
    ``running_mean``, ``running_var``, ``num_batches_tracked``) hold their values from before the block again.

    Flags are restored module by module, so a model whose BatchNorm layers alone are in eval mode comes back
    that way. Buffers are restored by name into the tensor that holds each one on exit, so a block that moves the
    model to another dtype or device (``model.double()``) keeps that dtype or device and gets the values back.
    Parameters are not saved: the block must not train.
    """
    check_module(model)
    saved = [
        (module, name, buffer.detach().clone())
        for module in model.modules()
        for name, buffer in module.named_buffers(recurse=False)
    ]
    with preserved_modes(model):
        try:
            yield model
        finally:
            with torch.no_grad():
                for module, name, value in saved:
                    current = getattr(module, name, None)
                    if isinstance(current, torch.Tensor):
                        current.copy_(value)


def evaluation_batches(n: int, batch_size: int, *, mode: str) -> list[slice]:
    """Consecutive slices of ``batch_size`` examples covering ``range(n)``; the last may be shorter.

    In train mode a last batch of a single example joins the batch before it: BatchNorm cannot take the variance
    of one value, and PyTorch raises ``ValueError`` rather than try.
    """
    starts = list(range(0, n, batch_size))
    if mode == "train" and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, [*starts[1:], n])]


def check_mode_and_batch_size(mode: str, batch_size: int) -> None:
    """``ValueError`` unless ``mode`` is ``"train"`` or ``"eval"`` and ``batch_size`` suits it (>= 2 in train mode)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    smallest = 2 if mode == "train" else 1
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= smallest):
        why = " (BatchNorm needs more than one value per channel when training)" if mode == "train" else ""
        raise ValueError(f"batch_size must be an integer >= {smallest} in {mode} mode{why}; got {batch_size!r}.")


def outputs_in_mode(model: nn.Module, inputs: torch.Tensor, *, mode: str = "eval", batch_size: int = 1_000) -> torch.Tensor:
    """The model's outputs for ``inputs``, computed in ``mode`` (``"train"`` or ``"eval"``) in consecutive batches
    of ``batch_size`` rows, in order, under ``torch.inference_mode()``, and concatenated.

    The model comes back as it was: its mode (module by module) and its buffers are restored, so a train-mode pass
    does not pollute the running statistics. Layers frozen with ``freeze_batchnorm`` stay in eval mode even for
    ``mode="train"``. Dropout, if any, is active in train mode and draws from PyTorch's global generator. The
    inputs are moved to the model's device. In train mode ``batch_size`` must be at least 2, and a last batch of a
    single row joins the batch before it (``evaluation_batches``).
    """
    check_mode_and_batch_size(mode, batch_size)
    smallest = 2 if mode == "train" else 1
    if len(inputs) < smallest:
        raise ValueError(f"inputs must hold at least {smallest} example(s) in {mode} mode; they hold {len(inputs)}.")
    inputs = inputs.to(model_device(model))
    with preserved_state(model), torch.inference_mode():
        model.train(mode == "train")
        return torch.cat([model(inputs[batch]) for batch in evaluation_batches(len(inputs), batch_size, mode=mode)])


def accuracy_in_mode(model: nn.Module, split: Split, *, mode: str = "eval", batch_size: int = 1_000) -> float:
    """Accuracy in percent of ``model`` on ``split``, evaluated in ``mode`` (``"train"`` or ``"eval"``) in
    consecutive batches of ``batch_size`` examples, in the split's order. The model's mode and buffers are left
    exactly as they were (see ``outputs_in_mode``, which does the work)."""
    check_mode_and_batch_size(mode, batch_size)
    predicted = outputs_in_mode(model, split.images, mode=mode, batch_size=batch_size).argmax(dim=1)
    return 100.0 * (predicted == split.labels.to(predicted.device)).sum().item() / len(split)


def mode_dependent_layers(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Names of the leaf modules of ``model`` whose output differs between train and eval mode, each fed the input
    it receives when ``model`` runs ``inputs`` in eval mode. Dropout layers are seeded alike in both modes, so only
    the mode differs. The model's mode and buffers are restored afterwards. ``inputs`` needs at least 2 rows
    (BatchNorm in train mode needs a batch).
    """
    if len(inputs) < 2:
        raise ValueError(f"inputs must hold at least 2 examples (a batch for train mode); they hold {len(inputs)}.")
    leaves = {module: name for name, module in model.named_modules() if not list(module.children())}
    seen: dict[nn.Module, torch.Tensor] = {}

    def remember_input(module, args, output):
        seen.setdefault(module, args[0])  # returns None: the output is left as it is

    hooks = [leaf.register_forward_hook(remember_input) for leaf in leaves]
    try:
        outputs_in_mode(model, inputs, mode="eval", batch_size=len(inputs))
    finally:
        for hook in hooks:
            hook.remove()
    differ = []
    with preserved_state(model), torch.inference_mode():
        for leaf, x in seen.items():
            torch.manual_seed(0)
            in_train = leaf.train()(x)
            torch.manual_seed(0)
            in_eval = leaf.eval()(x)
            if in_train.shape != in_eval.shape or not torch.equal(in_train, in_eval):
                differ.append(leaves[leaf])
    return differ


def accuracy_by_batch_size(
    model: nn.Module,
    split: Split,
    *,
    batch_sizes: tuple[int, ...] = (2, 8, 64, 1_000),
    modes: tuple[str, ...] = MODES,
) -> dict[str, dict[int, float]]:
    """``{mode: {batch_size: accuracy_in_mode(...)}}`` for every mode and evaluation batch size."""
    if not batch_sizes:
        raise ValueError("batch_sizes is empty: give at least one evaluation batch size.")
    if not modes or any(mode not in MODES for mode in modes):
        raise ValueError(f"modes must be a non-empty selection of {MODES}; got {modes!r}.")
    return {
        mode: {size: accuracy_in_mode(model, split, mode=mode, batch_size=size) for size in batch_sizes}
        for mode in modes
    }


# --- freezing BatchNorm for fine-tuning --------------------------------------------------------------------------


class _StayInEval:
    """Installed as a frozen BatchNorm layer's own ``train``: whatever mode is asked for, the layer stays in eval
    mode. It also remembers the affine parameters' ``requires_grad`` from before the freeze, for unfreezing.

    ``nn.Module.train`` sets a module's flag and then calls ``child.train(mode)`` on every child, so an attribute
    on the layer itself is what ``model.train()`` reaches. It survives ``copy.deepcopy`` and pickling."""

    def __init__(self, layer: _BatchNorm, requires_grad: dict[str, bool]):
        self.layer = layer
        self.requires_grad = requires_grad

    def __call__(self, mode: bool = True) -> _BatchNorm:
        self.layer.training = False
        return self.layer


def is_frozen(layer: nn.Module) -> bool:
    """Whether ``layer`` was frozen by ``freeze_batchnorm`` (and not unfrozen since)."""
    return isinstance(layer.__dict__.get("train"), _StayInEval)


def freeze_batchnorm(model: nn.Module, *, train_affine: bool = True) -> list[_BatchNorm]:
    """Put every BatchNorm layer of ``model`` in eval mode for good: their running statistics stop changing and
    they normalise with them, ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``, also after
    ``model.train()``. Other layers (Linear, Dropout, ...) follow ``model.train()`` / ``model.eval()`` as usual.

    ``train_affine=False`` also sets ``requires_grad=False`` on gamma (``weight``) and beta (``bias``), so the
    optimiser leaves them alone; ``True`` (the default) keeps them trainable. Freezing again is allowed (it
    applies the new ``train_affine``); ``unfreeze_batchnorm`` restores the state from before the first freeze.
    Returns the frozen layers. Raises ``ValueError`` if the model has no BatchNorm layer.
    """
    if not isinstance(train_affine, bool):
        raise ValueError(f"train_affine must be True or False; got {train_affine!r}.")
    layers = [layer for _, layer in batchnorm_layers(model)]
    if not layers:
        raise ValueError("model has no BatchNorm layer to freeze.")
    for layer in layers:
        affine = {name: p for name, p in (("weight", layer.weight), ("bias", layer.bias)) if p is not None}
        record = layer.__dict__.get("train")
        if not isinstance(record, _StayInEval):
            record = _StayInEval(layer, {name: p.requires_grad for name, p in affine.items()})
            layer.train = record
        for name, p in affine.items():
            p.requires_grad_(record.requires_grad[name] and train_affine)
        layer.training = False
    return layers


def unfreeze_batchnorm(model: nn.Module) -> list[_BatchNorm]:
    """Undo ``freeze_batchnorm``: the layers follow ``train()`` / ``eval()`` again and are put in the model's
    current mode (``model.training``); gamma and beta get back their ``requires_grad``. Returns the layers that
    were frozen (an empty list if none was)."""
    thawed = [layer for _, layer in batchnorm_layers(model) if is_frozen(layer)]
    for layer in thawed:
        record = layer.__dict__.pop("train")
        for name, flag in record.requires_grad.items():
            getattr(layer, name).requires_grad_(flag)
        layer.training = model.training
    return thawed


@contextmanager
def frozen_batchnorm(model: nn.Module, *, train_affine: bool = True):
    """``freeze_batchnorm`` for the duration of a ``with`` block, ``unfreeze_batchnorm`` after it (also on error).

    Example::

        with frozen_batchnorm(model):
            train(model, data, TrainConfig(epochs=3, lr=0.01))   # calls model.train(); BatchNorm stays in eval
    """
    layers = freeze_batchnorm(model, train_affine=train_affine)
    try:
        yield layers
    finally:
        unfreeze_batchnorm(model)

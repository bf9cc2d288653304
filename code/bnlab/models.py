"""The course's models, built from configurations: the lecture's MLP (``MLPConfig``) and a small CNN
(``CNNConfig``); ``build_model`` builds either.

The MLP
-------

With the defaults it is the lecture's reference model::

    Flatten -> Linear(784, 75, bias=False) -> BatchNorm1d(75) -> ReLU
            -> Linear(75, 45, bias=False)  -> BatchNorm1d(45) -> ReLU -> Linear(45, 10)

``placement`` says where BatchNorm goes in each hidden block:

* ``"before"`` the activation: Linear -> BatchNorm1d -> ReLU [-> Dropout]  (Ioffe & Szegedy 2015)
* ``"after"`` the activation:  Linear -> ReLU -> BatchNorm1d [-> Dropout]
* ``"none"``:                  Linear -> ReLU [-> Dropout]

The CNN
-------

One block per entry of ``CNNConfig.channels``, then a Linear head; with the defaults::

    Conv2d(1, 8, 3, padding=1, bias=False)   -> BatchNorm2d(8)  -> ReLU -> MaxPool2d(2)    28x28 -> 14x14
    Conv2d(8, 16, 3, padding=1, bias=False)  -> BatchNorm2d(16) -> ReLU -> MaxPool2d(2)    14x14 -> 7x7
    Conv2d(16, 32, 3, padding=1, bias=False) -> BatchNorm2d(32) -> ReLU -> MaxPool2d(2)    7x7   -> 3x3
    Flatten -> Linear(32 * 3 * 3, 10)

``norm`` picks the normalisation layer of every block: ``"batch"`` (``BatchNorm2d``: statistics per channel over
the batch and the image, N, H, W), ``"group"`` (``GroupNorm(groups, C)``: per example, over the channels of a group
and H, W), ``"layer"`` (``GroupNorm(1, C)``: per example, over all channels and H, W, which is what
``nn.LayerNorm([C, H, W])`` normalises over, with one gamma and beta per channel instead of per value) or
``"none"``. ``placement`` puts it before or after the ReLU, as in the MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

PLACEMENTS = ("none", "before", "after")


def is_integer(value) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an ``int`` in Python, but never a size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class MLPConfig:
    """What the MLP looks like.

    Attributes:
        hidden: sizes of the hidden layers.
        placement: where BatchNorm goes: ``"none"``, ``"before"`` or ``"after"`` the ReLU.
        bias: whether the hidden Linear layers have a bias. ``None`` decides per layer: no bias where a BatchNorm
            directly follows the Linear layer (the bias would be redundant), a bias everywhere else. The output
            layer always has one.
        dropout: dropout probability at the end of each hidden block; 0 leaves Dropout out.
        init_std: if set, every Linear weight starts from N(0, init_std^2) and every bias from 0 (the lecture's
            "bad initialisation" uses 0.001); ``None`` keeps PyTorch's default initialisation.
    """

    hidden: tuple[int, ...] = (75, 45)
    placement: str = "before"
    bias: bool | None = None
    dropout: float = 0.0
    init_std: float | None = None
    in_features: int = 784
    num_classes: int = 10

    def __post_init__(self):
        if isinstance(self.hidden, (str, bytes)) or not hasattr(self.hidden, "__iter__"):
            raise ValueError(
                f"MLPConfig.hidden must be a sequence of positive integers, e.g. (75, 45) or (75,); got {self.hidden!r}."
            )
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if self.placement not in PLACEMENTS:
            raise ValueError(f"MLPConfig.placement must be one of {PLACEMENTS}; got {self.placement!r}.")
        if not self.hidden or not all(is_integer(h) and h > 0 for h in self.hidden):
            raise ValueError(f"MLPConfig.hidden must be one or more positive integers; got {self.hidden!r}.")
        if not isinstance(self.bias, (bool, type(None))):
            raise ValueError(f"MLPConfig.bias must be True, False or None (automatic); got {self.bias!r}.")
        if not (is_finite_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"MLPConfig.dropout must be a probability in [0, 1); got {self.dropout!r}.")
        if self.init_std is not None and not (is_finite_number(self.init_std) and self.init_std > 0):
            raise ValueError(f"MLPConfig.init_std must be None or a finite positive number; got {self.init_std!r}.")
        for name in ("in_features", "num_classes"):
            value = getattr(self, name)
            if not (is_integer(value) and value > 0):
                raise ValueError(f"MLPConfig.{name} must be a positive integer; got {value!r}.")

    @property
    def hidden_bias(self) -> bool:
        """Whether the hidden Linear layers get a bias, once ``None`` is resolved."""
        return self.placement != "before" if self.bias is None else self.bias


def hidden_block(n_in: int, n_out: int, config: MLPConfig) -> list[nn.Module]:
    """One hidden block's layers, in the order ``config.placement`` asks for."""
    linear = nn.Linear(n_in, n_out, bias=config.hidden_bias)
    if config.placement == "before":
        layers = [linear, nn.BatchNorm1d(n_out), nn.ReLU()]
    elif config.placement == "after":
        layers = [linear, nn.ReLU(), nn.BatchNorm1d(n_out)]
    else:
        layers = [linear, nn.ReLU()]
    if config.dropout > 0:
        layers.append(nn.Dropout(config.dropout))
    return layers


def build_mlp(config: MLPConfig = MLPConfig()) -> nn.Sequential:
    """The MLP that ``config`` describes, as an ``nn.Sequential`` (print it to see every layer)."""
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = (config.in_features, *config.hidden)
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += hidden_block(n_in, n_out, config)
    layers.append(nn.Linear(sizes[-1], config.num_classes))
    model = nn.Sequential(*layers)
    if config.init_std is not None:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=config.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return model


NORMS = ("batch", "group", "layer", "none")
CNN_PLACEMENTS = ("before", "after")


@dataclass(frozen=True)
class CNNConfig:
    """What the CNN looks like.

    Attributes:
        channels: output channels of each Conv block (one block per entry; each block halves the image size,
            rounding down).
        norm: the normalisation layer in every block: ``"batch"`` (``BatchNorm2d``), ``"group"``
            (``GroupNorm(groups, C)``), ``"layer"`` (``GroupNorm(1, C)``, LayerNorm-style) or ``"none"``.
        placement: ``"before"`` or ``"after"`` the ReLU (Conv -> norm -> ReLU, or Conv -> ReLU -> norm); no
            effect with ``norm="none"``.
        bias: whether the Conv layers have a bias. ``None`` decides per layer: no bias where a ``BatchNorm2d``
            directly follows the Conv (it subtracts every per-channel constant, so the bias would be redundant),
            a bias everywhere else. (GroupNorm and LayerNorm-style normalisation subtract one mean per group of
            channels, which does not remove a bias that differs between the channels of a group: they keep it.)
        groups: number of groups for ``norm="group"``; it must divide every entry of ``channels``.
        kernel_size: odd size of the square Conv kernels (padding keeps the image size).
    """

    channels: tuple[int, ...] = (8, 16, 32)
    norm: str = "batch"
    placement: str = "before"
    bias: bool | None = None
    groups: int = 4
    kernel_size: int = 3
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10

    def __post_init__(self):
        if isinstance(self.channels, (list, tuple)):
            object.__setattr__(self, "channels", tuple(self.channels))
        channels = self.channels
        if not (isinstance(channels, tuple) and channels and all(is_integer(c) and c > 0 for c in channels)):
            raise ValueError(f"CNNConfig.channels must be one or more positive integers, e.g. (8, 16); got {channels!r}.")
        if self.norm not in NORMS:
            raise ValueError(f"CNNConfig.norm must be one of {NORMS}; got {self.norm!r}.")
        if self.placement not in CNN_PLACEMENTS:
            raise ValueError(
                f"CNNConfig.placement must be one of {CNN_PLACEMENTS}; got {self.placement!r}. "
                "To leave normalisation out, use norm='none'."
            )
        if not (self.bias is None or isinstance(self.bias, bool)):
            raise ValueError(f"CNNConfig.bias must be True, False or None (automatic); got {self.bias!r}.")
        for name in ("groups", "kernel_size", "in_channels", "image_size", "num_classes"):
            if not (is_integer(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"CNNConfig.{name} must be a positive integer; got {getattr(self, name)!r}.")
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"CNNConfig.kernel_size must be odd (so that padding keeps the image size); got {self.kernel_size}."
            )
        if self.norm == "group" and any(c % self.groups for c in self.channels):
            raise ValueError(
                f"CNNConfig.groups={self.groups} must divide every entry of channels={self.channels} for "
                "norm='group'; pick a divisor of all of them."
            )
        if self.image_size >> len(self.channels) < 1:
            raise ValueError(
                f"CNNConfig.image_size={self.image_size} is too small for {len(self.channels)} blocks (each halves "
                "it); use fewer channels entries or larger images."
            )

    @property
    def conv_bias(self) -> bool:
        """Whether the Conv layers get a bias, once ``None`` is resolved."""
        if self.bias is not None:
            return self.bias
        return not (self.norm == "batch" and self.placement == "before")

    @property
    def final_size(self) -> int:
        """Height (= width) of the last block's output: each 2x2 max-pooling halves it, rounding down."""
        return self.image_size >> len(self.channels)


def norm_layer(config: CNNConfig, channels: int) -> nn.Module:
    """The normalisation layer ``config.norm`` names, for ``channels`` channels."""
    if config.norm == "batch":
        return nn.BatchNorm2d(channels)
    if config.norm == "group":
        return nn.GroupNorm(config.groups, channels)
    if config.norm == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm {config.norm!r} has no layer.")


def conv_block(n_in: int, n_out: int, config: CNNConfig) -> list[nn.Module]:
    """One block's layers: Conv2d, the normalisation and ReLU in the order ``config.placement`` asks for, MaxPool2d."""
    conv = nn.Conv2d(n_in, n_out, config.kernel_size, padding=config.kernel_size // 2, bias=config.conv_bias)
    if config.norm == "none":
        layers = [conv, nn.ReLU()]
    elif config.placement == "before":
        layers = [conv, norm_layer(config, n_out), nn.ReLU()]
    else:
        layers = [conv, nn.ReLU(), norm_layer(config, n_out)]
    return [*layers, nn.MaxPool2d(2)]


def build_cnn(config: CNNConfig = CNNConfig()) -> nn.Sequential:
    """The CNN that ``config`` describes, as one flat ``nn.Sequential`` (print it to see every layer)."""
    layers: list[nn.Module] = []
    sizes = (config.in_channels, *config.channels)
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += conv_block(n_in, n_out, config)
    layers += [nn.Flatten(), nn.Linear(config.channels[-1] * config.final_size**2, config.num_classes)]
    return nn.Sequential(*layers)


def build_model(config: MLPConfig | CNNConfig) -> nn.Sequential:
    """The model a configuration describes: ``build_mlp`` for an ``MLPConfig``, ``build_cnn`` for a ``CNNConfig``."""
    if isinstance(config, MLPConfig):
        return build_mlp(config)
    if isinstance(config, CNNConfig):
        return build_cnn(config)
    raise ValueError(f"build_model needs a bnlab.models.MLPConfig or CNNConfig; got {type(config).__name__}.")


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (buffers such as ``running_mean`` are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

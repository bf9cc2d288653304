"""The lecture's multilayer perceptron, built from a configuration.

With the defaults it is the lecture's reference model::

    Flatten -> Linear(784, 75, bias=False) -> BatchNorm1d(75) -> ReLU
            -> Linear(75, 45, bias=False)  -> BatchNorm1d(45) -> ReLU -> Linear(45, 10)

``placement`` says where BatchNorm goes in each hidden block:

* ``"before"`` the activation: Linear -> BatchNorm1d -> ReLU [-> Dropout]  (Ioffe & Szegedy 2015)
* ``"after"`` the activation:  Linear -> ReLU -> BatchNorm1d [-> Dropout]
* ``"none"``:                  Linear -> ReLU [-> Dropout]
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


def build_model(config: MLPConfig) -> nn.Module:
    """The model a configuration describes: ``build_mlp`` for an ``MLPConfig``."""
    if isinstance(config, MLPConfig):
        return build_mlp(config)
    raise ValueError(f"build_model needs a bnlab.models.MLPConfig; got {type(config).__name__}.")


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (buffers such as ``running_mean`` are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

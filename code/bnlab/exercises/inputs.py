"""Random inputs the checks share: numbers, batches, small models. Every draw comes from the check's generator, so
that the same seed gives the same inputs (and a fresh secret seed gives inputs nobody has seen)."""

from __future__ import annotations

import torch
from torch import nn


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """A random integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def uniform(generator: torch.Generator, low: float, high: float, *shape, dtype=torch.float32) -> torch.Tensor:
    return (low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)).to(dtype)


def normal(generator: torch.Generator, *shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def batch_and_features(generator: torch.Generator, n_range=(4, 9), c_range=(2, 6)) -> tuple:
    """A batch size N and a feature count C that differ, so that statistics over the wrong axis show."""
    n, c = randint(generator, *n_range), randint(generator, *c_range)
    return (n + 1 if n == c else n), c


def feature_batch(generator: torch.Generator, n: int, c: int) -> torch.Tensor:
    """A float32 (N, C) batch whose features have different means and very different scales (one of them small)."""
    scale = uniform(generator, 0.5, 3.0, c, dtype=torch.float64)
    scale[randint(generator, 0, c - 1)] = float(uniform(generator, 0.08, 0.2, 1))
    x = torch.randn(n, c, generator=generator, dtype=torch.float64) * scale + uniform(generator, -3.0, 3.0, c,
                                                                                       dtype=torch.float64)
    return x.to(torch.float32)


def image_batch(generator: torch.Generator) -> torch.Tensor:
    """A float32 (N, C, H, W) batch of 2-4 images with 2-4 channels of different means and scales, in which C
    differs from H and W, so that statistics or parameters lined up with the wrong axis raise or show."""
    n, c = randint(generator, 2, 4), randint(generator, 2, 4)
    h, w = randint(generator, 2, 5), randint(generator, 2, 5)
    h, w = (h + 2 if h == c else h), (w + 3 if w == c else w)
    scale = uniform(generator, 0.2, 2.0, 1, c, 1, 1)
    return normal(generator, n, c, h, w) * scale + uniform(generator, -2.0, 2.0, 1, c, 1, 1)


def seeded(module: nn.Module, generator: torch.Generator, std: float = 0.7) -> nn.Module:
    """``module`` with every floating-point parameter drawn from ``generator`` (its own initialisation would use
    the global random generator)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(normal(generator, *parameter.shape) * std)
    return module


def eval_batchnorm(generator: torch.Generator, n: int, eps: float, kind: type = nn.BatchNorm1d) -> nn.Module:
    """An eval-mode BatchNorm (``kind``: nn.BatchNorm1d or nn.BatchNorm2d) of ``n`` features with random weight,
    bias and running statistics."""
    bn = kind(n, eps=eps)
    with torch.no_grad():
        bn.weight.copy_(1 + 0.5 * normal(generator, n))
        bn.bias.copy_(normal(generator, n))
        bn.running_mean.copy_(normal(generator, n))
        bn.running_var.copy_(uniform(generator, 0.05, 2.0, n))
    return bn.eval()


LAYER_FACTORIES = {
    "Flatten": lambda: nn.Flatten(),
    "ReLU": lambda: nn.ReLU(),
    "Dropout": lambda p=0.5: nn.Dropout(p),
    "Linear": lambda n_in, n_out, bias=True: nn.Linear(n_in, n_out, bias=bias),
    "BatchNorm1d": lambda n: nn.BatchNorm1d(n),
}


def build_sequential(layers: list, generator: torch.Generator | None = None) -> nn.Sequential:
    """An nn.Sequential from ``[[layer type, *arguments], ...]`` (the types in ``LAYER_FACTORIES``), its weights
    drawn from ``generator`` when one is given."""
    model = nn.Sequential(*(LAYER_FACTORIES[kind](*args) for kind, *args in layers))
    return seeded(model, generator) if generator is not None else model


def random_mlp_layers(generator: torch.Generator, *, placements: list, flatten: bool, dropout: bool) -> list:
    """The layers of a random MLP, one hidden block per placement ("before", "after" or "none": BatchNorm before
    or after the ReLU, or no BatchNorm; "dropout before": Linear, Dropout, BatchNorm, ReLU), as
    ``build_sequential`` takes them. With ``dropout``, every block ends with a Dropout."""
    layers = [["Flatten"]] if flatten else []
    width = randint(generator, 4, 12)
    for placement in placements:
        out = randint(generator, 4, 12)
        layers.append(["Linear", width, out, bool(randint(generator, 0, 1))])
        if placement == "before":
            layers += [["BatchNorm1d", out], ["ReLU"]]
        elif placement == "dropout before":
            layers += [["Dropout", 0.2], ["BatchNorm1d", out], ["ReLU"]]
        elif placement == "after":
            layers += [["ReLU"], ["BatchNorm1d", out]]
        elif placement == "none":
            layers += [["ReLU"]]
        else:
            raise ValueError(f"placement must be 'before', 'after', 'dropout before' or 'none'; got {placement!r}.")
        if dropout:
            layers.append(["Dropout", 0.2])
        width = out
    layers.append(["Linear", width, randint(generator, 2, 5), True])
    return layers

"""A Linear layer's forward product ``y = x W^T (+ b)`` in the faster of two orders, where both give the same bits.

Autograd computes the product as ``x W^T``. MKL can compute the same matrix as ``(W x^T)^T``, and for some shapes
that is faster: for the lecture's first layer (batch 256, 784 -> 75) about a fifth less time on one thread
(BENCHMARKS.md). For other shapes it is slower, and for some (10 outputs, the smallest batches) it rounds
differently. So ``use_swapped`` decides once per shape, in two steps:

1. **The same bits, or no choice.** Both orders are computed on the layer's real input and on random data of its
   shape. Unless they agree bit for bit on both, autograd's order runs. (MKL picks its kernels, and with them the
   order of each sum, by shapes, layouts and thread count, not by the values: two orders that agree bit for bit
   on random data sum in the same order.)
2. **Then speed.** Where they agree, each is timed a few times, in alternation, and the swapped order runs only
   if it takes less than ``SWAP_MARGIN`` of the other's time.

A timing only ever chooses between two computations of the same bits, so no result depends on the machine's load.
On a GPU autograd's order always runs.
"""

from __future__ import annotations

import time

import torch

SWAP_MARGIN = 0.95  # the swapped order runs where it takes less than 95 % of the time of autograd's
TIMING_ROUNDS = 5  # each order is timed this often, in alternation; the fastest timing of each counts
CALLS_PER_TIMING = 3

_SWAP: dict[tuple, bool] = {}  # (input shape, weight shape, has bias, dtype, threads) -> whether to swap


def direct(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T (+ b)`` as ``F.linear`` and autograd compute it."""
    return torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())


def swapped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The same matrix as ``(W x^T (+ b))^T``, copied into the row-major layout ``direct`` returns."""
    y = torch.mm(weight, x.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, x.t())
    return y.t().contiguous()


def same_bits(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two tensors (or ``None``) hold bitwise the same values (so ``-0.0`` differs from ``0.0``, and a nan
    equals the same nan)."""
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))


def orders_agree(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``direct`` and ``swapped`` give the same bits on ``x`` and on random data of its shape (drawn from
    a generator of its own: the global random state is left alone)."""
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    return all(same_bits(direct(a, weight, bias), swapped(a, weight, bias)) for a in (x, probe))


def seconds(product, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
    start = time.perf_counter()
    for _ in range(CALLS_PER_TIMING):
        product(x, weight, bias)
    return time.perf_counter() - start


def swapped_is_faster(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``swapped`` takes less than ``SWAP_MARGIN`` of ``direct``'s time here (each timed
    ``TIMING_ROUNDS`` times, in alternation, after one warm-up call)."""
    times = {direct: [], swapped: []}
    for product in times:
        product(x, weight, bias)
    for _ in range(TIMING_ROUNDS):
        for product, taken in times.items():
            taken.append(seconds(product, x, weight, bias))
    return min(times[swapped]) < SWAP_MARGIN * min(times[direct])


def use_swapped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``linear`` swaps the order for this shape: decided once per process for each input shape, weight
    shape, bias or none, dtype and thread count."""
    if x.device.type != "cpu" or x.dim() != 2:
        return False
    key = (tuple(x.shape), tuple(weight.shape), bias is not None, x.dtype, torch.get_num_threads())
    if key not in _SWAP:
        _SWAP[key] = orders_agree(x, weight, bias) and swapped_is_faster(x, weight, bias)
    return _SWAP[key]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, swap: bool) -> torch.Tensor:
    """``x W^T (+ b)``, swapped where ``swap`` (from ``use_swapped``) says; bitwise the same either way."""
    return swapped(x, weight, bias) if swap else direct(x, weight, bias)

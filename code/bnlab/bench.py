"""How fast bnlab trains, against the standard pipeline, on this machine: ``python -m bnlab.bench``.

One run measures, on the same machine and the same number of threads:

* **samples/s** of the whole training step (batch, forward, backward, SGD update) for the lecture's 784-75-45-10
  MLP at batch 256: the standard pipeline (torchvision's ``MNIST`` with ``ToTensor()`` through a ``DataLoader``,
  the lecture's code), bnlab's plain loop (``bnlab.training``: data on the device, batches by index, the plain
  step), bnlab's loop with the fused step (``bnlab.fast.FusedEngine``, bitwise the same results) and, on CUDA,
  with that step replayed as a CUDA graph (``bnlab.fast.GraphEngine``); and the speed-ups between them;
* the **matmul peak**: the FLOP/s of a large float32 matrix product on the same threads, and the fraction of it
  the training loop achieves, counting the FLOPs of its matmuls exactly (``training_flops``);
* **seeds**: ``Sizes.seeds`` seeds trained one after another, in ``bnlab.experiments``' worker processes (CPU)
  or stacked (``bnlab.fast.stacked``, CUDA), with the speed-up and a seed's share of the time against its FLOP
  floor;
* the **lecture's reference run**: 50 epochs of 60,000 images at batch 256 (``drop_last``: 234 steps an epoch)
  with ``bnlab.fast.default_engine()``, the training steps alone and all of ``bnlab.training.train`` (with its
  per-epoch evaluation of the training and validation splits, as the lecture's run reports them), and its FLOP
  floor (its FLOPs divided by the measured matmul peak). Timing does not depend on pixel values, so it trains on
  random MNIST-shaped data.

Every timing is taken three times and the fastest is reported: work that shares the machine only ever adds
time. The host's speed drifts, though, so a ratio of two timings is only fair when they were taken together: the
measurements run in rounds (the matmul peak, then every rate in ``RATES`` once, back to back; the matmul peak,
then the reference run), and each ratio is reported as the median of its rounds, with their range. ``--quick`` runs
every measurement once, on tiny sizes, in seconds (a smoke test, not a measurement).

Rows are named. A new rate is one more ``RateRow`` in ``RATES`` (it is then timed in every round and gets its
row); a new ratio between two rates is one more entry in ``RATIOS``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms
from torchvision.datasets import MNIST
from torchvision.datasets.vision import VisionDataset

from . import _workers
from .data import DATA_ENV, Dataset, Split, data_root, read_subset_marker, to_float
from .experiments import seed_threads, seed_workers
from .fast import FusedEngine, GraphEngine, default_engine
from .fast.stacked import train_stacked
from .models import MLPConfig, build_mlp
from .stats import Spread
from .training import Engine, TrainConfig, epoch_order, pick_device, to_device, train, train_epoch, train_model

LECTURE_SIZES = (784, 75, 45, 10)
RANDOM_DATA = "random MNIST-shaped data"


# --- counting FLOPs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flops:
    """Floating-point operations of the matmuls in one training step, per training sample."""

    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def training_flops(sizes: tuple[int, ...] = LECTURE_SIZES) -> Flops:
    """FLOPs per training sample of the matmuls of an MLP with layer widths ``sizes`` (input first).

    A Linear layer ``(n_in, n_out)`` costs ``2 * n_in * n_out`` (a multiply and an add per weight) forward, and
    ``4 * n_in * n_out`` backward: ``2 * n_in * n_out`` for the weight gradient ``g^T x`` and as much for the
    input gradient ``g W``. The first layer's input is the data, which needs no gradient: its backward costs
    ``2 * n_in * n_out``. Bias, BatchNorm, ReLU, loss and update are elementwise, O(width), and not counted.
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(n, int) and n > 0 for n in sizes):
        raise ValueError(f"sizes must be two or more positive integers (input, hidden..., output); got {sizes!r}.")
    layers = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(2 * n_in * n_out for n_in, n_out in layers)
    backward = sum((2 if i == 0 else 4) * n_in * n_out for i, (n_in, n_out) in enumerate(layers))
    return Flops(forward, backward)


def seed_flops_per_sample(flops: Flops, data: Dataset, *, epochs: int, batch_size: int) -> float:
    """FLOPs per training sample of one seed's whole run on ``data`` (``bnlab.training.train``): its training steps
    (``drop_last``), and a forward pass of every validation image after every epoch and of every test image at the
    end, shared out over the training samples."""
    trained = epochs * (len(data.train) // batch_size) * batch_size
    evaluated = epochs * len(data.val) + len(data.test)
    return flops.total + flops.forward * evaluated / trained


def linear_sizes(model: nn.Module) -> tuple[int, ...]:
    """The widths ``(input, hidden..., output)`` of the chain of Linear layers in ``model``, in order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no Linear layer.")
    for a, b in zip(linears[:-1], linears[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"the Linear layers do not form a chain: {a.out_features} outputs feed {b.in_features} inputs.")
    return (linears[0].in_features, *(m.out_features for m in linears))


# --- timing -----------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(*, n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """The measured float32 matmul rate in FLOP/s: the best of ``repeats`` timings of one ``(n, n) @ (n, n)``
    product (``2 n^3`` FLOPs), after a warm-up, on the current threads."""
    if not (isinstance(n, int) and n > 0 and isinstance(repeats, int) and repeats > 0):
        raise ValueError(f"n and repeats must be positive integers; got n={n!r}, repeats={repeats!r}.")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device)
    b = torch.randn(n, n, generator=generator).to(device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def random_mnist(n_train: int, *, n_val: int = 0, n_test: int = 0, seed: int = 0) -> Dataset:
    """Random MNIST-shaped data: uint8 pixels scaled to [0, 1] as ``ToTensor()`` does, random labels 0-9."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(to_float(images), torch.randint(0, 10, (n,), generator=generator))

    return Dataset(RANDOM_DATA, split(n_train), split(n_val), split(n_test))


def standard_dataset(root=None, *, size: int = 60_000):
    """The standard pipeline's data set and its description: torchvision's ``MNIST(train=True,
    transform=ToTensor())`` over ``root`` (``$BNLAB_DATA``) when it holds MNIST, else the same class's
    ``__getitem__`` (uint8 array -> PIL image -> ``ToTensor()``) over ``size`` random images held in memory."""
    root = data_root(root)
    if (root / "MNIST" / "raw").is_dir():
        dataset = MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
        marker = read_subset_marker(root)
        name = marker["name"] if marker else "MNIST"
        return dataset, f"torchvision MNIST over the {name} ({len(dataset):,} training images)"
    return InMemoryMNIST(random_mnist(size), transform=transforms.ToTensor()), (
        f"torchvision MNIST's __getitem__ over {size:,} random in-memory images (no MNIST files found)"
    )


class InMemoryMNIST(MNIST):
    """torchvision's ``MNIST``, its per-sample ``__getitem__`` and all, over ``data.train`` held in memory."""

    def __init__(self, data: Dataset, transform=None):
        VisionDataset.__init__(self, "", transform=transform)
        self.train = True
        self.data = (data.train.images.squeeze(1) * 255).round().to(torch.uint8)
        self.targets = data.train.labels


@dataclass(frozen=True)
class Rate:
    """``samples`` training samples in ``seconds``."""

    samples: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.samples / self.seconds


def standard_rate(dataset, *, batch_size: int = 256, steps: int = 100, warmup: int = 10, device="cpu") -> Rate:
    """Samples/s of the standard pipeline: ``DataLoader(dataset, batch_size, shuffle=True, drop_last=True)``
    (no worker processes, its default) feeding the plain loop: forward, ``F.cross_entropy``,
    ``zero_grad``, ``backward``, ``SGD.step`` on the lecture's MLP. ``steps`` are timed after ``warmup``."""
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = build_mlp().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()

    def batches():
        while True:
            yield from loader

    stream = batches()
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        xb, yb = next(stream)
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return Rate(steps * batch_size, time.perf_counter() - start)


def loop_rate(data: Dataset, engine: Engine, *, batch_size: int = 256, epochs: int = 3, device="cpu") -> Rate:
    """Samples/s of bnlab's training loop (``bnlab.training.train_epoch`` with ``engine``'s step) on the lecture's
    MLP, over ``epochs`` timed epochs of ``data.train`` after one warm-up epoch."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = build_mlp().to(device).train()
    step = engine.make_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    split = to_device(data, device).train
    generator = torch.Generator().manual_seed(0)
    train_epoch(step, split, epoch_order(len(split), generator, device), batch_size)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(epochs):
        loss = train_epoch(step, split, epoch_order(len(split), generator, device), batch_size)
    loss.item()
    return Rate(epochs * (len(split) // batch_size) * batch_size, time.perf_counter() - start)


@dataclass(frozen=True)
class ReferenceRun:
    """The lecture's reference run, timed: ``train_seconds`` for the training steps alone, ``total_seconds``
    for ``bnlab.training.train`` with its per-epoch evaluation (training and validation accuracy)."""

    epochs: int
    images: int
    val_images: int
    batch_size: int
    train_seconds: float
    total_seconds: float

    @property
    def steps(self) -> int:
        return self.epochs * (self.images // self.batch_size)

    @property
    def samples(self) -> int:
        return self.steps * self.batch_size


def reference_run(
    *, epochs: int = 50, images: int = 60_000, val_images: int = 6_000, batch_size: int = 256, device="cpu",
    engine: Engine | None = None,
) -> ReferenceRun:
    """Time the reference run twice on random MNIST-shaped data with ``engine`` (default
    ``bnlab.fast.default_engine()``): the training steps alone (``train_epoch``, one permutation per epoch, as
    ``train`` runs them), and all of ``train`` with ``record_train_acc`` (which also evaluates training and
    validation accuracy after every epoch; the final test evaluation is not counted)."""
    engine = default_engine() if engine is None else engine
    device = torch.device(device)
    data = to_device(random_mnist(images, n_val=val_images, n_test=batch_size), device)

    torch.manual_seed(0)
    model = build_mlp().to(device).train()
    step = engine.make_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    generator = torch.Generator().manual_seed(0)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(epochs):
        loss = train_epoch(step, data.train, epoch_order(images, generator, device), batch_size)
    loss.item()
    train_seconds = time.perf_counter() - start

    torch.manual_seed(0)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.1, seed=0, record_train_acc=True)
    history = train(build_mlp(), data, config, device=device, progress=False, engine=engine)
    return ReferenceRun(epochs, images, val_images, batch_size, train_seconds, history.seconds)


def train_seed(task: tuple[int, int, int], data: Dataset) -> None:
    """Train the lecture's MLP for one seed, as ``bnlab.experiments`` does (what a worker process runs)."""
    seed, epochs, batch_size = task
    train_model(MLPConfig(), data, TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed), device="cpu",
                progress=False, engine=default_engine())


def seeds_rate(data: Dataset, *, how: str, seeds: int = 5, epochs: int = 3, batch_size: int = 256,
               device="cpu") -> Rate:
    """Samples/s, all seeds together, of training ``seeds`` seeds of the lecture's MLP with per-epoch validation:
    ``how="one after another"`` in this process with all its threads; ``"workers"`` in worker processes with the
    threads divided between them, as ``bnlab.experiments.run_seeds`` runs them (their start is not timed);
    ``"stacked"`` as one stacked model (``bnlab.fast.stacked``)."""
    device = torch.device(device)
    samples = seeds * epochs * (len(data.train) // batch_size) * batch_size
    tasks = [(seed, epochs, batch_size) for seed in range(seeds)]
    if how == "workers":
        workers = seed_workers(None, "cpu")
        threads = seed_threads(workers, torch.device("cpu"))
        pool = _workers.start(data, _workers.processes_for(seeds, workers), threads) if workers > 1 else None
        if pool is None:
            return seeds_rate(data, how="one after another", seeds=seeds, epochs=epochs, batch_size=batch_size)
        try:
            start = time.perf_counter()
            for future in [pool.submit(_workers.call_with_data, train_seed, task) for task in tasks]:
                future.result()
            return Rate(samples, time.perf_counter() - start)
        finally:
            _workers.stop(pool)
    start = time.perf_counter()
    if how == "stacked":
        train_stacked(MLPConfig(), data, TrainConfig(epochs=epochs, batch_size=batch_size), range(seeds), device=device,
                      progress=False)
    elif how == "one after another":
        for seed, *_ in tasks:
            train_model(MLPConfig(), data, TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed),
                        device=device, progress=False, engine=default_engine())
    else:
        raise ValueError(f"how must be 'one after another', 'workers' or 'stacked'; got {how!r}.")
    synchronize(device)
    return Rate(samples, time.perf_counter() - start)


# --- the table ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is. ``Sizes()`` is the real benchmark; ``Sizes.quick()`` a smoke test."""

    peak_n: int = 2048
    standard_steps: int = 100
    standard_warmup: int = 10
    rate_images: int = 60_000
    rate_epochs: int = 3
    epochs: int = 50
    images: int = 60_000
    val_images: int = 6_000
    batch_size: int = 256
    repeats: int = 3  # every timing is taken this often and the fastest kept: other work only ever adds time
    seeds: int = 5  # seeds trained together or one after another
    seed_epochs: int = 3  # epochs per seed there

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(peak_n=256, standard_steps=4, standard_warmup=1, rate_images=1_024, rate_epochs=1,
                   epochs=2, images=1_024, val_images=256, repeats=1, seeds=2, seed_epochs=1)


@dataclass(frozen=True)
class Setup:
    """What every rate measurement gets: the sizes, the device, the standard pipeline's data set (and its
    description) and bnlab's random MNIST-shaped data."""

    sizes: Sizes
    device: torch.device
    dataset: object
    dataset_description: str
    data: Dataset

    @functools.cached_property
    def seeds_data(self) -> Dataset:
        return random_mnist(self.sizes.rate_images, n_val=self.sizes.val_images, n_test=self.sizes.batch_size)


@dataclass(frozen=True)
class RateRow:
    """One samples/s row: its name, how it is measured (the table's note) and the measurement. ``cuda_only``
    rows are left out on other devices, ``cpu_only`` rows on a GPU."""

    name: str
    how: Callable[[Setup], str]
    measure: Callable[[Setup], Rate]
    cuda_only: bool = False
    cpu_only: bool = False


def _loop(engine: Engine) -> Callable[[Setup], Rate]:
    return lambda s: loop_rate(s.data, engine, batch_size=s.sizes.batch_size, epochs=s.sizes.rate_epochs,
                               device=s.device)


RATES = (
    RateRow(
        "standard pipeline",
        lambda s: f"DataLoader(batch {s.sizes.batch_size}, shuffle, 0 workers) + ToTensor(), autograd step; "
                  f"{s.dataset_description}",
        lambda s: standard_rate(s.dataset, batch_size=s.sizes.batch_size, steps=s.sizes.standard_steps,
                                warmup=s.sizes.standard_warmup, device=s.device),
    ),
    RateRow("bnlab, plain loop", lambda s: "bnlab.training: data on the device, batches by index, the plain step",
            _loop(Engine())),
    RateRow("bnlab, fused step", lambda s: "the same loop with bnlab.fast.FusedEngine (bitwise the same results)",
            _loop(FusedEngine())),
    RateRow("bnlab, fused step in a CUDA graph", lambda s: "bnlab.fast.GraphEngine: the fused step replayed",
            _loop(GraphEngine()), cuda_only=True),
)


def _seeds(how: str) -> Callable[[Setup], Rate]:
    return lambda s: seeds_rate(s.seeds_data, how=how, seeds=s.sizes.seeds, epochs=s.sizes.seed_epochs,
                                batch_size=s.sizes.batch_size, device=s.device)


def _seeds_how(where: Callable[[Setup], str]) -> Callable[[Setup], str]:
    return lambda s: (f"{s.sizes.seeds} seeds x {s.sizes.seed_epochs} epochs x {len(s.seeds_data.train):,} images, "
                      f"validation on {len(s.seeds_data.val):,} every epoch, {where(s)}; all seeds together")


def _workers_and_threads(seeds: int) -> str:
    workers = seed_workers(None, "cpu")
    return (f"as run_seeds runs them: {_workers.processes_for(seeds, workers)} process(es) x "
            f"{seed_threads(workers, torch.device('cpu'))} thread(s) on {workers} core(s) (starting the processes "
            "not timed)")


RATES += (
    RateRow("seeds one after another", _seeds_how(lambda s: f"in this process, {torch.get_num_threads()} thread(s)"),
            _seeds("one after another")),
    RateRow("seeds in worker processes", _seeds_how(lambda s: _workers_and_threads(s.sizes.seeds)), _seeds("workers"),
            cpu_only=True),
    RateRow("seeds stacked", _seeds_how(lambda s: "as one stacked model (bnlab.fast.stacked)"), _seeds("stacked"),
            cuda_only=True),
)

RATIOS = {  # ratio row -> (numerator rate, denominator rate), each taken within one round
    "speed-up of the plain loop over the standard pipeline": ("bnlab, plain loop", "standard pipeline"),
    "speed-up of the fused step over the standard pipeline": ("bnlab, fused step", "standard pipeline"),
    "speed-up of the fused step over the plain loop": ("bnlab, fused step", "bnlab, plain loop"),
    "speed-up of the CUDA graph over the fused step": ("bnlab, fused step in a CUDA graph", "bnlab, fused step"),
    "speed-up of seeds in worker processes": ("seeds in worker processes", "seeds one after another"),
    "speed-up of seeds stacked": ("seeds stacked", "seeds one after another"),
}


@dataclass(frozen=True)
class Row:
    what: str
    value: str
    note: str = ""


def row(rows: list[Row], name: str) -> Row:
    """The row called ``name``."""
    for r in rows:
        if r.what == name:
            return r
    raise KeyError(f"no row named {name!r}; the rows are {[r.what for r in rows]}")


def describe_rounds(spread: Spread) -> str:
    """How many rounds a ratio's median comes from, and their range."""
    if spread.n == 1:
        return "1 round"
    return f"median of {spread.n} rounds, {spread.low:,.2f}x to {spread.high:,.2f}x"


def run_benchmark(*, sizes: Sizes = Sizes(), device="cpu", data_root_path=None, log=None) -> list[Row]:
    """Every measurement, as named table rows. ``log`` (e.g. ``print``) hears progress."""
    device = pick_device(device)
    say = log or (lambda message: None)
    flops = training_flops(LECTURE_SIZES)
    batch = sizes.batch_size
    best = f"best of {sizes.repeats}"
    rows = []

    say("timing the matmul peak ...")
    peak = matmul_peak(n=sizes.peak_n, device=device)
    rows.append(Row("matmul peak", f"{peak / 1e9:,.1f} GFLOP/s",
                    f"float32 ({sizes.peak_n}x{sizes.peak_n}) @ ({sizes.peak_n}x{sizes.peak_n}), best of 5"))
    rows.append(Row("FLOPs per training sample", f"{flops.total:,}",
                    f"784-75-45-10 matmuls: forward {flops.forward:,} + backward {flops.backward:,}"))

    # The host's speed drifts (other work shares it), so every ratio is taken between measurements made back to
    # back, once per round, and reported as the median of the rounds with its range.
    on_cuda = device.type == "cuda"
    rates = [r for r in RATES if not (r.cuda_only and not on_cuda) and not (r.cpu_only and on_cuda)]
    dataset, description = standard_dataset(data_root_path, size=max(sizes.rate_images, batch))
    setup = Setup(sizes, device, dataset, description, random_mnist(sizes.rate_images))
    say(f"timing {', '.join(r.name for r in rates)} in turn, {sizes.repeats} rounds ...")
    round_peaks, rounds = [], []
    for _ in range(sizes.repeats):
        round_peaks.append(matmul_peak(n=sizes.peak_n, device=device))  # for the distance from the FLOP floor
        rounds.append({r.name: r.measure(setup) for r in rates})
    fastest = {r.name: max((one[r.name] for one in rounds), key=lambda rate: rate.per_second) for r in rates}
    for r in rates:
        rows.append(Row(r.name, f"{fastest[r.name].per_second:,.0f} samples/s", f"{r.how(setup)}; {best}"))
    for name, (a, b) in RATIOS.items():
        if a in fastest and b in fastest:
            ratio = Spread.of([one[a].per_second / one[b].per_second for one in rounds])
            rows.append(Row(name, f"{ratio.median:,.1f}x", f"{a} / {b}, timed in turn; {describe_rounds(ratio)}"))
    achieved = fastest["bnlab, fused step"].per_second * flops.total
    rows.append(Row("training-loop FLOP/s", f"{achieved / 1e9:,.1f} GFLOP/s",
                    f"{achieved / peak:.0%} of the matmul peak (bnlab, fused step)"))
    parallel = "seeds in worker processes" if device.type != "cuda" else "seeds stacked"
    if parallel in fastest:
        per_sample = seed_flops_per_sample(flops, setup.seeds_data, epochs=sizes.seed_epochs, batch_size=batch)
        to_floor = Spread.of([p / (one[parallel].per_second * per_sample) for p, one in zip(round_peaks, rounds)])
        rows.append(Row(f"{parallel}: time per seed / FLOP floor", f"{to_floor.median:,.2f}x", "a seed's share of "
                        "the wall time against its FLOPs (its training steps, and the forward passes of its validation "
                        "after every epoch and of its test at the end) at the matmul peak measured at the start of "
                        f"the same round; {describe_rounds(to_floor)}"))

    say(f"timing the reference run ({sizes.epochs} epochs x {sizes.images:,} images), {2 * sizes.repeats} times, "
        "each after the matmul peak ...")
    runs = []
    for _ in range(sizes.repeats):
        run_peak = matmul_peak(n=sizes.peak_n, device=device)
        run = reference_run(epochs=sizes.epochs, images=sizes.images, val_images=sizes.val_images, batch_size=batch,
                            device=device)
        runs.append((run_peak, run))
    ref = min((run for _, run in runs), key=lambda r: r.train_seconds)
    ref = replace(ref, total_seconds=min(run.total_seconds for _, run in runs))
    work = ref.samples * flops.total
    floor = work / max(peak, *(run_peak for run_peak, _ in runs))
    to_floor = Spread.of([run.train_seconds * run_peak / work for run_peak, run in runs])
    shape = f"{ref.epochs} epochs x {ref.images // batch} steps x batch {batch}, {default_engine()!r}"
    rows.append(Row("reference run, training steps", f"{ref.train_seconds:,.2f} s", f"{shape}; {RANDOM_DATA}; {best}"))
    rows.append(Row("reference run, with per-epoch evaluation", f"{ref.total_seconds:,.2f} s",
                    f"bnlab.training.train: + training accuracy on {ref.images:,} and validation accuracy on "
                    f"{ref.val_images:,} images every epoch; {best}"))
    rows.append(Row("reference run, FLOP floor", f"{floor:,.2f} s", f"{work / 1e9:,.0f} GFLOP / the best matmul peak measured"))
    rows.append(Row("reference run / FLOP floor", f"{to_floor.median:,.2f}x",
                    f"training steps / FLOP floor, each run against the peak measured just before it; {describe_rounds(to_floor)}"))
    rows.append(Row("standard pipeline, reference run", f"{ref.samples / fastest['standard pipeline'].per_second:,.1f} s",
                    "extrapolated from the standard pipeline's samples/s"))
    return rows


def environment(device: torch.device) -> dict[str, str]:
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "device": f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f"cpu ({cpu}, {os.cpu_count()} cores)",
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


def format_table(rows: list[Row], env: dict[str, str] | None = None, command: str | None = None) -> str:
    """The rows as a Markdown table, headed by the environment and the command."""
    lines = []
    if command:
        lines.append(f"command: `{command}`")
    if env:
        lines.append(" | ".join(f"{k}: {v}" for k, v in env.items()))
    if lines:
        lines.append("")
    width = [max(len(r.what) for r in rows), max(len(r.value) for r in rows)]
    lines.append(f"| {'measurement'.ljust(width[0])} | {'value'.rjust(width[1])} | how |")
    lines.append(f"| {'-' * width[0]} | {'-' * (width[1] - 1)}: | --- |")
    lines += [f"| {r.what.ljust(width[0])} | {r.value.rjust(width[1])} | {r.note} |" for r in rows]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m bnlab.bench",
        description="Benchmark bnlab's training loop against the standard DataLoader + ToTensor pipeline, on this "
        "machine: samples/s of the plain loop and of the fused step, FLOP/s against the measured matmul peak, and "
        "the lecture's 50-epoch reference run.",
    )
    cli.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    cli.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    cli.add_argument("--data", default=None, help=f"MNIST folder for the standard pipeline (default: ${DATA_ENV}, else ./data)")
    cli.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in seconds, not a measurement")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.threads is not None:
            if args.threads <= 0:
                raise ValueError(f"--threads must be a positive integer; got {args.threads}.")
            torch.set_num_threads(args.threads)
        device = pick_device(args.device)
        sizes = Sizes.quick() if args.quick else Sizes()
        log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
        wall, cpu = time.perf_counter(), time.process_time()
        rows = run_benchmark(sizes=sizes, device=device, data_root_path=args.data, log=log)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = " ".join(["python -m bnlab.bench", *(argv if argv is not None else sys.argv[1:])])
    env = environment(device)
    # Busy threads on average; clearly below the thread count on a CPU run means other work shared the cores.
    env["cpu time / wall time"] = f"{cpu / wall:.2f}"
    print(format_table(rows, env, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What ``python -m bnlab.bench`` measures, each measurement a function that returns numbers: the FLOPs of the
MLP's training step (``training_flops``, and a whole seed's run with its evaluation), the matmul peak, and the
timed runs (the standard pipeline, bnlab's loop with an engine, the lecture's reference run, several seeds one
after another, in worker processes or stacked) on the data sets they time. ``bnlab.bench`` runs them in rounds
and makes the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms
from torchvision.datasets import MNIST
from torchvision.datasets.vision import VisionDataset

from .. import _workers
from ..data import Dataset, Split, data_root, read_subset_marker, to_float
from ..experiments import seed_threads, seed_workers
from ..fast import default_engine
from ..fast.stacked import train_stacked
from ..models import MLPConfig, build_mlp
from ..training import Engine, TrainConfig, epoch_order, to_device, train, train_epoch, train_model

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

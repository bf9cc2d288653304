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

The measurements themselves are in ``bnlab.bench.timings``; this module runs them in rounds and makes the table.

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

from .. import _workers
from ..data import DATA_ENV, Dataset
from ..experiments import seed_threads, seed_workers
from ..fast import FusedEngine, GraphEngine, default_engine
from ..stats import Spread
from ..training import Engine, pick_device
from .timings import (
    LECTURE_SIZES,
    RANDOM_DATA,
    Rate,
    loop_rate,
    matmul_peak,
    random_mnist,
    reference_run,
    seed_flops_per_sample,
    seeds_rate,
    standard_dataset,
    standard_rate,
    training_flops,
)


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

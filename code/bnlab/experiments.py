"""Training runs, cached on disk, and many seeds at once.

``run`` trains one configuration on one data set and stores its ``History`` as JSON, keyed by a hash of
everything that can change the result: the model configuration's type and fields, the training configuration
(with ``record_train_acc``, the metrics it records), the data set's name and fingerprint, the torch version, the
device type and, on the CPU, the number of threads. (The CPU's kernels split their sums between threads, so the
same seed gives slightly different bits with 1 and with 2 threads; ``History.threads`` records the count.)
Asking again returns the stored run without training; changing anything in the key trains anew, so a stale
result is never served. Files are written to a temporary name and renamed into place, so an interrupted run never
leaves a corrupt entry. ``run_with_model`` also stores the trained weights.

``run_seeds`` and ``run_variants`` train the seeds that are not cached yet in worker processes on the CPU, the
cores divided between them: ``workers`` seeds at once (argument, else ``$BNLAB_WORKERS``, else one per thread torch
uses), with ``threads // workers`` threads each. Where the seeds do not divide evenly among the cores, a few more
processes share them, so that no core waits idle at the end (``bnlab._workers.processes_for``: 5 seeds on 2
cores in 3 processes). Every seed computes with that thread count wherever it runs (in a
worker, alone, or in this process where processes cannot start), so its result does not depend on which seeds
run beside it or on what was cached. ``workers=1`` trains in this process with all threads: a different thread
count, so different bits and a different cache entry. On a GPU the seeds run one after another in this process;
``stacked=True`` (opt-in) trains a variant's seeds together as one stacked model instead (``bnlab.fast.stacked``).

The cache lives in ``$BNLAB_CACHE``, else ``~/.cache/bnlab``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import _workers
from ._workers import using_threads
from .data import Dataset
from .fast import default_engine
from .models import build_model
from .stats import Comparison, Spread, compare, format_p
from .training import History, TrainConfig, pick_device, train_model

CACHE_ENV = "BNLAB_CACHE"
WORKERS_ENV = "BNLAB_WORKERS"
CACHE_FORMAT = 2  # bump when the meaning of a stored History changes


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bnlab").expanduser()


def check_model_config(model_config) -> None:
    params = getattr(type(model_config), "__dataclass_params__", None)
    if params is None or not params.frozen or isinstance(model_config, type):
        raise ValueError(
            f"model_config must be a model configuration (a frozen dataclass such as MLPConfig); "
            f"got {type(model_config).__name__}."
        )


def run_threads(device: torch.device, threads: int | None = None) -> int | None:
    """The CPU threads a run on ``device`` computes with: ``threads``, else all torch uses; ``None`` off the CPU."""
    if device.type != "cpu":
        return None
    if threads is None:
        return torch.get_num_threads()
    if not (isinstance(threads, int) and not isinstance(threads, bool) and threads > 0):
        raise ValueError(f"threads must be a positive integer; got {threads!r}.")
    return threads


def run_key(model_config, train_config: TrainConfig, data: Dataset, *, device=None, threads: int | None = None,
            stacked: tuple[int, ...] | None = None) -> str:
    """The cache key: everything that can change the result (see the module's docstring). ``stacked``: the seeds
    a run was stacked with (``bnlab.fast.stacked``: its bits depend on them)."""
    check_model_config(model_config)
    device = pick_device(device)
    spec = {
        "format": CACHE_FORMAT,
        "model_type": type(model_config).__name__,
        "model": asdict(model_config),
        "train": asdict(train_config),
        "dataset": data.name,
        "data": data.fingerprint,
        "torch": torch.__version__.split("+")[0],
        "device": device.type,
        "threads": run_threads(device, threads),
        "stacked": None if stacked is None else sorted(stacked),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def cache_paths(model_config, train_config, data, *, cache=None, device=None, threads=None,
                stacked=None) -> tuple[Path, Path]:
    """Where a run's history (``run-<key>.json``) and trained weights (``model-<key>.pt``) are stored."""
    key = run_key(model_config, train_config, data, device=device, threads=threads, stacked=stacked)
    folder = cache_dir(cache)
    return folder / f"run-{key}.json", folder / f"model-{key}.pt"


def train_and_store(model_config, train_config, data, history_path: Path, weights_path: Path | None, *,
                    device, threads: int | None, progress: bool = False) -> tuple[nn.Module, History]:
    """Train one run with ``threads`` CPU threads and store it."""
    with using_threads(threads):
        model, history = train_model(model_config, data, train_config, device=device, progress=progress,
                                     engine=default_engine())
    store(model, history, history_path, weights_path)
    return model, history


def store(model: nn.Module, history: History, history_path: Path, weights_path: Path | None) -> None:
    """Store a run: the weights first (if ``weights_path``), then the history, which marks the entry complete."""
    if weights_path is not None:
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights_path.with_name(f".{weights_path.name}.{os.getpid()}.tmp")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, weights_path)
    write_json_atomic(history_path, history.to_dict())


def run(model_config, train_config: TrainConfig, data: Dataset, *, cache=None, device=None, progress: bool = False,
        threads: int | None = None) -> History:
    """One training run's history, from the cache when this exact run was done before. On the CPU it computes
    with ``threads`` threads (default: all that torch uses)."""
    device = pick_device(device)
    threads = run_threads(device, threads)
    history_path, _ = cache_paths(model_config, train_config, data, cache=cache, device=device, threads=threads)
    stored = read_history(history_path)
    if stored is not None:
        return stored
    return train_and_store(model_config, train_config, data, history_path, None, device=device, threads=threads,
                           progress=progress)[1]


def run_with_model(model_config, train_config: TrainConfig, data: Dataset, *, cache=None, device=None,
                   threads: int | None = None) -> tuple[nn.Module, History]:
    """Like ``run``, and also the trained model: its weights are cached next to the history (same key,
    ``model-<key>.pt``). The model comes back on ``device`` (auto-selected when ``None``)."""
    device = pick_device(device)
    threads = run_threads(device, threads)
    history_path, weights_path = cache_paths(model_config, train_config, data, cache=cache, device=device,
                                             threads=threads)
    stored = load_with_model(model_config, history_path, weights_path)
    if stored is not None:
        return stored[0].to(device), stored[1]
    return train_and_store(model_config, train_config, data, history_path, weights_path, device=device, threads=threads)


def load_with_model(model_config, history_path: Path, weights_path: Path) -> tuple[nn.Module, History] | None:
    """The stored model and history, or ``None`` if either is missing, unreadable or stale."""
    history = read_history(history_path)
    if history is None or not weights_path.exists():
        return None
    model = build_model(model_config)
    try:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
        return None  # unreadable or stale weights: train again
    return model, history


def read_history(path: Path) -> History | None:
    """The ``History`` stored at ``path``, or ``None`` if it is absent, unreadable or not a whole History (then
    it is recomputed)."""
    try:
        history = History.from_dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError,
            AttributeError):
        return None
    return history if history.epochs and history.test_acc is not None else None


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- many seeds: worker processes on the CPU ---------------------------------------------------------------------


def seed_workers(workers: int | None = None, device=None) -> int:
    """How many processes train seeds at once: ``workers``, else ``$BNLAB_WORKERS``, else one per CPU thread torch
    uses; always 1 (this process) on a GPU."""
    if pick_device(device).type != "cpu":
        return 1
    source = "workers"
    if workers is None and os.environ.get(WORKERS_ENV, "").strip():
        source, workers = f"${WORKERS_ENV}", os.environ[WORKERS_ENV].strip()
        workers = int(workers) if workers.isdigit() else workers
    if workers is None:
        return torch.get_num_threads()
    if not (isinstance(workers, int) and not isinstance(workers, bool) and workers > 0):
        raise ValueError(f"{source} must be a positive number of worker processes (1: no workers); got {workers!r}.")
    return workers


def seed_threads(workers: int, device: torch.device) -> int | None:
    """The CPU threads each of ``workers`` seeds trained side by side computes with: torch's threads divided
    between them, at least one; ``None`` off the CPU."""
    return run_threads(device, max(1, torch.get_num_threads() // workers))


@dataclass(frozen=True)
class Task:
    """One seed of one variant to train and store, with ``threads`` CPU threads."""

    label: str
    seed: int
    model_config: object
    train_config: TrainConfig
    history_path: Path
    weights_path: Path | None
    device: str
    threads: int | None

    def __str__(self) -> str:
        return f"{self.label!r}, seed {self.seed}"


def train_task(task: Task, data: Dataset) -> History:
    """What a worker runs: train one seed and store it."""
    return train_and_store(task.model_config, task.train_config, data, task.history_path, task.weights_path,
                           device=task.device, threads=task.threads)[1]


def run_many(variants: dict, train_config: TrainConfig, data: Dataset, seeds, *, cache=None, device=None,
             workers: int | None = None, progress: bool = True, with_models: bool = False,
             stacked: bool = False) -> dict[str, list]:
    """``{label: [History per seed]}`` (or ``[(model, History)]`` with ``with_models``) for every variant and seed,
    training what is not cached; see the module's docstring for where and with how many threads. ``stacked``
    trains each MLP variant's seeds together in this process (``bnlab.fast.stacked``, opt-in): they equal the
    seeds trained alone only up to rounding, so they have their own cache entries, keyed with the seeds stacked."""
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must not repeat; got {seeds}.")
    device = pick_device(device)
    workers = 1 if stacked else seed_workers(workers, device)
    threads = seed_threads(workers, device)
    found, tasks = {}, []
    for label, model_config in variants.items():
        for seed in seeds:
            config = dataclasses.replace(train_config, seed=seed)
            history_path, weights_path = cache_paths(model_config, config, data, cache=cache, device=device,
                                                     threads=threads, stacked=seeds if stacked else None)
            stored = (load_with_model(model_config, history_path, weights_path) if with_models
                      else read_history(history_path))
            if stored is not None:
                found[label, seed] = stored
            else:
                tasks.append(Task(label, seed, model_config, config, history_path,
                                  weights_path if with_models else None, str(device), threads))
    bars = {label: tqdm(total=len(seeds), initial=sum((label, s) in found for s in seeds), desc=label,
                        unit="seed", leave=False, disable=not (progress and tasks))
            for label in variants}
    try:
        if stacked:
            found.update(train_stacked_tasks(tasks, variants, train_config, data, seeds, cache=cache, device=device,
                                             threads=threads, bars=bars, with_models=with_models, progress=progress))
        to_train = [] if stacked else tasks
        for task, history in _workers.results(train_task, to_train, data, workers=workers, threads=threads):
            found[task.label, task.seed] = (load_with_model(task.model_config, task.history_path, task.weights_path)
                                            if with_models else history)
            bars[task.label].update()
    finally:
        for bar in bars.values():
            bar.close()
    if with_models:
        return {label: [(found[label, s][0].to(device), found[label, s][1]) for s in seeds] for label in variants}
    return {label: [found[label, s] for s in seeds] for label in variants}


def train_stacked_tasks(tasks: list[Task], variants: dict, train_config, data, seeds, *, cache, device, threads,
                        bars: dict, with_models: bool, progress: bool) -> dict:
    """Every variant with a seed missing trains all its seeds stacked (a seed's bits depend on its stack)."""
    from .fast.stacked import train_stacked

    found, seeds = {}, tuple(sorted(seeds))  # stacked in one order, whatever order they were asked in
    for label in dict.fromkeys(task.label for task in tasks):
        with using_threads(threads):
            trained = train_stacked(variants[label], data, train_config, seeds, device=device, progress=progress)
        for seed, (model, history) in zip(seeds, trained):
            config = dataclasses.replace(train_config, seed=seed)
            history_path, weights_path = cache_paths(variants[label], config, data, cache=cache, device=device,
                                                     threads=threads, stacked=seeds)
            store(model, history, history_path, weights_path if with_models else None)
            found[label, seed] = (model, history) if with_models else history
        bars[label].update(sum(task.label == label for task in tasks))
    return found


def run_seeds(model_config, train_config: TrainConfig, data: Dataset, seeds, **kwargs) -> list[History]:
    """``run`` once per seed (the seed replaces ``train_config.seed``), the seeds not cached yet trained in
    parallel worker processes on the CPU (``workers``, ``cache``, ``device``, ``progress``: see ``run_many``)."""
    check_model_config(model_config)
    return run_many({"seeds": model_config}, train_config, data, seeds, **kwargs)["seeds"]


def run_seeds_with_models(model_config, train_config: TrainConfig, data: Dataset, seeds, **kwargs) -> list:
    """``run_with_model`` once per seed, in parallel like ``run_seeds``: ``[(model, History)]`` in seed order."""
    check_model_config(model_config)
    return run_many({"seeds": model_config}, train_config, data, seeds, with_models=True, **kwargs)["seeds"]


# --- several configurations, several seeds each: tables and comparisons ------------------------------------------

METRICS = {
    "test_acc": "test accuracy (%)",
    "loss": "final training loss",
    "train_acc": "final training accuracy (%)",
    "val_acc": "final validation accuracy (%)",
}


@dataclass(frozen=True)
class SeedRuns:
    """One model configuration, trained once per seed.

    Attributes:
        label: how tables and plots name this variant.
        model: the configuration every run trained.
        seeds: the seeds, in the order of ``histories``.
        histories: one ``History`` per seed.
    """

    label: str
    model: object
    seeds: tuple[int, ...]
    histories: tuple[History, ...]

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "histories", tuple(self.histories))
        if not self.seeds or len(self.seeds) != len(self.histories):
            raise ValueError(
                f"SeedRuns({self.label!r}): seeds and histories must be non-empty and of equal length; "
                f"got {len(self.seeds)} seeds and {len(self.histories)} histories."
            )

    @property
    def dataset(self) -> str:
        """The data set the runs trained on (all of them: ``run_variants`` never mixes data sets)."""
        return " + ".join(sorted({h.dataset for h in self.histories}))

    def values(self, metric: str = "test_acc") -> tuple[float, ...]:
        """One number per seed: ``"test_acc"``, or the last epoch's ``"loss"``, ``"train_acc"`` or ``"val_acc"``."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}; got {metric!r}.")
        if metric == "test_acc":
            return tuple(h.test_acc for h in self.histories)
        values = tuple(getattr(h.final, metric) for h in self.histories)
        if None in values:
            raise ValueError(
                f"{self.label!r}: {metric} was not recorded; train with TrainConfig(record_train_acc=True)."
            )
        return values

    def spread(self, metric: str = "test_acc") -> Spread:
        """Mean ± sample standard deviation of ``metric`` over the seeds."""
        return Spread.of(self.values(metric))

    def history(self, seed: int) -> History:
        """The run trained with ``seed``."""
        if seed not in self.seeds:
            raise ValueError(f"seed must be one of {self.seeds}; got {seed!r}.")
        return self.histories[self.seeds.index(seed)]


def run_variants(variants: dict, train_config: TrainConfig, data: Dataset, seeds, **kwargs) -> dict[str, SeedRuns]:
    """``run_seeds`` for every ``{label: model config}``, all variants' missing seeds shared among the same
    workers (one progress bar per variant); returns ``{label: SeedRuns}`` in the same order."""
    if not variants:
        raise ValueError("variants is empty: give at least one {label: model config}.")
    for model_config in variants.values():
        check_model_config(model_config)
    seeds = tuple(seeds)
    histories = run_many(variants, train_config, data, seeds, **kwargs)
    return {label: SeedRuns(label, model, seeds, tuple(histories[label])) for label, model in variants.items()}


@dataclass(frozen=True)
class RunComparison(Comparison):
    """A ``bnlab.stats.Comparison`` of two variants on one metric, with their labels."""

    a: str = "a"
    b: str = "b"
    metric: str = "test_acc"

    def describe(self, a_label: str | None = None, b_label: str | None = None, unit: str | None = None,
                 **kwargs) -> str:
        """``Comparison.describe`` with the variants' labels and the metric's unit."""
        unit = ("points" if self.metric != "loss" else "") if unit is None else unit
        kwargs.setdefault("digits", 4 if self.metric == "loss" else 2)
        return super().describe(a_label or self.a, b_label or self.b, unit, **kwargs)


def compare_runs(a: SeedRuns, b: SeedRuns, metric: str = "test_acc", *, level: float = 0.95) -> RunComparison:
    """``a`` against ``b`` on ``metric`` by the book's rule (``bnlab.stats``): paired by seed when both ran the
    same seeds, Welch's t-test otherwise. Both need at least two seeds."""
    for name, runs in (("a", a), ("b", b)):
        if len(runs.seeds) < 2:
            raise ValueError(
                f"{name} ({runs.label!r}) has {len(runs.seeds)} seed; a comparison needs at least 2 seeds."
            )
    if set(a.seeds) == set(b.seeds):
        seeds = sorted(a.seeds)
        a_values = [a.values(metric)[a.seeds.index(s)] for s in seeds]
        b_values = [b.values(metric)[b.seeds.index(s)] for s in seeds]
        result = compare(a_values, b_values, paired=True, level=level)
    else:
        result = compare(a.values(metric), b.values(metric), paired=False, level=level)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(Comparison)}
    return RunComparison(**fields, a=a.label, b=b.label, metric=metric)


def comparisons_table(comparisons, *, caption: str) -> Table:
    """One row per ``RunComparison``: the difference of means, its confidence interval, p and the verdict."""
    comparisons = list(comparisons)
    if not comparisons:
        raise ValueError("comparisons is empty: give at least one RunComparison (from compare_runs).")
    fmt = metric_format(comparisons[0].metric)
    levels = {c.level for c in comparisons}
    level = f"{levels.pop() * 100:g} % CI" if len(levels) == 1 else "CI"
    header = ("a", "b", "mean(a) - mean(b)", level, "p", "verdict (by the seeds)")
    rows = tuple(
        (c.a, c.b, f"{c.difference:+{fmt}}", f"{c.ci[0]:+{fmt}} to {c.ci[1]:+{fmt}}", format_p(c.p),
         c.verdict if c.paired else f"{c.verdict} (Welch)")
        for c in comparisons
    )
    return Table(caption, header, rows)


@dataclass(frozen=True)
class Table:
    """A small table of strings with a caption: HTML in a notebook, aligned text with ``print``."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __str__(self) -> str:
        table = [self.header, *self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        return "\n".join([self.caption, *lines])

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return (
            f"<table><caption>{escape(self.caption)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )


@dataclass(frozen=True)
class ResultsTable:
    """Mean ± standard deviation per variant, and every seed's value, labelled with the data set.

    ``rows`` holds the numbers (``(label, (Spread per metric, ...))``); it shows as ``table()`` does.
    """

    dataset: str
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    rows: tuple[tuple[str, tuple[Spread, ...]], ...]

    def table(self) -> Table:
        first = self.metrics[0]
        header = ("variant", *(f"{METRICS[m]}, mean ± std" for m in self.metrics), f"{METRICS[first]} per seed")
        cells = tuple(
            (
                label,
                *(f"{s:{metric_format(m)}}" for m, s in zip(self.metrics, spreads)),
                ", ".join(f"{v:{metric_format(first)}}" for v in spreads[0].values),
            )
            for label, spreads in self.rows
        )
        seeds = ", ".join(str(s) for s in self.seeds)
        return Table(f"{self.dataset}: {len(self.seeds)} seeds per variant ({seeds})", header, cells)

    def __str__(self) -> str:
        return str(self.table())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def metric_format(metric: str) -> str:
    """Accuracies in percent with 2 decimals; losses with 4 (they get small)."""
    return ".4f" if metric == "loss" else ".2f"


def results_table(runs: dict[str, SeedRuns], metrics: tuple[str, ...] = ("test_acc", "loss")) -> ResultsTable:
    """One row per variant: mean ± std of each metric, and the first metric's value for every seed."""
    if not runs:
        raise ValueError("runs is empty: give at least one {label: SeedRuns}.")
    metrics = tuple(metrics)
    if not metrics or any(m not in METRICS for m in metrics):
        raise ValueError(f"metrics must be one or more of {sorted(METRICS)}; got {metrics!r}.")
    seeds = {r.seeds for r in runs.values()}
    if len(seeds) != 1:
        raise ValueError(f"runs must all use the same seeds to share a table; got {sorted(seeds)}.")
    datasets = " + ".join(sorted({r.dataset for r in runs.values()}))
    rows = tuple((label, tuple(r.spread(m) for m in metrics)) for label, r in runs.items())
    return ResultsTable(datasets, seeds.pop(), metrics, rows)

"""Multi-seed experiments, cached on disk.

``run`` trains one configuration on one data set and stores its ``History`` as JSON, keyed by a hash of the
whole model configuration, the whole training configuration and the data set's fingerprint. Asking again returns
the stored run without training; changing anything in the key trains anew, so a stale result is never served.
Files are written to a temporary name and renamed into place, so an interrupted run never leaves a corrupt entry.

The cache lives in ``$BNLAB_CACHE``, else ``~/.cache/bnlab``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .data import Dataset
from .models import MLPConfig
from .training import History, TrainConfig, train_mlp

CACHE_ENV = "BNLAB_CACHE"
CACHE_FORMAT = 1  # bump when the meaning of a stored History changes


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bnlab").expanduser()


def run_key(model_config: MLPConfig, train_config: TrainConfig, data: Dataset) -> str:
    """The cache key: everything that can change the result."""
    spec = {
        "format": CACHE_FORMAT,
        "model": asdict(model_config),
        "train": asdict(train_config),
        "dataset": data.name,
        "data": data.fingerprint,
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def run(
    model_config: MLPConfig,
    train_config: TrainConfig,
    data: Dataset,
    *,
    cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> History:
    """One training run's history, from the cache when this exact run was done before."""
    path = cache_dir(cache) / f"run-{run_key(model_config, train_config, data)}.json"
    stored = read_history(path)
    if stored is not None:
        return stored
    _, history = train_mlp(model_config, data, train_config, device=device, progress=progress)
    write_json_atomic(path, history.to_dict())
    return history


def run_seeds(
    model_config: MLPConfig,
    train_config: TrainConfig,
    data: Dataset,
    seeds: tuple[int, ...],
    **kwargs,
) -> list[History]:
    """``run`` once per seed (the seed replaces ``train_config.seed``)."""
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed.")
    return [run(model_config, replace_seed(train_config, seed), data, **kwargs) for seed in seeds]


def replace_seed(config: TrainConfig, seed: int) -> TrainConfig:
    return TrainConfig(**{**asdict(config), "seed": seed})


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one number over seeds."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> "Spread":
        values = tuple(float(v) for v in values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, values)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"

    def __format__(self, spec: str) -> str:
        """``f"{spread:.4f}"`` formats mean and std alike; an empty spec gives ``str(spread)``."""
        return f"{self.mean:{spec}} ± {self.std:{spec}}" if spec else str(self)


def read_json(path: Path) -> dict | None:
    """The JSON stored at ``path``, or ``None`` if it is absent or unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_history(path: Path) -> History | None:
    """The ``History`` stored at ``path``, or ``None`` if it is absent, unreadable or not a whole History."""
    stored = read_json(path)
    if stored is None:
        return None
    try:
        history = History.from_dict(stored)
    except (KeyError, TypeError, ValueError, AttributeError):
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


# --- Several configurations, several seeds each: tables and comparisons ------------------------------------------

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
    model: MLPConfig
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
        return tuple(getattr(h.final, metric) for h in self.histories)

    def spread(self, metric: str = "test_acc") -> Spread:
        """Mean ± sample standard deviation of ``metric`` over the seeds."""
        return Spread.of(self.values(metric))

    def history(self, seed: int) -> History:
        """The run trained with ``seed``."""
        if seed not in self.seeds:
            raise ValueError(f"seed must be one of {self.seeds}; got {seed!r}.")
        return self.histories[self.seeds.index(seed)]


def run_variants(
    variants: dict[str, MLPConfig],
    train_config: TrainConfig,
    data: Dataset,
    seeds: tuple[int, ...],
    **kwargs,
) -> dict[str, SeedRuns]:
    """``run_seeds`` for every ``{label: model config}``; returns ``{label: SeedRuns}`` in the same order."""
    if not variants:
        raise ValueError("variants is empty: give at least one {label: MLPConfig}.")
    seeds = tuple(seeds)
    return {
        label: SeedRuns(label, model, seeds, tuple(run_seeds(model, train_config, data, seeds, **kwargs)))
        for label, model in variants.items()
    }


@dataclass(frozen=True)
class Comparison:
    """Two variants compared on one metric, against the seed-to-seed spread.

    ``difference = mean_a - mean_b``; ``spread = max(std_a, std_b)``, the larger sample standard deviation.
    The difference counts as *larger than the seed-to-seed spread* when ``|difference| > spread``.
    ``welch_t = difference / sqrt(std_a^2 / n_a + std_b^2 / n_b)`` is Welch's t-statistic, for readers who want it.
    """

    a: str
    b: str
    metric: str
    difference: float
    spread: float
    welch_t: float

    @property
    def exceeds_spread(self) -> bool:
        return abs(self.difference) > self.spread

    @property
    def verdict(self) -> str:
        """``"larger than"`` or ``"not larger than"`` (the seed-to-seed spread), as words for the prose."""
        return "larger than" if self.exceeds_spread else "not larger than"


def compare(a: SeedRuns, b: SeedRuns, metric: str = "test_acc") -> Comparison:
    """Compare ``a`` with ``b`` on ``metric``; both need at least two seeds (one seed has no spread)."""
    for name, runs in (("a", a), ("b", b)):
        if len(runs.seeds) < 2:
            raise ValueError(f"{name} ({runs.label!r}) has {len(runs.seeds)} seed; a spread needs at least 2 seeds.")
    sa, sb = a.spread(metric), b.spread(metric)
    difference = sa.mean - sb.mean
    standard_error = (sa.std**2 / len(sa.values) + sb.std**2 / len(sb.values)) ** 0.5
    if standard_error > 0:
        welch_t = difference / standard_error
    else:
        welch_t = 0.0 if difference == 0 else float("inf") if difference > 0 else float("-inf")
    return Comparison(a.label, b.label, metric, difference, max(sa.std, sb.std), welch_t)


def comparisons_table(comparisons, *, caption: str) -> Table:
    """One row per ``Comparison``: the difference of means, the larger std, Welch's t and the verdict."""
    comparisons = list(comparisons)
    if not comparisons:
        raise ValueError("comparisons is empty: give at least one Comparison.")
    fmt = metric_format(comparisons[0].metric)
    header = ("a", "b", "mean(a) - mean(b)", "larger std", "Welch t", "difference vs seed-to-seed spread")
    rows = tuple(
        (c.a, c.b, f"{c.difference:+{fmt}}", f"{c.spread:{fmt}}", f"{c.welch_t:+.1f}", c.verdict)
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

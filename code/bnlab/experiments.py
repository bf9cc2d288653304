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
    stored = read_json(path)
    if stored is not None:
        return History.from_dict(stored)
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


def read_json(path: Path) -> dict | None:
    """The JSON stored at ``path``, or ``None`` if it is absent or unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


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

"""Training curves: a metric against the epoch, one line per run, labelled with the data set they come from."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..training import History

METRIC_LABELS = {
    "loss": "training loss (mean over the epoch)",
    "train_acc": "training accuracy (%)",
    "val_acc": "validation accuracy (%)",
}


def plot_curves(runs: dict[str, History], metric: str = "val_acc", *, ax=None, title: str | None = None):
    """One line per run of ``metric`` against the epoch. Returns the axes."""
    if metric not in METRIC_LABELS:
        raise ValueError(f"metric must be one of {sorted(METRIC_LABELS)}; got {metric!r}.")
    if not runs:
        raise ValueError("runs is empty: give at least one {label: History}.")
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for label, history in runs.items():
        ax.plot(range(1, len(history.epochs) + 1), history.column(metric), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title(title or f"{METRIC_LABELS[metric]} ({dataset_of(runs)})")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_training(runs: dict[str, History], *, title: str | None = None):
    """Loss and validation accuracy side by side. Returns the figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    plot_curves(runs, "loss", ax=left, title="training loss")
    plot_curves(runs, "val_acc", ax=right, title="validation accuracy")
    if metric_is_log_friendly(runs):
        left.set_yscale("log")
    fig.suptitle(title or dataset_of(runs))
    fig.tight_layout()
    return fig


def dataset_of(runs: dict[str, History]) -> str:
    names = sorted({h.dataset for h in runs.values()})
    return " + ".join(names)


def metric_is_log_friendly(runs: dict[str, History]) -> bool:
    return all(loss > 0 for h in runs.values() for loss in h.column("loss"))

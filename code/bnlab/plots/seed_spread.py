"""Seed spreads: every seed's result as a dot, each variant's mean and standard deviation over the seeds."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..experiments import METRICS, SeedRuns


def plot_seed_spread(runs: dict[str, SeedRuns], metric: str = "test_acc", *, ax=None, colors: dict | None = None):
    """One dot per seed for every variant, its mean as a bar and mean ± std as a line. Returns the axes.

    ``colors`` maps a variant's label to its dots' colour (default: all blue)."""
    if not runs:
        raise ValueError("runs is empty: give at least one {label: SeedRuns}.")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}; got {metric!r}.")
    ax = ax or plt.subplots(figsize=(8, 4))[1]
    for i, r in enumerate(runs.values()):
        values = r.values(metric)
        n = len(values)
        offsets = [0.0] if n == 1 else [0.3 * (k / (n - 1) - 0.5) for k in range(n)]
        color = (colors or {}).get(r.label, "tab:blue")
        ax.scatter([i + o for o in offsets], values, s=18, color=color, alpha=0.8, zorder=3)
        spread = r.spread(metric)
        ax.hlines(spread.mean, i - 0.25, i + 0.25, color="black", linewidth=2, zorder=4)
        ax.vlines(i, spread.mean - spread.std, spread.mean + spread.std, color="black", linewidth=1, zorder=4)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels(list(runs), rotation=30, ha="right")
    ax.set_ylabel(METRICS[metric])
    seeds = len(next(iter(runs.values())).seeds)
    datasets = " + ".join(sorted({r.dataset for r in runs.values()}))
    ax.set_title(f"{METRICS[metric]}: {seeds} seeds per variant, bar = mean ({datasets})")
    ax.grid(axis="y", alpha=0.3)
    return ax

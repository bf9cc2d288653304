"""The figures of the chapter *BatchNorm in a CNN*, drawn from what ``bnlab.convnets`` computes: which values share
one mean and variance under each normaliser, test accuracy against batch size per normaliser, and fine-tuning
with BatchNorm in train mode or frozen."""

from __future__ import annotations

import statistics

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap

from ..convnets import AXES, BN_MODES, NORM_NAMES, FinetuneRun, SweepRun, statistic_groups
from ..stats import Spread

MODE_NAMES = {"train": "BatchNorm in train mode", "frozen": "BatchNorm frozen"}


def plot_statistic_groups(n: int = 4, c: int = 6, *, groups: int = 2):
    """One panel per normaliser in ``convnets.AXES``: an ``n`` x ``c`` grid of squares, one per image and channel
    (each square stands for that channel's ``H x W`` values); squares of one colour share one mean and variance.
    Returns the figure."""
    colors = ListedColormap([*plt.cm.tab20.colors, *plt.cm.tab20b.colors])
    if n * c > colors.N:
        raise ValueError(f"n * c must be at most {colors.N}, one colour per group; got n={n!r}, c={c!r}.")
    fig, axes = plt.subplots(1, len(AXES), figsize=(12, 2.8))
    for ax, (kind, axes_text) in zip(axes, AXES.items()):
        ids = statistic_groups(kind, n, c, groups=groups)
        ax.imshow(ids.numpy(), cmap=colors, vmin=-0.5, vmax=colors.N - 0.5)
        ax.set_xticks(range(c), [f"c{j}" for j in range(c)])
        ax.set_yticks(range(n), [f"n{i}" for i in range(n)])
        ax.set_xticks([j - 0.5 for j in range(1, c)], minor=True)
        ax.set_yticks([i - 0.5 for i in range(1, n)], minor=True)
        ax.grid(which="minor", color="white", linewidth=2)
        ax.tick_params(which="minor", length=0)
        ax.set_title(f"{kind}\nover {axes_text}", fontsize=9)
        ax.set_xlabel("channel (each square: H × W values)", fontsize=8)
    axes[0].set_ylabel("image in the batch")
    fig.tight_layout()
    return fig


def plot_batch_size_sweep(sweep: list[SweepRun], *, dataset: str, probe_images: int):
    """Two panels from ``convnets.batch_size_sweep``: test accuracy against batch size per normaliser (mean and
    standard deviation over the seeds), and BatchNorm's accuracy in train mode minus eval mode on the first
    ``probe_images`` test images. ``dataset`` names the data in the title. Returns the figure."""
    if not sweep:
        raise ValueError("sweep is empty: give the runs of convnets.batch_size_sweep.")
    batch_sizes = sorted({r.batch_size for r in sweep})
    norms = [norm for norm in NORM_NAMES if any(r.norm == norm for r in sweep)]
    n_seeds = len({r.seed for r in sweep})

    def spread(norm, batch_size, field):
        return Spread.of(getattr(r, field) for r in sweep if r.norm == norm and r.batch_size == batch_size)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for norm in norms:
        spreads = [spread(norm, b, "test_acc") for b in batch_sizes]
        left.errorbar(batch_sizes, [s.mean for s in spreads], yerr=[s.std for s in spreads], fmt="o-", capsize=3,
                      label=NORM_NAMES[norm])
    if "batch" in norms:
        gaps = [spread("batch", b, "gap") for b in batch_sizes]
        right.errorbar(batch_sizes, [s.mean for s in gaps], yerr=[s.std for s in gaps], fmt="o-", capsize=3,
                       color="tab:blue")
    right.axhline(0, color="black", linewidth=0.8)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.set_xlabel("batch size (learning rate 0.1 × batch size / 256)")
        ax.grid(alpha=0.3)
    left.set_ylabel("test accuracy (%), eval mode")
    left.set_title(f"Each normaliser (mean ± std over {n_seeds} seeds)")
    left.legend()
    right.set_ylabel("train mode minus eval mode (points)")
    right.set_title(f"BatchNorm: accuracy in train mode (batches of the\ntraining size) minus eval mode, "
                    f"{probe_images:,} test images")
    fig.suptitle(dataset)
    fig.tight_layout()
    return fig


def plot_finetuning(runs: list[FinetuneRun], *, dataset: str):
    """From ``convnets.finetune_comparison``: the test accuracy on the new digits after fine-tuning with BatchNorm
    in train mode and frozen, a line per seed joining its two runs and a bar at each mode's mean. Returns the
    axes."""
    by_mode = {mode: {r.seed: r.new_acc for r in runs if r.bn_mode == mode} for mode in BN_MODES}
    seeds = sorted(set(by_mode["train"]) & set(by_mode["frozen"]))
    if not seeds:
        raise ValueError("runs must hold at least one seed fine-tuned both ways (train and frozen).")
    ax = plt.subplots(figsize=(6, 4))[1]
    for seed in seeds:
        ax.plot([0, 1], [by_mode[mode][seed] for mode in BN_MODES], "o-", color="tab:gray", alpha=0.6)
    for i, mode in enumerate(BN_MODES):
        ax.hlines(statistics.fmean(by_mode[mode][s] for s in seeds), i - 0.15, i + 0.15, color="black", linewidth=2)
    ax.set_xticks(range(len(BN_MODES)), [MODE_NAMES[mode] for mode in BN_MODES])
    ax.set_xlim(-0.5, len(BN_MODES) - 0.5)
    ax.set_ylabel("test accuracy on the new digits (%)")
    ax.set_title(f"After fine-tuning (a line per seed, bar = mean; {dataset})")
    ax.grid(axis="y", alpha=0.3)
    return ax

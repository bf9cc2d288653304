"""Chapter 2's runs: training curves by BatchNorm placement, dropout probability and seed.

``placement_explorer(runs)`` is the interactive figure (embedded, ``bnlab.plots.interactive``): pick the
placement, the dropout probability and the seed, and see that run's training loss and validation accuracy, the
variant's other seeds in grey. ``live_placement_explorer`` is the same choice with ipywidgets, where a kernel runs;
``placement_overview`` draws every run at once (static).
"""

from __future__ import annotations

from typing import Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from ..experiments import SeedRuns
from .interactive import Control, Explorer, explorer
from .live import FigureExplorer, figure_explorer, seed_control

PLACEMENT_NAMES = {"before": "BN before ReLU", "after": "BN after ReLU", "none": "no BN"}
PLACEMENT_COLORS = {"before": "tab:blue", "after": "tab:orange", "none": "tab:gray"}
CURVE_LABELS = {
    "placement": "BatchNorm",
    "dropout": "dropout p",
    "epoch": "epoch",
    "loss": "training loss (mean over the epoch)",
    "val_acc": "validation accuracy (%)",
}


def index_by_placement(runs) -> dict[tuple[str, float], SeedRuns]:
    """``{(placement, dropout): SeedRuns}``; every pair once, every variant with the same seeds."""
    runs = list(runs.values()) if isinstance(runs, Mapping) else list(runs)
    if not runs or not all(isinstance(r, SeedRuns) for r in runs):
        raise ValueError("runs must be a non-empty {label: SeedRuns} mapping (what run_variants returns).")
    grid: dict[tuple[str, float], SeedRuns] = {}
    for r in runs:
        key = (r.model.placement, float(r.model.dropout))
        if key in grid:
            raise ValueError(
                f"runs: {grid[key].label!r} and {r.label!r} both have placement={key[0]!r}, dropout={key[1]}; "
                "give each (placement, dropout) pair once."
            )
        grid[key] = r
    seeds = {r.seeds for r in runs}
    if len(seeds) != 1:
        raise ValueError(f"runs must all use the same seeds; got {sorted(seeds)}.")
    return grid


def placement_records(runs) -> list[dict]:
    """Tidy records of every run: one per epoch, with its placement's name, dropout, seed, loss and accuracy."""
    return [
        {"placement": PLACEMENT_NAMES.get(placement, placement), "dropout": dropout, "seed": seed,
         "epoch": e.epoch, "loss": e.loss, "val_acc": e.val_acc}
        for (placement, dropout), variant in index_by_placement(runs).items()
        for seed, history in zip(variant.seeds, variant.histories)
        for e in history.epochs
    ]


def placement_explorer(runs, *, placement: str | None = None, dropout: float | None = None) -> Explorer:
    """The interactive figure of ``runs`` (``{label: SeedRuns}`` as ``run_variants`` returns it): placement,
    dropout and seed are chosen in the browser; ``placement`` and ``dropout`` are shown first (default: the
    first variant in ``runs``)."""
    grid = index_by_placement(runs)
    first = next(iter(grid))
    placement, dropout = check_choice(grid, placement, dropout)
    datasets = " + ".join(sorted({r.dataset for r in grid.values()}))
    return explorer(
        placement_records(runs),
        x="epoch",
        y=["loss", "val_acc"],
        color="placement",
        controls=[
            Control("placement", value=PLACEMENT_NAMES.get(placement, placement)),
            Control("dropout", value=dropout),
            Control("seed", highlight=True),
        ],
        labels=CURVE_LABELS,
        colors={PLACEMENT_NAMES[p]: c for p, c in PLACEMENT_COLORS.items()},
        log=["loss"],
        title=f"{len(grid[first].seeds)} seeds per variant ({datasets})",
        caption="Pick where BatchNorm goes, the dropout probability and the seed, and compare the chosen run (in "
        "colour) with its variant's other seeds (grey): does the placement change the curves more than the seed does?",
    )


def check_choice(grid, placement, dropout) -> tuple[str, float]:
    first = next(iter(grid))
    placements = [p for p in PLACEMENT_NAMES if any(k[0] == p for k in grid)]
    dropouts = sorted({k[1] for k in grid})
    placement = first[0] if placement is None else placement
    dropout = first[1] if dropout is None else float(dropout)
    if placement not in placements:
        raise ValueError(f"placement must be one of {placements}; got {placement!r}.")
    if dropout not in dropouts:
        raise ValueError(f"dropout must be one of {dropouts}; got {dropout!r}.")
    return placement, dropout


def live_placement_explorer(runs, *, placement: str | None = None, dropout: float | None = None) -> FigureExplorer:
    """Pick BatchNorm's placement, the dropout probability and the seed (ipywidgets); see that run's training curves.

    ``runs`` is ``{label: SeedRuns}`` as ``run_variants`` returns it (cached runs: redrawing is instant).
    The chosen seed is drawn in colour, the variant's other seeds in grey behind it. ``placement`` and ``dropout``
    choose the variant shown first (default: the first in ``runs``).
    """
    grid = index_by_placement(runs)
    placements = [p for p in PLACEMENT_NAMES if any(k[0] == p for k in grid)]
    dropouts = sorted({k[1] for k in grid})
    placement, dropout = check_choice(grid, placement, dropout)
    seeds = next(iter(grid.values())).seeds

    def draw(placement: str, dropout: float, seed: int):
        return draw_run(grid, placement=placement, dropout=dropout, seed=seed)

    controls = {
        "placement": widgets.Dropdown(
            options=[(PLACEMENT_NAMES[p], p) for p in placements], value=placement, description="BatchNorm"
        ),
        "dropout": widgets.Dropdown(
            options=[(f"{d:g}", d) for d in dropouts], value=dropout, description="dropout p"
        ),
        "seed": seed_control(seeds),
    }
    return figure_explorer(draw, controls)


def draw_run(grid: Mapping[tuple[str, float], SeedRuns], *, placement: str, dropout: float, seed: int):
    """Training loss and validation accuracy of one run (in colour, ``gid="selected"``), its variant's other
    seeds in grey. A (placement, dropout) pair that was not run gives a figure that says so."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    runs = grid.get((placement, float(dropout)))
    if runs is None:
        for ax in (left, right):
            ax.set_axis_off()
        fig.suptitle(f"{PLACEMENT_NAMES.get(placement, placement)}, dropout {dropout:g}: not among the runs")
        return fig
    color = PLACEMENT_COLORS.get(placement, "tab:blue")
    for ax, metric, ylabel in ((left, "loss", "training loss"), (right, "val_acc", "validation accuracy (%)")):
        for other_seed, history in zip(runs.seeds, runs.histories):
            if other_seed != seed:
                ax.plot(epochs_of(history), history.column(metric), color="0.75", linewidth=1)
        history = runs.history(seed)
        ax.plot(epochs_of(history), history.column(metric), color=color, linewidth=2, label=f"seed {seed}",
                gid="selected")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.set_yscale("log")
    left.legend(loc="upper right")
    history = runs.history(seed)
    fig.suptitle(
        f"{PLACEMENT_NAMES.get(placement, placement)}, dropout {dropout:g}, seed {seed}: "
        f"test accuracy {history.test_acc:.2f} % ({history.dataset}; grey: the other seeds)"
    )
    fig.tight_layout()
    return fig


def placement_overview(runs):
    """Every run at once, as the explorer shows them one at a time: one column per dropout probability, training
    loss above and validation accuracy below, one line per seed coloured by placement. Returns the figure."""
    grid = index_by_placement(runs)
    dropouts = sorted({k[1] for k in grid})
    fig, axes = plt.subplots(2, len(dropouts), figsize=(4.2 * len(dropouts), 7), sharey="row", squeeze=False)
    for column, dropout in enumerate(dropouts):
        for row, (metric, ylabel) in enumerate((("loss", "training loss"), ("val_acc", "validation accuracy (%)"))):
            ax = axes[row][column]
            for placement in PLACEMENT_NAMES:
                runs_here = grid.get((placement, dropout))
                if runs_here is None:
                    continue
                for k, history in enumerate(runs_here.histories):
                    ax.plot(epochs_of(history), history.column(metric), color=PLACEMENT_COLORS[placement],
                            linewidth=1, alpha=0.7, label=PLACEMENT_NAMES[placement] if k == 0 else None)
            if row == 0:
                ax.set_yscale("log")
                ax.set_title(f"dropout {dropout:g}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if column == 0:
                ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    datasets = " + ".join(sorted({r.dataset for r in grid.values()}))
    seeds = len(next(iter(grid.values())).seeds)
    fig.suptitle(f"Every run: {seeds} seeds per variant, one line each ({datasets})")
    fig.tight_layout()
    return fig


def epochs_of(history) -> list[int]:
    return [e.epoch for e in history.epochs]

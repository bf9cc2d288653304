"""Interactive explorers: controls that redraw a matplotlib figure.

The shared mechanism is ``figure_explorer(draw, controls)``: ``draw(**values)`` returns a new figure for the
controls' current values, and every change of a control redraws it into an ``Output`` under the controls. It uses
only ipywidgets API common to 7.x (Colab ships 7.7.1) and 8.x (``interactive_output``, ``Dropdown``,
``IntSlider``, ``FloatSlider``, ``Output``, ``HBox``/``VBox``), so an explorer works live in Jupyter and in
Colab; in a book built without a kernel, the figure drawn at execution time shows from the saved widget state.

A new explorer is a draw function and its controls::

    def draw(momentum):
        fig, ax = plt.subplots()
        ...
        return fig

    explorer = figure_explorer(draw, {"momentum": FloatSlider(value=0.1, min=0.0, max=1.0, step=0.05)})
    explorer  # last expression of a cell: shows the controls and the figure

``explorer.figure`` is the last figure drawn and ``explorer.values`` the values it was drawn for, so a test can
change ``explorer.controls[name].value`` and look at what was drawn, without a browser.

``placement_explorer(runs)`` is chapter 2's: pick BatchNorm's placement, the dropout probability and the seed,
and see that run's training curves from the cached runs. ``momentum_explorer()`` is chapter 4's: a momentum and a
batch size, and the running mean of a ``BatchNorm1d`` against the true mean.
"""

from __future__ import annotations

import io
from typing import Callable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from IPython.display import Image, display

from . import running_stats
from .experiments import SeedRuns

PLACEMENT_NAMES = {"before": "BN before ReLU", "after": "BN after ReLU", "none": "no BN"}
PLACEMENT_COLORS = {"before": "tab:blue", "after": "tab:orange", "none": "tab:gray"}


class FigureExplorer(widgets.VBox):
    """Controls above an ``Output`` that shows ``draw(**values)`` for the controls' current values.

    Attributes:
        controls: ``{keyword: control}``; each control's ``value`` is passed to ``draw`` under its keyword.
        output: the ``Output`` the figure is shown in.
        figure: the last figure ``draw`` returned (closed after display, still inspectable).
        values: the keyword values it was drawn for.
        draws: how many times ``draw`` has run.
    """

    def __init__(self, draw: Callable, controls: Mapping[str, widgets.ValueWidget], **kwargs):
        self.draw_figure = draw
        self.controls = dict(controls)
        self.figure = None
        self.values: dict = {}
        self.draws = 0
        self.output = widgets.interactive_output(self.show, self.controls)
        row = widgets.HBox(list(self.controls.values()))
        super().__init__(children=[row, self.output], **kwargs)

    def show(self, **values) -> None:
        """Draw the figure for ``values`` and display it (into ``output`` when called by ``interactive_output``)."""
        figure = self.draw_figure(**values)
        self.figure, self.values, self.draws = figure, values, self.draws + 1
        display(png_image(figure))
        plt.close(figure)  # shown once, inside the Output; not again by the inline backend at the end of the cell

    def redraw(self) -> None:
        """Draw again for the current values, into the Output."""
        with self.output:
            self.output.clear_output(wait=True)
            self.show(**{name: control.value for name, control in self.controls.items()})


def png_image(figure) -> Image:
    """The figure as a PNG image: it shows the same under every matplotlib backend, in Jupyter, Colab and in the
    widget state a built book renders."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi, bbox_inches="tight")
    return Image(data=buffer.getvalue(), format="png")


def figure_explorer(draw: Callable, controls: Mapping[str, widgets.ValueWidget]) -> FigureExplorer:
    """An explorer that redraws ``draw(**{name: control.value})`` whenever a control changes.

    ``draw`` must return a matplotlib figure; ``controls`` maps ``draw``'s keyword arguments to ipywidgets
    controls (``Dropdown``, ``IntSlider``, ``FloatSlider``, ...). The first figure is drawn at once.
    """
    if not callable(draw):
        raise ValueError(f"draw must be a function that returns a matplotlib figure; got {draw!r}.")
    if not isinstance(controls, Mapping) or not controls:
        raise ValueError("controls must be a non-empty {keyword: ipywidgets control} mapping.")
    for name, control in controls.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"controls: every key must be a keyword name for draw; got {name!r}.")
        if not isinstance(control, widgets.ValueWidget):
            raise ValueError(
                f"controls[{name!r}] must be an ipywidgets control with a value (Dropdown, IntSlider, ...); "
                f"got {type(control).__name__}."
            )
    return FigureExplorer(draw, controls)


def seed_control(seeds) -> widgets.ValueWidget:
    """An ``IntSlider`` when the seeds are consecutive integers, else a ``Dropdown`` of them."""
    seeds = tuple(seeds)
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 1:
        return widgets.IntSlider(value=seeds[0], min=seeds[0], max=seeds[-1], step=1, description="seed")
    return widgets.Dropdown(options=list(seeds), value=seeds[0], description="seed")


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


def placement_explorer(runs, *, placement: str | None = None, dropout: float | None = None) -> FigureExplorer:
    """Pick BatchNorm's placement, the dropout probability and the seed; see that run's training curves.

    ``runs`` is ``{label: SeedRuns}`` as ``run_variants`` returns it (cached runs: redrawing is instant).
    The chosen seed is drawn in colour, the variant's other seeds in grey behind it. ``placement`` and ``dropout``
    choose the variant shown first (default: the first in ``runs``).
    """
    grid = index_by_placement(runs)
    first = next(iter(grid))
    placements = [p for p in PLACEMENT_NAMES if any(k[0] == p for k in grid)]
    dropouts = sorted({k[1] for k in grid})
    placement = first[0] if placement is None else placement
    dropout = first[1] if dropout is None else float(dropout)
    if placement not in placements:
        raise ValueError(f"placement must be one of {placements}; got {placement!r}.")
    if dropout not in dropouts:
        raise ValueError(f"dropout must be one of {dropouts}; got {dropout!r}.")
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


MOMENTUM_BATCH_SIZES = (2, 8, 32, 64, 128, 512)


def momentum_explorer(*, momentum: float = 0.1, batch_size: int = 64, steps: int = 300) -> FigureExplorer:
    """A momentum slider (log scale, 0.001 to 1) and a batch-size choice; the figure is
    ``running_stats.running_mean_figure``: one run of ``running_mean`` over ``steps`` updates, its expected value
    and the true mean. ``momentum`` and ``batch_size`` are the values shown first."""
    running_stats.check_momentum(momentum, allow_none=False)
    if batch_size not in MOMENTUM_BATCH_SIZES:
        raise ValueError(f"batch_size must be one of {list(MOMENTUM_BATCH_SIZES)}; got {batch_size!r}.")

    def draw(momentum: float, batch_size: int):
        return running_stats.running_mean_figure(momentum=momentum, batch_size=batch_size, steps=steps)

    controls = {
        "momentum": widgets.FloatLogSlider(value=momentum, base=10, min=-3, max=0, step=0.1,
                                           description="momentum", readout_format=".3g"),
        "batch_size": widgets.Dropdown(options=list(MOMENTUM_BATCH_SIZES), value=batch_size,
                                       description="batch size"),
    }
    return figure_explorer(draw, controls)

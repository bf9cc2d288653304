"""Chapter 4's running mean: how ``running_mean`` of a ``BatchNorm1d`` follows batches from a known distribution.

The numbers come from ``bnlab.running_stats`` (``running_mean_trajectory``, ``expected_running_mean``); this module
draws them. ``plot_running_mean`` draws one setting (momentum, batch size), ``running_mean_figure`` one setting as
a figure of its own, ``trajectory_grid`` several settings at once. ``momentum_explorer`` is the interactive figure
(embedded, ``bnlab.plots.interactive``): a momentum slider and a batch-size choice over a precomputed grid of
settings; ``live_momentum_explorer`` recomputes any momentum with ipywidgets, where a kernel runs.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt

from .. import running_stats
from .interactive import Control, Explorer, explorer
from .live import FigureExplorer, figure_explorer

MOMENTUM_BATCH_SIZES = (2, 8, 32, 64, 128, 512)
# The interactive figure's momenta: 10^(k/4) from 0.001 to 1, evenly spaced on a log scale (0.001, 0.01, 0.1, 1 among them).
EXPLORER_MOMENTA = tuple(float(f"{10 ** (k / 4):.4g}") for k in range(-12, 1))
CURVE_COLORS = {"one run of running_mean": "tab:blue", "expected value": "tab:orange", "true mean": "black"}


def plot_running_mean(
    *,
    momentum: float | None = 0.1,
    batch_size: int = 64,
    steps: int = 300,
    true_mean: float = 2.0,
    true_std: float = 1.0,
    seed: int = 0,
    ax=None,
):
    """One setting: ``running_mean`` of a ``BatchNorm1d`` step by step (``running_mean_trajectory``), its
    expected value (``expected_running_mean``) and the true mean. Returns the axes."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    path = running_stats.running_mean_trajectory(
        momentum=momentum, batch_size=batch_size, steps=steps, true_mean=true_mean, true_std=true_std, seed=seed
    )
    ax.plot(path.numpy(), color="tab:blue", linewidth=1.2, label="running_mean")
    ax.plot(running_stats.expected_running_mean(momentum, steps, true_mean=true_mean).numpy(), color="tab:orange",
            linestyle=":", linewidth=1.5, label="expected value")
    ax.axhline(true_mean, color="black", linestyle="--", linewidth=1, label="true mean")
    name = "None (cumulative)" if momentum is None else f"{momentum:g}"
    ax.set_title(f"momentum {name}, batch size {batch_size}", fontsize=10)
    ax.set_xlabel("update (training step)")
    ax.set_ylabel("running_mean")
    ax.set_ylim(-0.1 * abs(true_mean) - 0.05, 1.5 * abs(true_mean) + 0.05)
    ax.grid(alpha=0.3)
    return ax


def running_mean_figure(*, momentum: float | None = 0.1, batch_size: int = 64, steps: int = 300, seed: int = 0):
    """``plot_running_mean`` for one setting as a figure of its own, with a legend (what the explorer draws)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    plot_running_mean(momentum=momentum, batch_size=batch_size, steps=steps, seed=seed, ax=ax)
    if momentum is not None:
        ax.set_title(f"momentum {momentum:.3g}, batch size {batch_size}: the start value weighs at most 1 % after "
                     f"{running_stats.steps_to_forget(momentum)} updates; then the noise is ±{running_stats.ema_noise(momentum, batch_size):.3f}",
                     fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def trajectory_grid(
    momenta=(0.5, 0.1, 0.01),
    batch_sizes=(8, 64, 512),
    *,
    steps: int = 300,
    true_mean: float = 2.0,
    true_std: float = 1.0,
    seed: int = 0,
):
    """``plot_running_mean`` for every momentum (rows) and batch size (columns). Returns the figure."""
    momenta, batch_sizes = tuple(momenta), tuple(batch_sizes)
    if not momenta or not batch_sizes:
        raise ValueError("momenta and batch_sizes must each hold at least one value.")
    fig, axes = plt.subplots(len(momenta), len(batch_sizes), figsize=(3.6 * len(batch_sizes), 2.6 * len(momenta)),
                             sharex=True, sharey=True, squeeze=False)
    for row, momentum in enumerate(momenta):
        for column, batch_size in enumerate(batch_sizes):
            ax = plot_running_mean(momentum=momentum, batch_size=batch_size, steps=steps, true_mean=true_mean,
                                   true_std=true_std, seed=seed, ax=axes[row][column])
            if row < len(momenta) - 1:
                ax.set_xlabel("")
            if column > 0:
                ax.set_ylabel("")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"running_mean of BatchNorm1d, start value 0, data N({true_mean:g}, {true_std:g}²)")
    fig.tight_layout()
    return fig


def momentum_records(
    momenta=EXPLORER_MOMENTA, batch_sizes=MOMENTUM_BATCH_SIZES, *, steps: int = 300, every: int = 2,
    true_mean: float = 2.0, seed: int = 0,
) -> list[dict]:
    """Tidy records for the interactive figure: one run of ``running_mean`` per momentum and batch size, its
    expected value per momentum (any batch size) and the true mean, at every ``every``-th update."""
    if not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every must be a positive integer (keep every n-th update); got {every!r}.")
    kept = range(0, steps + 1, every)
    records = [{"curve": "true mean", "update": k, "value": true_mean} for k in (0, steps)]
    for momentum in momenta:
        expected = running_stats.expected_running_mean(momentum, steps, true_mean=true_mean).tolist()
        records += [{"curve": "expected value", "momentum": momentum, "update": k, "value": expected[k]} for k in kept]
        for batch_size in batch_sizes:
            path = running_stats.running_mean_trajectory(
                momentum=momentum, batch_size=batch_size, steps=steps, true_mean=true_mean, seed=seed
            ).tolist()
            records += [{"curve": "one run of running_mean", "momentum": momentum, "batch_size": batch_size,
                         "update": k, "value": path[k]} for k in kept]
    return records


def momentum_explorer(*, momentum: float = 0.1, batch_size: int = 64, steps: int = 300, every: int = 2) -> Explorer:
    """The interactive figure: a momentum slider (log scale, 0.001 to 1) and a batch-size choice; one run of
    ``running_mean`` over ``steps`` updates (every ``every``-th drawn), its expected value and the true mean."""
    running_stats.check_momentum(momentum, allow_none=False)
    if momentum not in EXPLORER_MOMENTA:
        raise ValueError(f"momentum must be one of {list(EXPLORER_MOMENTA)}; got {momentum!r}.")
    if batch_size not in MOMENTUM_BATCH_SIZES:
        raise ValueError(f"batch_size must be one of {list(MOMENTUM_BATCH_SIZES)}; got {batch_size!r}.")
    drawn = "every update" if every == 1 else f"every {ordinal(every)} update"
    return explorer(
        momentum_records(steps=steps, every=every),
        x="update",
        y="value",
        color="curve",
        controls=[
            Control("momentum", label="momentum", input="log slider", value=momentum),
            Control("batch_size", label="batch size", value=batch_size),
        ],
        labels={"update": "update (training step)", "value": "running_mean", "curve": "curve"},
        colors=CURVE_COLORS,
        domains={"value": (-0.25, 3.05)},
        title=f"BatchNorm1d(1) on batches from N(2, 1), start value 0; {drawn} drawn",
        caption="Slide the momentum down to 0.01 and watch the start value linger; then change the batch size and "
        f"see that it shrinks the noise, not the memory ({drawn} of {steps} is drawn).",
    )


def ordinal(n: int) -> str:
    return {2: "second", 3: "third", 4: "fourth", 5: "fifth"}.get(n, f"{n}th")


def live_momentum_explorer(*, momentum: float = 0.1, batch_size: int = 64, steps: int = 300) -> FigureExplorer:
    """A momentum slider (log scale, 0.001 to 1) and a batch-size choice (ipywidgets); the figure is
    ``running_mean_figure``: one run of ``running_mean`` over ``steps`` updates, its expected value and the true
    mean. ``momentum`` and ``batch_size`` are the values shown first."""
    running_stats.check_momentum(momentum, allow_none=False)
    if batch_size not in MOMENTUM_BATCH_SIZES:
        raise ValueError(f"batch_size must be one of {list(MOMENTUM_BATCH_SIZES)}; got {batch_size!r}.")

    def draw(momentum: float, batch_size: int):
        return running_mean_figure(momentum=momentum, batch_size=batch_size, steps=steps)

    controls = {
        "momentum": widgets.FloatLogSlider(value=momentum, base=10, min=-3, max=0, step=0.1,
                                           description="momentum", readout_format=".3g"),
        "batch_size": widgets.Dropdown(options=list(MOMENTUM_BATCH_SIZES), value=batch_size,
                                       description="batch size"),
    }
    return figure_explorer(draw, controls)

"""What reaches an activation while a network trains: histograms of the values ``bnlab.batchnorm``'s
``preactivations_during_training`` records, one row per variant and one panel per epoch (chapter 1)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def plot_preactivation_histograms(
    snapshots: dict[str, dict[int, torch.Tensor]], *, bins: int = 60, title: str | None = None
):
    """One row per variant, one panel per recorded epoch: the histogram of every value that reached the ReLU
    (all units of the layer, all probe images), with its mean and standard deviation. ``snapshots`` is
    ``{label: {epoch: (N, units) tensor}}``, as ``bnlab.batchnorm.preactivations_during_training`` returns for one
    variant. All panels share the x axis, so that widths compare across rows. Returns the figure."""
    if not snapshots or not all(snapshots.values()):
        raise ValueError("snapshots is empty: give {label: {epoch: tensor}} with at least one epoch per label.")
    epochs = [sorted(s) for s in snapshots.values()]
    if any(e != epochs[0] for e in epochs):
        raise ValueError(f"every variant must record the same epochs; got {epochs}.")
    epochs = epochs[0]
    values = [v.flatten().float() for s in snapshots.values() for v in s.values()]
    low = min(v.quantile(0.001).item() for v in values)
    high = max(v.quantile(0.999).item() for v in values)
    fig, axes = plt.subplots(len(snapshots), len(epochs), figsize=(3 * len(epochs), 2.4 * len(snapshots)),
                             sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, (label, recorded) in enumerate(snapshots.items()):
        for column, epoch in enumerate(epochs):
            ax = axes[row, column]
            v = recorded[epoch].flatten().float()
            color = colors[row % len(colors)]
            ax.hist(v.clamp(low, high).numpy(), bins=bins, range=(low, high), color=color, alpha=0.8)
            ax.set_title(f"{label}, epoch {epoch}\nmean {v.mean():.2f}, std {v.std():.2f}", fontsize=10)
            ax.set_yticks([])
            ax.axvline(0, color="black", linewidth=0.6)
        axes[row, 0].set_ylabel("count")
    for ax in axes[-1]:
        ax.set_xlabel("input to the first ReLU")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

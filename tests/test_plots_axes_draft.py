import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from bnlab.plots_axes_draft import SHADE, draw_block, plot_preactivation_histograms, plot_statistics_axes
from matplotlib.colors import to_rgba
import matplotlib.pyplot as plt


def shaded(ax):
    return sum(p.get_facecolor()[:3] == to_rgba(SHADE)[:3] for p in ax.patches)


def test_one_channels_cells_are_shaded_across_the_batch_and_the_depth():
    fig = plot_statistics_axes()
    flat, sequence, image = fig.axes
    assert shaded(flat) == 6  # (N, C): N cells of the channel
    assert shaded(sequence) == 6 + 5  # (N, C, L): N cells in front, L cells on top
    assert shaded(image) == 6 + 5
    assert [len(ax.patches) for ax in fig.axes] == [6 * 4, 6 * 4 + 4 * 5 + 6 * 5, 6 * 4 + 4 * 5 + 6 * 5]
    assert "over N, H and W" in image.get_title()


def test_the_last_channel_shades_the_side_of_the_block_too():
    ax = plt.subplots()[1]
    draw_block(ax, 3, 2, 4, channel=1)
    assert shaded(ax) == 3 + 4 + 3 * 4


def test_histograms_one_row_per_variant_one_panel_per_epoch_with_mean_and_std():
    snapshots = {
        "BatchNorm": {0: torch.randn(100, 5), 3: torch.randn(100, 5)},
        "no BatchNorm": {0: torch.zeros(100, 5) + 2.0, 3: torch.full((100, 5), 4.0)},
    }
    fig = plot_preactivation_histograms(snapshots)
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2].startswith("no BatchNorm, epoch 0") and "mean 2.00, std 0.00" in titles[2]
    assert titles[3].startswith("no BatchNorm, epoch 3") and "mean 4.00" in titles[3]


def test_histograms_need_the_same_epochs_for_every_variant():
    with pytest.raises(ValueError, match="the same epochs"):
        plot_preactivation_histograms({"a": {0: torch.zeros(4, 2)}, "b": {1: torch.zeros(4, 2)}})
    with pytest.raises(ValueError, match="snapshots is empty"):
        plot_preactivation_histograms({})

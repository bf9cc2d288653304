import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgba

from bnlab.plots import plot_statistics_axes
from bnlab.plots.statistics_axes import SHADE, draw_block


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

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from bnlab.plots import plot_preactivation_histograms


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

import matplotlib

matplotlib.use("Agg")

import pytest

from bnlab.plots.curves import plot_curves, plot_training
from bnlab.training import EpochStats, History


def history(dataset="MNIST-10k subset", losses=(1.0, 0.5, 0.2)):
    epochs = [EpochStats(i + 1, loss, 80 + i, 70 + i, 0.1) for i, loss in enumerate(losses)]
    return History(dataset, "cpu", epochs, 75.0)


def test_one_line_per_run_labelled_with_the_data_set():
    ax = plot_curves({"BN": history(), "no BN": history(losses=(2.0, 1.0, 0.9))}, "loss")
    assert [line.get_label() for line in ax.get_lines()] == ["BN", "no BN"]
    assert list(ax.get_lines()[1].get_ydata()) == [2.0, 1.0, 0.9]
    assert "MNIST-10k subset" in ax.get_title()


def test_training_figure_names_every_data_set_it_shows():
    fig = plot_training({"a": history(), "b": history(dataset="MNIST")})
    assert fig._suptitle.get_text() == "MNIST + MNIST-10k subset"
    assert len(fig.axes) == 2


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_curves({"a": history()}, "accuracy")
    with pytest.raises(ValueError, match="runs is empty"):
        plot_curves({}, "loss")

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgb

from bnlab.experiments import SeedRuns
from bnlab.models import MLPConfig
from bnlab.plots.seed_spread import plot_seed_spread
from bnlab.training import EpochStats, History


def seed_runs(label, test_accs, *, losses=None, dataset="MNIST-10k subset"):
    losses = losses or [0.1] * len(test_accs)
    histories = [
        History(dataset, "cpu", [EpochStats(1, 1.0, 80.0, 70.0, 0.1), EpochStats(2, loss, 81.0, 71.0, 0.1)], acc)
        for acc, loss in zip(test_accs, losses)
    ]
    return SeedRuns(label, MLPConfig(), tuple(range(1, len(test_accs) + 1)), tuple(histories))


def test_the_spread_plot_shows_one_dot_per_seed_and_the_data_set():
    runs = {"a": seed_runs("a", [97.0, 98.0, 96.0]), "b": seed_runs("b", [90.0, 91.0, 92.0])}
    ax = plot_seed_spread(runs)
    dots = [tuple(y for _, y in c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]
    assert dots == [(97.0, 98.0, 96.0), (90.0, 91.0, 92.0)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert "MNIST-10k subset" in ax.get_title()
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_seed_spread(runs, "accuracy")


def test_the_spread_plot_colours_each_variant_as_asked():
    runs = {"a": seed_runs("a", [97.0, 98.0]), "b": seed_runs("b", [90.0, 91.0])}
    ax = plot_seed_spread(runs, "loss", colors={"b": "red"})
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [tuple(c.get_facecolor()[0][:3]) for c in dots] == [to_rgb("tab:blue"), to_rgb("red")]


def test_the_spread_plot_marks_each_variants_mean_and_standard_deviation():
    runs = {"a": seed_runs("a", [97.0, 98.0, 96.0])}  # mean 97, sample std 1
    ax = plot_seed_spread(runs)
    (bar, whisker) = [c for c in ax.collections if not isinstance(c, PathCollection)]
    assert bar.get_segments()[0][:, 1].tolist() == [97.0, 97.0]
    assert whisker.get_segments()[0][:, 1].tolist() == pytest.approx([96.0, 98.0])
    with pytest.raises(ValueError, match="runs is empty"):
        plot_seed_spread({})

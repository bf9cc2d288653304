"""bnlab.plots.convnets: the CNN chapter's figures draw what the runs hold: one colour per shared mean and variance,
one line per normaliser at each batch size with its mean over the seeds, one line per seed between the two ways
of fine-tuning."""

import statistics

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from bnlab.convnets import AXES, FinetuneRun, SweepRun, statistic_groups
from bnlab.plots.convnets import plot_batch_size_sweep, plot_finetuning, plot_statistic_groups


def test_each_panel_shows_the_groups_of_its_normaliser():
    fig = plot_statistic_groups(4, 6, groups=2)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == list(AXES)
    for ax, kind in zip(fig.axes, AXES):
        image = ax.images[0]
        shown = torch.as_tensor(image.get_array())
        assert torch.equal(shown, statistic_groups(kind, 4, 6, groups=2))
        colours = {tuple(image.to_rgba(v)) for v in shown.flatten().tolist()}  # one colour per group, none shared
        assert len(colours) == len(shown.unique()) == {"BatchNorm": 6, "LayerNorm-style": 4, "GroupNorm": 8,
                                                       "InstanceNorm": 24}[kind]
    with pytest.raises(ValueError, match="one colour per group"):
        plot_statistic_groups(8, 6)


def sweep_runs():
    runs = []
    for norm, base in (("batch", 90.0), ("group", 92.0)):
        for batch_size in (2, 16):
            for seed in (1, 2, 3):
                gap = (seed - 2) * 0.5 - batch_size / 8 if norm == "batch" else None
                runs.append(SweepRun(norm, batch_size, seed, 0.01, base + batch_size / 4 + seed, gap, 0.1))
    return runs


def test_the_sweep_draws_each_normalisers_mean_over_the_seeds_and_batchnorms_gap():
    fig = plot_batch_size_sweep(sweep_runs(), dataset="MNIST (first 3,000 training images)", probe_images=500)
    left, right = fig.axes
    lines = {container.get_label(): container.lines[0] for container in left.containers}
    assert set(lines) == {"BatchNorm", "GroupNorm"}
    assert list(lines["BatchNorm"].get_xdata()) == [2, 16]
    assert list(lines["BatchNorm"].get_ydata()) == pytest.approx([90.5 + 2, 94 + 2])
    assert list(lines["GroupNorm"].get_ydata()) == pytest.approx([92.5 + 2, 96 + 2])
    gap = right.containers[0].lines[0]
    assert list(gap.get_ydata()) == pytest.approx([-0.25, -2.0])
    assert fig._suptitle.get_text() == "MNIST (first 3,000 training images)" and "500 test images" in right.get_title()


def test_an_empty_sweep_is_refused():
    with pytest.raises(ValueError, match="sweep is empty"):
        plot_batch_size_sweep([], dataset="x", probe_images=1)


def test_fine_tuning_joins_each_seeds_two_runs_and_marks_the_means():
    runs = [FinetuneRun(seed, mode, acc, 0.1, 0.0, 1.0)
            for seed, (train, frozen) in {1: (80.0, 70.0), 2: (84.0, 75.0)}.items()
            for mode, acc in (("train", train), ("frozen", frozen))]
    ax = plot_finetuning(runs, dataset="MNIST, digits 5-9")
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[80.0, 70.0], [84.0, 75.0]]
    means = sorted(segment[0][1] for collection in ax.collections for segment in collection.get_segments())
    assert means == [statistics.fmean([70.0, 75.0]), statistics.fmean([80.0, 84.0])]
    assert "MNIST, digits 5-9" in ax.get_title()
    with pytest.raises(ValueError, match="both ways"):
        plot_finetuning([r for r in runs if r.bn_mode == "train"], dataset="x")

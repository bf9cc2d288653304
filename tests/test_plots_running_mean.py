import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from bnlab import running_stats
from bnlab.plots.running_mean import (
    EXPLORER_MOMENTA,
    live_momentum_explorer,
    momentum_explorer,
    momentum_records,
    running_mean_figure,
    trajectory_grid,
)


# --- static figures --------------------------------------------------------------------------------------------------


def test_plots_label_each_setting():
    fig = trajectory_grid((0.5, 0.01), (8, 64), steps=20)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["momentum 0.5, batch size 8", "momentum 0.5, batch size 64",
                      "momentum 0.01, batch size 8", "momentum 0.01, batch size 64"]
    plt.close(fig)
    fig = running_mean_figure(momentum=0.1, batch_size=32, steps=20)
    line = fig.axes[0].get_lines()[0]
    assert torch.allclose(torch.tensor(line.get_ydata(), dtype=torch.float64),
                          running_stats.running_mean_trajectory(momentum=0.1, batch_size=32, steps=20))
    assert "44 updates" in fig.axes[0].get_title()  # 0.9^44 <= 1 % < 0.9^43
    plt.close(fig)


def test_the_grid_needs_a_momentum_and_a_batch_size():
    with pytest.raises(ValueError, match="at least one value"):
        trajectory_grid((), (8,))


# --- the interactive figure -----------------------------------------------------------------------------------------


def test_explorer_momenta_are_a_log_grid_from_0_001_to_1_with_the_round_values():
    logs = [math.log10(m) for m in EXPLORER_MOMENTA]
    assert EXPLORER_MOMENTA[0] == 0.001 and EXPLORER_MOMENTA[-1] == 1.0
    assert {0.001, 0.01, 0.1, 1.0} <= set(EXPLORER_MOMENTA)
    assert all(abs(b - a - 0.25) < 1e-3 for a, b in zip(logs, logs[1:]))


def test_records_hold_each_run_its_expected_value_and_the_true_mean_at_every_kept_update():
    records = momentum_records((0.1, 0.5), (8, 64), steps=10, every=2)
    run = [r["value"] for r in records if r["curve"] == "one run of running_mean" and r["momentum"] == 0.5
           and r["batch_size"] == 8]
    full = running_stats.running_mean_trajectory(momentum=0.5, batch_size=8, steps=10).tolist()
    assert run == full[::2]
    expected = [r for r in records if r["curve"] == "expected value" and r["momentum"] == 0.1]
    assert "batch_size" not in expected[0]  # the same for every batch size: shown for each
    assert [r["value"] for r in expected] == running_stats.expected_running_mean(0.1, 10).tolist()[::2]
    assert [(r["update"], r["value"]) for r in records if r["curve"] == "true mean"] == [(0, 2.0), (10, 2.0)]
    with pytest.raises(ValueError, match="every must be a positive integer"):
        momentum_records(every=0)


def test_the_interactive_figure_shows_the_chosen_setting_and_says_it_is_downsampled():
    figure = momentum_explorer(momentum=0.1, batch_size=64)
    controls = {c.field: c for c in figure.controls}
    assert controls["momentum"].input == "log slider" and controls["momentum"].options == EXPLORER_MOMENTA
    assert controls["batch_size"].input == "select"
    shown = figure.shown({"momentum": 0.01, "batch_size": 8})
    run = [r["value"] for r in shown if r["curve"] == "one run of running_mean"]
    expected = running_stats.running_mean_trajectory(momentum=0.01, batch_size=8, steps=300).tolist()[::2]
    assert run == pytest.approx(expected, rel=1e-3)  # embedded with 4 significant digits
    assert {r["curve"] for r in shown} == {"one run of running_mean", "expected value", "true mean"}
    assert "every second update" in figure.caption
    assert figure.page_weight < 1_000_000


def test_the_interactive_figure_rejects_settings_it_has_not_computed():
    with pytest.raises(ValueError, match="momentum must be one of"):
        momentum_explorer(momentum=0.2)
    with pytest.raises(ValueError, match="batch_size must be one of"):
        momentum_explorer(batch_size=3)


# --- the live explorer (ipywidgets) ---------------------------------------------------------------------------------


def test_live_momentum_explorer_draws_the_running_mean_for_the_chosen_setting():
    explorer = live_momentum_explorer(momentum=0.1, batch_size=64, steps=50)
    line = explorer.figure.axes[0].get_lines()[0]
    expected = running_stats.running_mean_trajectory(momentum=0.1, batch_size=64, steps=50)
    assert list(line.get_ydata()) == pytest.approx(expected.tolist())

    explorer.controls["batch_size"].value = 8
    explorer.controls["momentum"].value = 0.01
    assert explorer.values == {"momentum": pytest.approx(0.01), "batch_size": 8}
    line = explorer.figure.axes[0].get_lines()[0]
    expected = running_stats.running_mean_trajectory(momentum=explorer.values["momentum"], batch_size=8, steps=50)
    assert list(line.get_ydata()) == pytest.approx(expected.tolist())
    assert "batch size 8" in explorer.figure.axes[0].get_title()


def test_live_momentum_explorer_rejects_bad_start_values():
    with pytest.raises(ValueError, match="momentum"):
        live_momentum_explorer(momentum=0)
    with pytest.raises(ValueError, match="batch_size must be one of"):
        live_momentum_explorer(batch_size=3)

import matplotlib

matplotlib.use("Agg")

import ipywidgets
import pytest

from bnlab.experiments import SeedRuns
from bnlab.models import MLPConfig
from bnlab.plots.placement import (
    PLACEMENT_NAMES,
    live_placement_explorer,
    placement_explorer,
    placement_overview,
    placement_records,
)
from bnlab.training import EpochStats, History


def history(losses, val_accs, test_acc, dataset="MNIST-10k subset"):
    epochs = [EpochStats(i + 1, loss, 90.0, acc, 0.1) for i, (loss, acc) in enumerate(zip(losses, val_accs))]
    return History(dataset, "cpu", epochs, test_acc)


def variant(placement, dropout, seeds=(1, 2, 3)):
    """Distinct, recognisable curves per (placement, dropout, seed)."""
    base = {"none": 20.0, "before": 10.0, "after": 5.0}[placement] + 3 * dropout
    histories = tuple(
        history([base + seed, (base + seed) / 2, (base + seed) / 4], [50.0 + seed, 60.0 + seed, 70.0 + seed + dropout],
                test_acc=80.0 + seed + dropout)
        for seed in seeds
    )
    model = MLPConfig(placement=placement, dropout=dropout)
    return SeedRuns(f"{placement} {dropout:g}", model, tuple(seeds), histories)


@pytest.fixture
def runs():
    cells = [(p, d) for d in (0.0, 0.5) for p in ("before", "after")] + [("none", 0.0)]
    return {v.label: v for v in (variant(p, d) for p, d in cells)}


def selected_line(figure, panel=0):
    (line,) = [line for line in figure.axes[panel].get_lines() if line.get_gid() == "selected"]
    return line


# --- the interactive figure -----------------------------------------------------------------------------------------


def test_records_hold_every_epoch_of_every_run_once(runs):
    records = placement_records(runs)
    assert len(records) == 5 * 3 * 3  # variants x seeds x epochs
    after = [r["loss"] for r in records if r["placement"] == "BN after ReLU" and r["dropout"] == 0.5 and r["seed"] == 2]
    assert after == runs["after 0.5"].history(2).column("loss")


def test_the_interactive_figure_offers_what_was_run_and_shows_the_first_variant(runs):
    figure = placement_explorer(runs)
    controls = {c.field: c for c in figure.controls}
    assert controls["placement"].options == ("BN before ReLU", "BN after ReLU", "no BN")
    assert controls["dropout"].options == (0.0, 0.5)
    assert controls["seed"].input == "slider" and controls["seed"].highlight
    assert figure.values == {"placement": "BN before ReLU", "dropout": 0.0, "seed": 1}
    shown = figure.shown()
    assert [r["loss"] for r in shown] == runs["before 0"].history(1).column("loss")
    assert {r["seed"] for r in figure.shown(others=True)} == {2, 3}  # grey behind the chosen seed
    chosen = figure.shown({"placement": "BN after ReLU", "dropout": 0.5, "seed": 3})
    assert [r["val_acc"] for r in chosen] == runs["after 0.5"].history(3).column("val_acc")
    assert figure.shown({"placement": "no BN", "dropout": 0.5}) == []  # not run: nothing drawn


def test_the_interactive_figure_names_the_data_set_and_the_first_variant_can_be_chosen(runs):
    figure = placement_explorer(runs, placement="after", dropout=0.5)
    assert figure.values["placement"] == PLACEMENT_NAMES["after"] and figure.values["dropout"] == 0.5
    assert "MNIST-10k subset" in figure.spec["title"]["subtitle"]
    assert figure.page_weight < 1_000_000
    with pytest.raises(ValueError, match="placement must be one of"):
        placement_explorer(runs, placement="middle")


# --- the live explorer (ipywidgets) ------------------------------------------------------------------------------


def test_placement_explorer_draws_the_chosen_run(runs):
    explorer = live_placement_explorer(runs, placement="before", dropout=0.0)
    assert explorer.values == {"placement": "before", "dropout": 0.0, "seed": 1}
    assert list(selected_line(explorer.figure, 0).get_ydata()) == runs["before 0"].history(1).column("loss")

    explorer.controls["seed"].value = 3
    assert list(selected_line(explorer.figure, 0).get_ydata()) == runs["before 0"].history(3).column("loss")
    assert list(selected_line(explorer.figure, 1).get_ydata()) == runs["before 0"].history(3).column("val_acc")
    assert len(explorer.figure.axes[0].get_lines()) == 3  # the chosen seed and the other two in grey

    explorer.controls["placement"].value = "after"
    explorer.controls["dropout"].value = 0.5
    assert explorer.values == {"placement": "after", "dropout": 0.5, "seed": 3}
    assert list(selected_line(explorer.figure, 1).get_ydata()) == runs["after 0.5"].history(3).column("val_acc")
    title = explorer.figure._suptitle.get_text()
    assert "BN after ReLU" in title and "seed 3" in title and "MNIST-10k subset" in title
    assert f"{runs['after 0.5'].history(3).test_acc:.2f}" in title


def test_placement_explorer_offers_exactly_what_was_run(runs):
    explorer = live_placement_explorer(runs)
    assert [value for _, value in explorer.controls["placement"].options] == ["before", "after", "none"]
    assert [value for _, value in explorer.controls["dropout"].options] == [0.0, 0.5]
    seed = explorer.controls["seed"]
    assert isinstance(seed, ipywidgets.IntSlider) and (seed.min, seed.max) == (1, 3)
    assert explorer.values["placement"] == "before"  # the first variant given


def test_a_combination_that_was_not_run_says_so(runs):
    explorer = live_placement_explorer(runs)
    explorer.controls["placement"].value = "none"
    explorer.controls["dropout"].value = 0.5
    assert "not among the runs" in explorer.figure._suptitle.get_text()
    assert all(not ax.get_lines() for ax in explorer.figure.axes)


def test_seeds_that_are_not_consecutive_get_a_dropdown():
    runs = [variant("before", 0.0, seeds=(1, 5, 9)), variant("after", 0.0, seeds=(1, 5, 9))]
    explorer = live_placement_explorer(runs)
    assert isinstance(explorer.controls["seed"], ipywidgets.Dropdown)
    explorer.controls["seed"].value = 9
    assert list(selected_line(explorer.figure).get_ydata()) == runs[0].history(9).column("loss")


def test_bad_placement_explorer_arguments_are_clear_errors(runs):
    with pytest.raises(ValueError, match="non-empty"):
        live_placement_explorer({})
    with pytest.raises(ValueError, match="SeedRuns"):
        live_placement_explorer({"a": "not runs"})
    with pytest.raises(ValueError, match="give each"):
        live_placement_explorer([variant("before", 0.0), variant("before", 0.0)])
    with pytest.raises(ValueError, match="same seeds"):
        live_placement_explorer([variant("before", 0.0), variant("after", 0.0, seeds=(1, 2))])
    with pytest.raises(ValueError, match="placement must be one of"):
        live_placement_explorer(runs, placement="middle")
    with pytest.raises(ValueError, match="dropout must be one of"):
        live_placement_explorer(runs, dropout=0.3)


def test_the_overview_shows_every_run_once_per_panel(runs):
    fig = placement_overview(runs)
    assert len(fig.axes) == 4  # loss and validation accuracy, for dropout 0 and 0.5
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(by_title) == {"dropout 0", "dropout 0.5"}
    assert len(by_title["dropout 0"].get_lines()) == 9  # before, after, none: 3 seeds each
    assert len(by_title["dropout 0.5"].get_lines()) == 6
    drawn = {tuple(line.get_ydata()) for ax in fig.axes for line in ax.get_lines()}
    for r in runs.values():
        for h in r.histories:
            assert tuple(h.column("loss")) in drawn and tuple(h.column("val_acc")) in drawn
    assert "MNIST-10k subset" in fig._suptitle.get_text()

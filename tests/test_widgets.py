import ast
import inspect

import matplotlib

matplotlib.use("Agg")

import ipywidgets
import pytest

from bnlab import widgets
from bnlab.experiments import SeedRuns
from bnlab.models import MLPConfig
from bnlab.training import EpochStats, History
from bnlab.widgets import figure_explorer, placement_explorer, placement_overview

# ipywidgets names that exist, with the same meaning, in 7.x (Colab ships 7.7.1) and in 8.x.
COMMON_TO_7_AND_8 = {
    "interactive_output", "interactive", "Dropdown", "IntSlider", "FloatSlider", "FloatLogSlider", "Output", "HBox", "VBox",
    "ValueWidget",
}


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


# --- the shared mechanism ------------------------------------------------------------------------------------------


def test_an_explorer_draws_at_once_and_redraws_when_a_control_changes():
    import matplotlib.pyplot as plt

    drawn = []

    def draw(scale, offset):
        drawn.append((scale, offset))
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [offset, offset + scale, offset + 2 * scale])
        return fig

    explorer = figure_explorer(draw, {
        "scale": ipywidgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.5),
        "offset": ipywidgets.IntSlider(value=0, min=0, max=5),
    })
    assert drawn == [(1.0, 0)] and explorer.draws == 1
    first = explorer.figure

    explorer.controls["scale"].value = 2.5
    assert drawn[-1] == (2.5, 0) and explorer.values == {"scale": 2.5, "offset": 0}
    assert explorer.figure is not first
    assert list(explorer.figure.axes[0].get_lines()[0].get_ydata()) == [0, 2.5, 5.0]

    explorer.controls["offset"].value = 3
    assert drawn[-1] == (2.5, 3) and explorer.draws == 3
    explorer.redraw()
    assert drawn[-1] == (2.5, 3) and explorer.draws == 4


def test_an_explorer_is_one_widget_holding_its_controls_and_output():
    import matplotlib.pyplot as plt

    slider = ipywidgets.IntSlider(value=1, min=0, max=3)
    explorer = figure_explorer(lambda n: plt.figure(), {"n": slider})
    assert isinstance(explorer, ipywidgets.VBox)
    row, output = explorer.children
    assert list(row.children) == [slider]
    assert output is explorer.output and isinstance(output, ipywidgets.Output)


def test_every_draw_shows_a_new_png_in_the_output(monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(widgets, "display", shown.append)
    open_before = set(plt.get_fignums())

    def draw(height):
        fig, ax = plt.subplots()
        ax.bar([0], [height])
        ax.set_ylim(0, 10)
        return fig

    explorer = figure_explorer(draw, {"height": ipywidgets.IntSlider(value=2, min=0, max=10)})
    explorer.controls["height"].value = 7
    assert len(shown) == 2
    assert all(image.data.startswith(b"\x89PNG") for image in shown)
    assert shown[0].data != shown[1].data
    assert set(plt.get_fignums()) == open_before  # each figure is closed once shown


def test_bad_explorer_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="draw must be a function"):
        figure_explorer("not a function", {"n": ipywidgets.IntSlider()})
    with pytest.raises(ValueError, match="non-empty"):
        figure_explorer(lambda: None, {})
    with pytest.raises(ValueError, match="keyword name"):
        figure_explorer(lambda **kw: None, {"not a name": ipywidgets.IntSlider()})
    with pytest.raises(ValueError, match=r"controls\['n'\] must be an ipywidgets control"):
        figure_explorer(lambda n: None, {"n": ipywidgets.Output()})


def test_widgets_uses_only_ipywidgets_api_common_to_7_and_8():
    tree = ast.parse(inspect.getsource(widgets))
    used = {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "widgets"
    }
    assert used and used <= COMMON_TO_7_AND_8, used - COMMON_TO_7_AND_8


# --- chapter 2's explorer ------------------------------------------------------------------------------------------


def test_placement_explorer_draws_the_chosen_run(runs):
    explorer = placement_explorer(runs, placement="before", dropout=0.0)
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
    explorer = placement_explorer(runs)
    assert [value for _, value in explorer.controls["placement"].options] == ["before", "after", "none"]
    assert [value for _, value in explorer.controls["dropout"].options] == [0.0, 0.5]
    seed = explorer.controls["seed"]
    assert isinstance(seed, ipywidgets.IntSlider) and (seed.min, seed.max) == (1, 3)
    assert explorer.values["placement"] == "before"  # the first variant given


def test_a_combination_that_was_not_run_says_so(runs):
    explorer = placement_explorer(runs)
    explorer.controls["placement"].value = "none"
    explorer.controls["dropout"].value = 0.5
    assert "not among the runs" in explorer.figure._suptitle.get_text()
    assert all(not ax.get_lines() for ax in explorer.figure.axes)


def test_seeds_that_are_not_consecutive_get_a_dropdown():
    runs = [variant("before", 0.0, seeds=(1, 5, 9)), variant("after", 0.0, seeds=(1, 5, 9))]
    explorer = placement_explorer(runs)
    assert isinstance(explorer.controls["seed"], ipywidgets.Dropdown)
    explorer.controls["seed"].value = 9
    assert list(selected_line(explorer.figure).get_ydata()) == runs[0].history(9).column("loss")


def test_bad_placement_explorer_arguments_are_clear_errors(runs):
    with pytest.raises(ValueError, match="non-empty"):
        placement_explorer({})
    with pytest.raises(ValueError, match="SeedRuns"):
        placement_explorer({"a": "not runs"})
    with pytest.raises(ValueError, match="give each"):
        placement_explorer([variant("before", 0.0), variant("before", 0.0)])
    with pytest.raises(ValueError, match="same seeds"):
        placement_explorer([variant("before", 0.0), variant("after", 0.0, seeds=(1, 2))])
    with pytest.raises(ValueError, match="placement must be one of"):
        placement_explorer(runs, placement="middle")
    with pytest.raises(ValueError, match="dropout must be one of"):
        placement_explorer(runs, dropout=0.3)


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


def test_momentum_explorer_draws_the_running_mean_for_the_chosen_setting():
    from bnlab import running_stats
    from bnlab.widgets import momentum_explorer

    explorer = momentum_explorer(momentum=0.1, batch_size=64, steps=50)
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


def test_momentum_explorer_rejects_bad_start_values():
    from bnlab.widgets import momentum_explorer

    with pytest.raises(ValueError, match="momentum"):
        momentum_explorer(momentum=0)
    with pytest.raises(ValueError, match="batch_size must be one of"):
        momentum_explorer(batch_size=3)

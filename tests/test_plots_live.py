import ast
import inspect

import matplotlib

matplotlib.use("Agg")

import ipywidgets
import pytest

from bnlab.plots import live, placement, running_mean
from bnlab.plots.live import figure_explorer, seed_control

# ipywidgets names that exist, with the same meaning, in 7.x (Colab ships 7.7.1) and in 8.x.
COMMON_TO_7_AND_8 = {
    "interactive_output", "interactive", "Dropdown", "IntSlider", "FloatSlider", "FloatLogSlider", "Output", "HBox", "VBox",
    "ValueWidget",
}


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
    monkeypatch.setattr(live, "display", shown.append)
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


@pytest.mark.parametrize("module", [live, placement, running_mean], ids=lambda m: m.__name__)
def test_live_explorers_use_only_ipywidgets_api_common_to_7_and_8(module):
    tree = ast.parse(inspect.getsource(module))
    used = {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "widgets"
    }
    assert used and used <= COMMON_TO_7_AND_8, used - COMMON_TO_7_AND_8


def test_consecutive_seeds_get_a_slider_others_a_dropdown():
    slider = seed_control((3, 4, 5))
    assert isinstance(slider, ipywidgets.IntSlider) and (slider.min, slider.max, slider.value) == (3, 5, 3)
    dropdown = seed_control((1, 5, 9))
    assert isinstance(dropdown, ipywidgets.Dropdown) and list(dropdown.options) == [1, 5, 9]

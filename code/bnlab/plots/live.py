"""Live explorers: ipywidgets controls that redraw a matplotlib figure, where a kernel runs (Jupyter, Colab).

A live explorer recomputes, so its controls may offer any value, not only values computed beforehand. The built
book has no kernel: there, ``bnlab.plots.interactive``'s embedded explorers do the job, and a chapter offers a live
explorer only beside one of those, in a cell the book leaves out.

The shared mechanism is ``figure_explorer(draw, controls)``: ``draw(**values)`` returns a new figure for the
controls' current values, and every change of a control redraws it into an ``Output`` under the controls. It uses
only ipywidgets API common to 7.x (Colab ships 7.7.1) and 8.x (``interactive_output``, ``Dropdown``,
``IntSlider``, ``FloatSlider``, ``Output``, ``HBox``/``VBox``), so an explorer works live in Jupyter and in Colab.

A new explorer is a draw function and its controls::

    def draw(momentum):
        fig, ax = plt.subplots()
        ...
        return fig

    explorer = figure_explorer(draw, {"momentum": FloatSlider(value=0.1, min=0.0, max=1.0, step=0.05)})
    explorer  # last expression of a cell: shows the controls and the figure

``explorer.figure`` is the last figure drawn and ``explorer.values`` the values it was drawn for, so a test can
change ``explorer.controls[name].value`` and look at what was drawn, without a browser.

Chapter 2's and chapter 4's live explorers are ``placement.live_placement_explorer`` and
``running_mean.live_momentum_explorer``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import Image, display

from .embedding import png_bytes


class FigureExplorer(widgets.VBox):
    """Controls above an ``Output`` that shows ``draw(**values)`` for the controls' current values.

    Attributes:
        controls: ``{keyword: control}``; each control's ``value`` is passed to ``draw`` under its keyword.
        output: the ``Output`` the figure is shown in.
        figure: the last figure ``draw`` returned (closed after display, still inspectable).
        values: the keyword values it was drawn for.
        draws: how many times ``draw`` has run.
    """

    def __init__(self, draw: Callable, controls: Mapping[str, widgets.ValueWidget], **kwargs):
        self.draw_figure = draw
        self.controls = dict(controls)
        self.figure = None
        self.values: dict = {}
        self.draws = 0
        self.output = widgets.interactive_output(self.show, self.controls)
        row = widgets.HBox(list(self.controls.values()))
        super().__init__(children=[row, self.output], **kwargs)

    def show(self, **values) -> None:
        """Draw the figure for ``values`` and display it (into ``output`` when called by ``interactive_output``)."""
        figure = self.draw_figure(**values)
        self.figure, self.values, self.draws = figure, values, self.draws + 1
        display(png_image(figure))
        plt.close(figure)  # shown once, inside the Output; not again by the inline backend at the end of the cell

    def redraw(self) -> None:
        """Draw again for the current values, into the Output."""
        with self.output:
            self.output.clear_output(wait=True)
            self.show(**{name: control.value for name, control in self.controls.items()})


def png_image(figure) -> Image:
    """The figure as a PNG image: it shows the same under every matplotlib backend, in Jupyter, Colab and in the
    widget state a built book renders."""
    return Image(data=png_bytes(figure, dpi=figure.dpi), format="png")


def figure_explorer(draw: Callable, controls: Mapping[str, widgets.ValueWidget]) -> FigureExplorer:
    """An explorer that redraws ``draw(**{name: control.value})`` whenever a control changes.

    ``draw`` must return a matplotlib figure; ``controls`` maps ``draw``'s keyword arguments to ipywidgets
    controls (``Dropdown``, ``IntSlider``, ``FloatSlider``, ...). The first figure is drawn at once.
    """
    if not callable(draw):
        raise ValueError(f"draw must be a function that returns a matplotlib figure; got {draw!r}.")
    if not isinstance(controls, Mapping) or not controls:
        raise ValueError("controls must be a non-empty {keyword: ipywidgets control} mapping.")
    for name, control in controls.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"controls: every key must be a keyword name for draw; got {name!r}.")
        if not isinstance(control, widgets.ValueWidget):
            raise ValueError(
                f"controls[{name!r}] must be an ipywidgets control with a value (Dropdown, IntSlider, ...); "
                f"got {type(control).__name__}."
            )
    return FigureExplorer(draw, controls)


def seed_control(seeds) -> widgets.ValueWidget:
    """An ``IntSlider`` when the seeds are consecutive integers, else a ``Dropdown`` of them."""
    seeds = tuple(seeds)
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 1:
        return widgets.IntSlider(value=seeds[0], min=seeds[0], max=seeds[-1], step=1, description="seed")
    return widgets.Dropdown(options=list(seeds), value=seeds[0], description="seed")

"""Interactive figures embedded in the page: the reader's browser filters data computed when the notebook ran.

An explorer is a line chart whose data is computed when the notebook runs and embedded in the cell's output, with
labelled controls (sliders, radio buttons, drop-down lists) that choose which part of the data is drawn. The
choosing happens in the browser, so one output works where no kernel runs (the built HTML book, offline) and where
one does (JupyterLab, Jupyter Notebook, Colab).

Why Vega-Lite, through Altair: a Vega-Lite chart is a declarative JSON spec whose parameters can be bound to HTML
inputs and used in filter expressions over the embedded data, several controls at once, so the data is embedded
once and every combination of the controls costs nothing more. Altair builds the spec from Python and validates it
against Vega-Lite's schema; Colab ships Altair (5.5.0), and the JavaScript is three files (vega, vega-lite and
vega-embed, about 0.8 MB minified) that the book serves itself. Plotly, the alternative, has sliders and buttons
whose every step applies one fixed update, so controls that act together need a frame (or trace visibility list)
per combination of their values, and its one JavaScript bundle is over 3 MB.

What an explorer's output holds (``Explorer._repr_mimebundle_``):

* ``text/html``: the controls, the chart, a one-sentence caption, and a static PNG of the first setting
  (matplotlib), shown for print, to readers without JavaScript and until the chart is drawn. A short script draws
  the chart with ``vegaEmbed``. A book page that holds an explorer loads vega, vega-lite and vega-embed from its
  own ``_static/vega/`` first (``book/page_scripts.py``), so nothing is fetched; elsewhere the script loads the
  same versions (``embedding.VEGA_VERSIONS``) from jsDelivr, as Altair's own HTML renderer does, and keeps the
  static image if that fails (offline). MyST-NB, JupyterLab and Colab all choose ``text/html`` from the bundle.
* ``image/png`` (the static image, for PDF and other static exports) and ``text/plain`` (the caption).

The bundle has no ``application/vnd.vegalite.v5+json``: JupyterLab ranks ``text/html`` above it and Colab does not
draw it, so it would only double the notebook's size, and MyST-NB warns about a type it cannot render.

A new explorer is tidy records (one per point), the fields that are controls, and which fields are x, y and
color::

    records = [{"lr": lr, "seed": s, "epoch": e + 1, "loss": loss}
               for (lr, s), history in runs.items() for e, loss in enumerate(history)]
    explorer(
        records, x="epoch", y="loss", color="lr", log=["loss"],
        controls=["lr", Control("seed", highlight=True)],
        labels={"lr": "learning rate", "loss": "training loss (mean over the epoch)"},
        caption="Pick a learning rate and a seed: ...",
    )

Each control shows one value of its field at a time (records without the field show for every value); a
``highlight`` control draws the chosen value in colour over the others in grey instead. The chosen input is a
slider for three or more evenly spaced numbers, radio buttons for up to four values, else a drop-down list;
``Control(input=...)`` overrides it, and ``"log slider"`` steps through a geometric grid by its base-10 logarithm.
Numbers are embedded with ``digits`` significant digits; an explorer whose output would weigh more than
``max_bytes`` (1 MB) is refused: give fewer points (downsample the curves, and say so in the caption).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import itertools
import json
import math
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping, Sequence

import altair as alt
import matplotlib.pyplot as plt
from matplotlib.colors import to_hex

from .embedding import explorer_html, png_bytes

INPUTS = ("select", "radio", "slider", "log slider")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
DASHES = ((1, 0), (4, 2), (2, 1), (1, 1), (1, 2, 4, 2))  # line dash per value of the color field, cycled
OTHERS_COLOR = "#b8b8b8"
PANEL_WIDTH = {1: 520, 2: 265}
PANEL_HEIGHT = 250


@dataclass(frozen=True)
class Control:
    """A field the reader chooses a value of, client-side.

    ``label`` is shown beside the input (default: ``labels[field]``, else the field's name); ``input`` is
    ``"select"``, ``"radio"``, ``"slider"`` or ``"log slider"`` (default: chosen from the values, see the module
    docstring); ``value`` is the value shown first (default: the first one: the smallest number, or the string
    that comes first in the records); ``names`` maps values to what a list or radio button shows; with
    ``highlight``, the other values stay drawn in grey behind the chosen one.
    """

    field: str
    label: str | None = None
    input: str | None = None
    value: object = None
    names: Mapping | None = None
    highlight: bool = False


@dataclass(frozen=True)
class _Choice:
    """A control resolved against the data: its options, input, first value and the Vega parameter's name."""

    field: str
    label: str
    input: str
    options: tuple
    value: object
    names: tuple[str, ...]
    highlight: bool
    param: str

    @property
    def step(self) -> float:
        values = [math.log10(v) for v in self.options] if self.input == "log slider" else list(self.options)
        return (values[-1] - values[0]) / (len(values) - 1)

    def selects(self, value, chosen) -> bool:
        """The Python twin of ``condition()``: does a record with ``value`` show when ``chosen`` is set?"""
        return value is None or value == chosen

    def condition(self) -> str:
        """Vega expression: the datum shows for the parameter's current value (records without the field always)."""
        datum = f"datum[{json.dumps(self.field)}]"
        if self.input == "slider":
            test = f"abs({datum} - {self.param}) < {self.step / 2!r}"
        elif self.input == "log slider":
            test = f"abs(log({datum}) / LN10 - {self.param}) < {self.step / 2!r}"
        else:
            test = f"{datum} == {self.param}"
        return f"(!isValid({datum}) || {test})"

    def parameter(self) -> alt.Parameter:
        name = f"{self.label} "
        if self.input == "slider":
            lo, hi = self.options[0], self.options[-1]
            bind = alt.binding_range(min=lo, max=hi, step=self.step, name=name)
            return alt.param(name=self.param, value=self.value, bind=bind)
        if self.input == "log slider":
            lo, hi = math.log10(self.options[0]), math.log10(self.options[-1])
            bind = alt.binding_range(min=lo, max=hi, step=self.step, name=name)
            return alt.param(name=self.param, value=math.log10(self.value), bind=bind)
        binding = alt.binding_radio if self.input == "radio" else alt.binding_select
        bind = binding(options=list(self.options), labels=list(self.names), name=name)
        return alt.param(name=self.param, value=self.value, bind=bind)

    def readout(self) -> str:
        """Vega expression: the chosen value as the title shows it."""
        if self.input == "slider":
            return f"format({self.param}, '~g')"
        if self.input == "log slider":
            return f"format(pow(10, {self.param}), '.3~g')"
        chain = " : ".join(f"{self.param} == {json.dumps(o)} ? {json.dumps(n)}" for o, n in zip(self.options, self.names))
        return f"({chain} : '')"

    def name_of(self, value) -> str:
        if self.input in ("slider", "log slider"):
            return f"{value:.3g}"
        return self.names[self.options.index(value)]


class Explorer:
    """An interactive figure: the Vega-Lite chart, its embedded data, a static image and the output that shows them.

    Attributes:
        chart: the Altair chart; ``spec`` is its Vega-Lite JSON (data included).
        records: the embedded records (only the fields the figure uses, numbers rounded as embedded).
        controls: the resolved controls, in order; ``values`` is the first setting, ``{field: value}``.
        caption: the sentence under the figure.
        png: the static image (PNG bytes) of the first setting.
        html: the ``text/html`` output; ``page_weight`` its size in bytes (what it adds to a page).
    """

    def __init__(self, *, chart, spec, records, controls, caption, png, figure_id):
        self.chart = chart
        self.spec = spec
        self.records = records
        self.controls = controls
        self.values = {c.field: c.value for c in controls}
        self.caption = caption
        self.png = png
        self.id = figure_id
        log_sliders = [c.param for c in controls if c.input == "log slider"]
        self.html = explorer_html(self.spec, png=png, caption=caption, figure_id=figure_id, log_sliders=log_sliders)

    @property
    def page_weight(self) -> int:
        return len(self.html.encode("utf-8"))

    def shown(self, values: Mapping | None = None, *, others: bool = False) -> list[dict]:
        """The records drawn for ``values`` (``{field: value}``; default: the first setting), as the browser
        filters them. ``others=True``: the grey records a highlight control keeps behind the chosen value."""
        return shown_records(self.records, self.controls, {**self.values, **(values or {})}, others=others)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {
            "text/html": self.html,
            "image/png": base64.b64encode(self.png).decode("ascii"),
            "text/plain": f"Interactive figure: {self.caption}",
        }


def explorer(
    records: Iterable[Mapping],
    *,
    x: str,
    y: str | Sequence[str],
    controls: Sequence[Control | str],
    caption: str,
    color: str | None = None,
    detail: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    colors: Mapping | None = None,
    log: Collection[str] = (),
    domains: Mapping[str, tuple[float, float]] | None = None,
    title: str = "",
    digits: int = 4,
    max_bytes: int = 1_000_000,
) -> Explorer:
    """An interactive line chart of ``y`` against ``x`` from tidy ``records``, filtered in the browser by
    ``controls``.

    ``y`` may name several fields: one panel each, side by side, sharing the controls. One line per value of
    ``color`` (legend; ``colors`` maps values to colours, default matplotlib's) and of each ``detail`` field.
    ``labels`` gives each field's title with its unit (axes, legend, controls); fields in ``log`` get a log axis;
    ``domains`` fixes an axis's range. ``title`` is the figure's subtitle (its title shows the chosen values);
    ``caption`` is one sentence under it saying what to try. See the module docstring for the rest.
    """
    labels = dict(labels or {})
    ys = (y,) if isinstance(y, str) else tuple(y)
    detail = tuple(detail)
    controls = tuple(c if isinstance(c, Control) else Control(c) for c in controls)
    for name, value in (("x", x), ("color", color)):
        if value is not None:
            check_field_name(name, value)
    for name, values in (("y", ys), ("detail", detail), ("controls", [c.field for c in controls])):
        for value in values:
            check_field_name(name, value)
    if not ys:
        raise ValueError("y is empty: name at least one field to draw against x.")
    if not controls:
        raise ValueError("controls is empty: name at least one field the reader chooses (else draw a static figure).")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("caption must be one sentence saying what to try with the controls; got an empty one.")
    fields = list(dict.fromkeys([x, *ys, *([color] if color else []), *detail, *(c.field for c in controls)]))
    clash = {x, *ys} & {c.field for c in controls}
    if clash:
        raise ValueError(f"controls: {sorted(clash)} is also x or y; a control chooses among lines, not along an axis.")
    if sum(c.highlight for c in controls) > 1:
        raise ValueError("controls: at most one control can have highlight=True.")
    if not (isinstance(digits, int) and 2 <= digits <= 15):
        raise ValueError(f"digits must be an integer from 2 to 15; got {digits!r}.")

    rows = tidy_rows(records, fields, required=(x, *ys), digits=digits)
    for name in log:
        if name not in ys and name != x:
            raise ValueError(f"log: {name!r} is neither x nor y; log axes are for x or y fields.")
        bad = next((i for i, r in enumerate(rows) if r.get(name) is not None and r[name] <= 0), None)
        if bad is not None:
            raise ValueError(f"log: records[{bad}][{name!r}] is {rows[bad][name]!r}; a log axis needs positive values.")
    choices = tuple(resolve_control(c, rows, labels, index=i, digits=digits) for i, c in enumerate(controls))
    color_scale = color_scale_of(rows, color, colors) if color else None

    chart = build_chart(rows, fields, x=x, ys=ys, choices=choices, color=color, color_scale=color_scale,
                        detail=detail, labels=labels, log=set(log), domains=dict(domains or {}), title=title)
    first = {c.field: c.value for c in choices}
    figure = static_figure(rows, x=x, ys=ys, choices=choices, values=first, color=color, color_scale=color_scale,
                           detail=detail, labels=labels, log=set(log), domains=dict(domains or {}), title=title)
    png = png_bytes(figure)
    plt.close(figure)
    spec = chart.to_dict()  # validated against Vega-Lite's schema
    figure_id = "bnlab-explorer-" + hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    result = Explorer(chart=chart, spec=spec, records=rows, controls=choices, caption=caption.strip(), png=png,
                      figure_id=figure_id)
    if result.page_weight > max_bytes:
        raise ValueError(
            f"this explorer would add {result.page_weight / 1e6:.2f} MB to its page, over max_bytes={max_bytes:,}: "
            f"embed fewer points ({len(rows):,} records now; downsample the curves and say so in the caption) or "
            "fewer digits."
        )
    return result


# --- the data ------------------------------------------------------------------------------------------------------


def check_field_name(argument: str, name) -> None:
    """Field names are identifiers: Vega-Lite reads dots and brackets in a field name as nested access."""
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"{argument}: field names must be identifiers (letters, digits, _); got {name!r}.")


def tidy_rows(records, fields: Sequence[str], *, required: Sequence[str], digits: int) -> list[dict]:
    """The records, keeping only ``fields``, with floats rounded to ``digits`` significant digits (as embedded)
    and non-finite floats left out (a gap in the line). Checks every value and each field's type."""
    if isinstance(records, Mapping) or isinstance(records, (str, bytes)):
        raise ValueError("records must be a list of mappings (one per point), not a single mapping or a string.")
    rows, kinds = [], {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"records[{i}] must be a mapping of field names to values; got {type(record).__name__}.")
        row = {}
        for name in fields:
            value = record.get(name)
            if value is None:
                if name in required:
                    raise ValueError(f"records[{i}] has no {name!r}; every record needs the x and y fields.")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(
                    f"records[{i}][{name!r}] is {value!r} ({type(value).__name__}); give a number or a string."
                )
            kind = "string" if isinstance(value, str) else "number"
            if kinds.setdefault(name, kind) != kind:
                raise ValueError(f"records[{i}][{name!r}] is {value!r}: the field mixes numbers and strings.")
            if isinstance(value, float):
                if not math.isfinite(value):
                    continue  # a gap in the line (a diverged run's loss, say)
                value = float(f"{value:.{digits}g}")
            row[name] = value
        rows.append(row)
    if not rows:
        raise ValueError("records is empty: give at least one record (a mapping of field names to values).")
    return rows


def resolve_control(control: Control, rows: list[dict], labels: Mapping[str, str], *, index: int, digits: int) -> _Choice:
    name = control.field
    values = [r[name] for r in rows if name in r]
    if not values:
        raise ValueError(f"controls: no record has the field {name!r}.")
    numeric = not isinstance(values[0], str)
    options = tuple(sorted(set(values)) if numeric else dict.fromkeys(values))
    kind = control.input or default_input(options)
    if kind not in INPUTS:
        raise ValueError(f"controls[{name!r}]: input must be one of {list(INPUTS)}; got {kind!r}.")
    if kind == "slider" and not evenly_spaced(options):
        raise ValueError(f"controls[{name!r}]: a slider needs 2+ evenly spaced numbers; got {list(options)}. "
                         "Use input='select' (or 'log slider' for a geometric grid).")
    if kind == "log slider" and not (all(v > 0 for v in options) and evenly_spaced([math.log10(v) for v in options])):
        raise ValueError(f"controls[{name!r}]: a log slider needs 2+ positive numbers evenly spaced on a log scale; "
                         f"got {list(options)}. Use input='select'.")
    value = options[0] if control.value is None else control.value
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.{digits}g}")  # as the records are embedded
    if value not in options:
        raise ValueError(f"controls[{name!r}]: value must be one of the field's values {list(options)}; got {value!r}.")
    given = dict(control.names or {})
    unknown = [k for k in given if k not in options]
    if unknown:
        raise ValueError(f"controls[{name!r}]: names has values the records do not: {unknown}.")
    names = tuple(str(given.get(o, f"{o:g}" if numeric else o)) for o in options)
    label = control.label or labels.get(name, name)
    return _Choice(name, label, kind, options, value, names, control.highlight, param=f"{name}_control_{index}")


def default_input(options: tuple) -> str:
    if not isinstance(options[0], str) and len(options) >= 3 and evenly_spaced(options):
        return "slider"
    return "radio" if len(options) <= 4 else "select"


def evenly_spaced(values) -> bool:
    values = list(values)
    if len(values) < 2:
        return False
    step = (values[-1] - values[0]) / (len(values) - 1)
    return step > 0 and all(abs(v - (values[0] + k * step)) <= 0.01 * step for k, v in enumerate(values))


def color_scale_of(rows: list[dict], color: str, colors: Mapping | None) -> dict:
    """``{value: hex colour}``: the values in ``colors`` in its order, then the others in order of appearance (with
    matplotlib's palette). The order also gives each value its dash pattern (``DASHES``)."""
    given = {k: to_hex(v) for k, v in (colors or {}).items()}
    present = dict.fromkeys(r[color] for r in rows if color in r)
    values = [v for v in given if v in present] + [v for v in present if v not in given]
    palette = itertools.cycle([c for c in PALETTE if c not in given.values()] or PALETTE)
    return {v: given[v] if v in given else next(palette) for v in values}


def shown_records(rows, choices, values: Mapping, *, others: bool = False) -> list[dict]:
    """What the browser draws for ``values``: every control's condition holds (for ``others``: every control's
    but the highlight one, whose chosen value is left out)."""
    kept = []
    for row in rows:
        keep = True
        for c in choices:
            chosen = c.selects(row.get(c.field), values[c.field])
            if c.highlight and others:
                chosen = c.field in row and not chosen
            keep = keep and chosen
        if keep:
            kept.append(row)
    return kept


def csv_text(rows: list[dict], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow(["" if row.get(f) is None else row[f] for f in fields])
    return buffer.getvalue()


# --- the chart -----------------------------------------------------------------------------------------------------


def build_chart(rows, fields, *, x, ys, choices, color, color_scale, detail, labels, log, domains, title):
    kinds = {f: ("string" if any(isinstance(r.get(f), str) for r in rows) else "number") for f in fields}
    data = alt.InlineData(values=csv_text(rows, fields), format=alt.CsvDataFormat(type="csv", parse=kinds))
    highlight = next((c for c in choices if c.highlight), None)
    every = " && ".join(c.condition() for c in choices)
    width = PANEL_WIDTH.get(len(ys), 280)

    def axis(name, role):
        kwargs = {"title": labels.get(name, name)}
        if all(isinstance(r.get(name, 0), int) for r in rows):
            kwargs["axis"] = alt.Axis(tickMinStep=1, format="d")  # whole numbers: epochs, steps
        scale = {"zero": False}
        if name in log:
            scale["type"] = "log"
        if name in domains:
            scale.update(domain=list(domains[name]), clamp=True)
        kwargs["scale"] = alt.Scale(**scale)
        return (alt.X if role == "x" else alt.Y)(f"{name}:Q", **kwargs)

    panels = []
    for y in ys:
        base = alt.Chart(data).encode(x=axis(x, "x"), y=axis(y, "y"))
        layers = []
        if highlight is not None:
            rest = [c.condition() for c in choices if not c.highlight]
            grey_filter = " && ".join([*rest, f"isValid(datum[{json.dumps(highlight.field)}])", f"!{highlight.condition()}"])
            lines = [highlight.field, *([color] if color else []), *detail]
            layers.append(
                base.mark_line(color=OTHERS_COLOR, strokeWidth=1, clip=True)
                .encode(detail=[alt.Detail(f"{f}:N") for f in lines])
                .transform_filter(grey_filter)
            )
        encoding = {}
        if color:
            scale = alt.Scale(domain=list(color_scale), range=list(color_scale.values()))
            legend = alt.Legend(title=labels.get(color, color), orient="bottom")
            encoding["color"] = alt.Color(f"{color}:N", scale=scale, legend=legend)
            dashes = [list(d) for d, _ in zip(itertools.cycle(DASHES), color_scale)]
            encoding["strokeDash"] = alt.StrokeDash(f"{color}:N", scale=alt.Scale(domain=list(color_scale), range=dashes),
                                                    legend=legend)
        if detail:
            encoding["detail"] = [alt.Detail(f"{f}:N") for f in detail]
        layers.append(base.mark_line(strokeWidth=2.2, clip=True).encode(**encoding).transform_filter(every))
        panels.append(alt.layer(*layers).properties(width=width, height=PANEL_HEIGHT))

    heading = " + ', ' + ".join(f"{json.dumps(c.label + ': ')} + {c.readout()}" for c in choices)
    subtitle = title
    if highlight is not None:
        subtitle = f"{title}; grey: the other {highlight.label}s" if title else f"grey: the other {highlight.label}s"
    chart = panels[0] if len(panels) == 1 else alt.hconcat(*panels)
    title_params = {"text": alt.ExprRef(expr=heading), "anchor": "start"}
    if subtitle:
        title_params["subtitle"] = subtitle
    return chart.add_params(*(c.parameter() for c in choices)).properties(title=alt.TitleParams(**title_params))


# --- the static image ----------------------------------------------------------------------------------------------


def static_figure(rows, *, x, ys, choices, values, color, color_scale, detail, labels, log, domains, title):
    """The chart for ``values`` drawn with matplotlib: for print, for readers without JavaScript."""
    fig, axes = plt.subplots(1, len(ys), figsize=(5.6 * len(ys) if len(ys) > 1 else 7.5, 3.8), squeeze=False)
    highlight = next((c for c in choices if c.highlight), None)
    chosen = shown_records(rows, choices, values)
    grey = shown_records(rows, choices, values, others=True) if highlight else []
    separate = [*([highlight.field] if highlight else []), *([color] if color else []), *detail]
    for ax, y in zip(axes[0], ys):
        for _, group in grouped(grey, separate):
            ax.plot([r[x] for r in group], [r.get(y, math.nan) for r in group], color=OTHERS_COLOR, linewidth=1)
        styles = dict(zip(color_scale or {}, itertools.cycle(DASHES)))
        for key, group in grouped(chosen, [*([color] if color else []), *detail]):
            value = dict(key).get(color) if color else None
            dash = [2 * d for d in styles[value]] if value in styles and styles[value] != (1, 0) else None
            ax.plot([r[x] for r in group], [r.get(y, math.nan) for r in group], linewidth=2,
                    color=color_scale.get(value, PALETTE[0]) if color else PALETTE[0],
                    label=str(value) if color else None, **({"dashes": dash} if dash else {}))
        ax.set_xlabel(labels.get(x, x))
        ax.set_ylabel(labels.get(y, y))
        for name, set_scale, set_limits in ((x, ax.set_xscale, ax.set_xlim), (y, ax.set_yscale, ax.set_ylim)):
            if name in log:
                set_scale("log")
            if name in domains:
                set_limits(*domains[name])
        ax.grid(alpha=0.3)
    if color:
        handles, names = axes[0][0].get_legend_handles_labels()
        order = {str(v): i for i, v in enumerate(color_scale)}
        pairs = sorted(zip(handles, names), key=lambda pair: order.get(pair[1], len(order)))
        if pairs:
            axes[0][0].legend(*zip(*pairs), title=labels.get(color, color), fontsize=8)
    heading = ", ".join(f"{c.label}: {c.name_of(values[c.field])}" for c in choices)
    subtitle = title + (f"{'; ' if title else ''}grey: the other {highlight.label}s" if highlight else "")
    fig.suptitle(heading + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    fig.tight_layout()
    return fig


def grouped(rows: list[dict], fields: Sequence[str]):
    """``(key, rows)`` per combination of ``fields``' values, rows in their order, keys in order of appearance."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple((f, row.get(f)) for f in fields), []).append(row)
    return groups.items()

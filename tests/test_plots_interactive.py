import base64
import json

import matplotlib

matplotlib.use("Agg")

import pytest

from bnlab.plots.interactive import Control, explorer


def curves(lrs=(0.01, 0.1, 1.0), seeds=(1, 2, 3), epochs=4):
    """Tidy records: one per (lr, seed, epoch), each curve recognisable from its values."""
    return [
        {"lr": lr, "seed": seed, "epoch": e, "loss": lr * 10 + seed + 1 / e, "acc": 50.0 + e + seed, "unused": "x"}
        for lr in lrs for seed in seeds for e in range(1, epochs + 1)
    ]


def simple(records=None, **kwargs):
    args = {"x": "epoch", "y": "loss", "controls": ["lr"], "caption": "Pick a learning rate."} | kwargs
    return explorer(curves() if records is None else records, **args)


def filters(spec) -> list[str]:
    """Every filter expression in a Vega-Lite spec."""
    if isinstance(spec, dict):
        found = [spec["filter"]] if isinstance(spec.get("filter"), str) else []
        return found + [f for value in spec.values() for f in filters(value)]
    if isinstance(spec, list):
        return [f for value in spec for f in filters(value)]
    return []


# --- what is embedded ------------------------------------------------------------------------------------------------


def test_only_the_fields_the_figure_uses_are_embedded_numbers_rounded():
    records = curves()
    records[0]["loss"] = 0.123456789
    figure = simple(records, digits=3)
    (data,) = figure.spec["datasets"].values()
    header, first = data.splitlines()[:2]
    assert header == "epoch,loss,lr"
    assert first == "1,0.123,0.01"
    assert "unused" not in data
    assert figure.records[0] == {"epoch": 1, "loss": 0.123, "lr": 0.01}


def test_non_finite_values_are_gaps_not_errors():
    records = curves()
    records[1]["loss"] = float("inf")
    figure = simple(records)
    assert "loss" not in figure.records[1]
    assert ",," in next(iter(figure.spec["datasets"].values())).splitlines()[2]


# --- controls --------------------------------------------------------------------------------------------------------


def test_the_input_follows_the_values_unless_chosen():
    records = [r | {"batch": b, "mode": m} for r in curves(lrs=(0.1,), seeds=(1, 2, 3, 4, 5)) for b, m in
               ((8, "train"), (64, "eval"), (512, "train"))]
    figure = simple(records, controls=["seed", "lr", "mode", "batch"])
    inputs = {c.field: c.input for c in figure.controls}
    # evenly spaced numbers: a slider; up to four values: radio buttons; else (or uneven numbers) a list
    assert inputs == {"seed": "slider", "lr": "radio", "mode": "radio", "batch": "radio"}
    bound = {p["name"].split("_control")[0]: p["bind"] for p in figure.spec["params"]}
    assert bound["seed"] | {} == {"input": "range", "min": 1, "max": 5, "step": 1, "name": "seed "}
    assert bound["mode"]["options"] == ["train", "eval"]  # strings in the order they come
    figure = simple(records, controls=[Control("batch", input="select", label="batch size")])
    (param,) = figure.spec["params"]
    assert param["bind"] == {"input": "select", "options": [8, 64, 512], "labels": ["8", "64", "512"],
                             "name": "batch size "}


def test_controls_are_labelled_and_start_at_the_given_value():
    figure = simple(controls=[Control("lr", label="learning rate", value=0.1, names={1.0: "one"})],
                    labels={"epoch": "epoch", "loss": "training loss"})
    (param,) = figure.spec["params"]
    assert param["value"] == 0.1 and param["bind"]["name"] == "learning rate "
    assert param["bind"]["labels"] == ["0.01", "0.1", "one"]
    assert figure.values == {"lr": 0.1}
    assert "learning rate: " in figure.spec["title"]["text"]["expr"]


def test_a_log_slider_steps_through_a_geometric_grid_by_its_logarithm():
    figure = simple(controls=[Control("lr", input="log slider", value=0.1)])
    (param,) = figure.spec["params"]
    assert param["bind"] | {} == {"input": "range", "min": -2.0, "max": 0.0, "step": 1.0, "name": "lr "}
    assert param["value"] == -1.0
    assert all('log(datum["lr"]) / LN10 - lr_control_0' in f for f in filters(figure.spec))
    assert 'data-log-sliders="[&quot;lr_control_0&quot;]"' in figure.html


def test_the_browser_filter_and_its_python_twin_agree_on_what_is_shown():
    figure = simple(controls=["lr", Control("seed", highlight=True)])
    shown = figure.shown({"lr": 0.1, "seed": 2})
    assert {(r["lr"], r["seed"]) for r in shown} == {(0.1, 2)} and len(shown) == 4
    grey = figure.shown({"lr": 0.1, "seed": 2}, others=True)
    assert {(r["lr"], r["seed"]) for r in grey} == {(0.1, 1), (0.1, 3)}
    grey_filter, chosen_filter = filters(figure.spec)  # the grey lines and the chosen one
    assert 'datum["lr"] == lr_control_0' in grey_filter and 'datum["lr"] == lr_control_0' in chosen_filter
    assert 'abs(datum["seed"] - seed_control_1) < 0.5' in chosen_filter


def test_records_without_a_control_field_show_for_every_value():
    records = curves(lrs=(0.1, 1.0)) + [{"epoch": e, "loss": 1.0, "label": "target"} for e in (1, 4)]
    figure = simple(records, color="label")
    for lr in (0.1, 1.0):
        assert [r["loss"] for r in figure.shown({"lr": lr}) if r.get("label") == "target"] == [1.0, 1.0]
    assert all('!isValid(datum["lr"])' in f for f in filters(figure.spec))


# --- the chart ------------------------------------------------------------------------------------------------------


def test_several_y_fields_are_panels_side_by_side_with_titled_axes():
    figure = simple(y=["loss", "acc"], labels={"loss": "loss (nats)", "acc": "accuracy (%)"}, log=["loss"],
                    domains={"acc": (0, 100)}, color="seed")
    left, right = figure.spec["hconcat"]
    encodings = [panel["layer"][-1]["encoding"] for panel in (left, right)]
    assert [e["y"]["field"] for e in encodings] == ["loss", "acc"]
    assert [e["y"]["title"] for e in encodings] == ["loss (nats)", "accuracy (%)"]
    assert encodings[0]["y"]["scale"]["type"] == "log" and encodings[1]["y"]["scale"]["domain"] == [0, 100]
    assert encodings[0]["x"]["title"] == "epoch"
    assert encodings[0]["color"]["field"] == "seed" and encodings[0]["color"]["legend"]["title"] == "seed"


def test_colors_follow_the_given_mapping_then_matplotlibs_palette():
    figure = simple(color="seed", colors={2: "black", 3: "tab:red"})
    scale = figure.spec["layer"][-1]["encoding"]["color"]["scale"]
    assert scale["domain"] == [2, 3, 1]
    assert scale["range"] == ["#000000", "#d62728", "#1f77b4"]


# --- the output ------------------------------------------------------------------------------------------------------


def test_the_output_holds_html_a_static_image_and_the_caption():
    figure = simple()
    bundle = figure._repr_mimebundle_()
    # No Vega-Lite mime type: JupyterLab and Colab would not pick it, and MyST-NB warns about it (the build fails).
    assert set(bundle) == {"text/html", "image/png", "text/plain"}
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG") and figure.png.startswith(b"\x89PNG")
    assert f'class="bnlab-explorer-spec">{json.dumps(figure.spec, separators=(",", ":"))}' in figure.html
    assert "Pick a learning rate." in bundle["text/plain"] and "<figcaption>Pick a learning rate.</figcaption>" in figure.html
    assert figure.page_weight == len(figure.html.encode())


def test_the_same_figure_gets_the_same_id_and_another_figure_another():
    assert simple().id == simple().id
    assert simple().id != simple(controls=["seed"]).id


def test_an_explorer_over_the_size_limit_is_refused_with_a_way_out():
    with pytest.raises(ValueError, match=r"over max_bytes=10,000: embed fewer points \(36 records now"):
        simple(max_bytes=10_000)


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "records, kwargs, message",
    [
        ([], {}, "records is empty"),
        ({"epoch": 1}, {}, "records must be a list of mappings"),
        ([[1, 2]], {}, r"records\[0\] must be a mapping"),
        ([{"epoch": 1, "lr": 0.1}], {}, r"records\[0\] has no 'loss'"),
        ([{"epoch": 1, "loss": 1.0, "lr": True}], {}, r"records\[0\]\['lr'\] is True \(bool\)"),
        ([{"epoch": 1, "loss": 1.0, "lr": 0.1}, {"epoch": 1, "loss": 1.0, "lr": "fast"}], {}, "mixes numbers and strings"),
        (None, {"controls": ["sed"]}, "no record has the field 'sed'"),
        (None, {"controls": [Control("lr", input="knob")]}, "input must be one of"),
        (None, {"controls": [Control("lr", input="slider")]}, "a slider needs 2\\+ evenly spaced numbers"),
        (None, {"controls": [Control("lr", value=0.5)]}, r"value must be one of the field's values \[0.01, 0.1, 1.0\]"),
        (None, {"controls": [Control("lr", names={5: "five"})]}, "names has values the records do not"),
        (None, {"controls": ["epoch"]}, "is also x or y"),
        (None, {"controls": [Control("lr", highlight=True), Control("seed", highlight=True)]}, "at most one"),
        (None, {"controls": []}, "controls is empty"),
        (None, {"x": "the epoch"}, "field names must be identifiers"),
        (None, {"caption": " "}, "caption must be one sentence"),
        (None, {"log": ["acc"]}, "'acc' is neither x nor y"),
        (None, {"y": "acc", "log": ["acc"], "records": None}, None),
        (None, {"digits": 1}, "digits must be an integer from 2 to 15"),
    ],
)
def test_bad_input_is_a_clear_error(records, kwargs, message):
    kwargs = {k: v for k, v in kwargs.items() if k != "records"}
    if message is None:
        simple(records, **kwargs)  # a positive field on a log axis is fine
        return
    with pytest.raises(ValueError, match=message):
        simple(records, **kwargs)


def test_a_log_axis_refuses_values_it_cannot_draw():
    records = curves()
    records[3]["loss"] = 0.0
    with pytest.raises(ValueError, match=r"log: records\[3\]\['loss'\] is 0.0; a log axis needs positive values"):
        simple(records, log=["loss"])

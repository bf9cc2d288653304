"""bnlab.exercises.checks: observations are read strictly (only what the probe can write, within its limits) and
compared exactly, each kind of difference with its own sentence."""

import json

import pytest
import torch
from torch import nn

from bnlab.exercises import probe
from bnlab.exercises.checks import (
    Layer, MalformedObservation, Opaque, changed_inputs, decode, folded_layer_problem, input_changes,
    read_observation, same_value, tensor_problem,
)

TOKEN = "0123456789abcdef"


def observation(observed) -> str:
    return json.dumps({"token": TOKEN, "observed": observed})


def tensor_spec(**changes):
    return {"tensor": "float32", "shape": [2], "data": [1.0, 2.0], "grad": False, **changes}


def test_what_the_probe_writes_is_read_back():
    text = probe.observation_text({"token": TOKEN, "answer": "f", "kind": "value"},
                                  {"f": {"y": torch.arange(4.0).view(2, 2), "layer": nn.Linear(2, 3)}})
    value = read_observation(text, TOKEN)["value"]
    assert torch.equal(value["y"], torch.arange(4.0).view(2, 2)) and value["y"].dtype == torch.float32
    assert isinstance(value["layer"], Layer) and value["layer"].kind == "Linear"
    assert value["layer"].params["weight"].shape == (3, 2) and value["layer"].build().out_features == 3


@pytest.mark.parametrize("text, why", [
    (observation({"status": "ran", "value": 1}).replace(TOKEN, "another"), "not an observation for this check"),
    ('{"token": "' + TOKEN + '", "observed": {"status": "ran", "value": NaN}}', "NaN is not JSON"),
    ("[" * 100_000, "not JSON"),
    (observation({"status": "passed"}), "unknown status"),
    (observation({"status": "ran", "value": tensor_spec(shape=[3])}), "does not match its shape"),
    (observation({"status": "ran", "value": tensor_spec(data=["x", 2.0])}), "not of its dtype"),
    (observation({"status": "ran", "value": tensor_spec(tensor="bool", data=[True, False], grad=True)}),
     "not of its dtype"),
    (observation({"status": "ran", "value": tensor_spec(tensor="complex64")}), "unknown dtype"),
    (observation({"status": "ran", "value": tensor_spec(extra=1)}), "unexpected tensor fields"),
    (observation({"status": "ran", "value": {"weird": 1}}), "unknown object"),
    (observation({"status": "ran", "value": {"module": "Evil", "training": True}}), "bad layer arguments"),
    (observation({"status": "ran", "value": {"module": "Linear", "training": True, "init": {"in_features": 1}}}),
     "bad layer arguments"),
    (observation({"status": "ran", "value": "x" * 3_000}), "text too long"),
    (observation({"status": "ran", "value": list(range(probe.MAX_ELEMENTS + 1))}), "more numbers"),
    (observation({"status": "ran", "callable": True, "runs": [{"value": 1}]}), "bad run"),
    (observation({"status": "ran", "callable": True, "runs": [{"value": 1, "after": []}]}), "bad run"),
])
def test_anything_the_probe_cannot_have_written_is_refused(text, why):
    with pytest.raises(MalformedObservation, match=why):
        read_observation(text, TOKEN)


def test_an_observation_larger_than_the_limit_is_refused_before_parsing():
    with pytest.raises(MalformedObservation, match="larger than"):
        read_observation(" " * (probe.MAX_BYTES + 1), TOKEN)


def test_opaque_values_and_tuples_are_kept_apart_from_lists():
    assert decode({"object": "a generator"}) == Opaque("a generator")
    assert decode({"tuple": [1, 2]}) == (1, 2) and decode([1, 2]) == [1, 2]


# --- comparing ----------------------------------------------------------------------------------------------------

WANT = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)


@pytest.mark.parametrize("got, words, mistake", [
    ([1.0, 2.0], "expected the result to be a float32 tensor of shape (2, 2), got a list", None),
    (WANT.clone(), "the result is float64, not float32 (a float64 step", "wrong dtype"),
    (WANT.half(), "the result is float16, not float32", "wrong dtype"),
    (WANT.float().flatten(), "expected the result of shape (2, 2), got shape (4,)", None),
    (WANT.float() * float("nan"), "the result contains NaN or infinity", None),
    (WANT.float() + torch.tensor([[0, 0], [0, 1.0]]), "at [1, 1] expected 4, got 5 (largest difference 1)", None),
])
def test_each_kind_of_difference_has_its_own_sentence(got, words, mistake):
    problem = tensor_problem(got, WANT)
    assert words in problem.detail and problem.mistake == mistake


def test_a_right_float32_result_passes_within_float32_rounding():
    assert tensor_problem(WANT.float() * (1 + 1e-7), WANT) is None
    assert tensor_problem(WANT.double(), WANT, dtype=torch.float64) is None


def test_same_value_compares_tensors_bit_for_bit_and_layers_in_every_part():
    assert same_value(torch.ones(2), torch.ones(2)) and not same_value(torch.ones(2), torch.ones(2).double())
    layer = decode(probe.encode(nn.BatchNorm1d(3)))
    other = nn.BatchNorm1d(3)
    other.running_mean += 1
    assert same_value(layer, decode(probe.encode(nn.BatchNorm1d(3))))
    assert not same_value(layer, decode(probe.encode(other)))
    assert not same_value(layer, decode(probe.encode(nn.BatchNorm1d(3).eval())))
    assert same_value([1, (2, "a")], [1, (2, "a")]) and not same_value([1, 2], (1, 2)) and not same_value(1, True)


def test_input_changes_name_what_changed():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    before = {"model": decode(probe.encode(model)), "x": decode(probe.encode(torch.zeros(2)))}
    model[1].running_var.mul_(2)
    model.eval()
    with torch.no_grad():
        model[0].weight.add_(1)
    after = {"model": decode(probe.encode(model)), "x": decode(probe.encode(torch.ones(2)))}
    report = input_changes(before, after)
    assert report["x"] == {"changed": True}
    assert report["model"]["params"] == ["0.weight"] and report["model"]["buffers"] == ["1.running_var"]
    assert not report["model"]["structure"] and [m[2] for m in report["model"]["modes"]] == [False] * 3
    assert "changed its input `x` in place" in changed_inputs({"x": report["x"]}).detail
    assert "`model` in place: its parameters 0.weight and its buffers 1.running_var" in changed_inputs(report).detail


def test_a_layer_removed_or_a_mode_changed_is_reported_for_what_it_is():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    before = {"model": decode(probe.encode(model))}
    model.eval()
    assert changed_inputs(input_changes(before, {"model": decode(probe.encode(model))})) is None  # modes only
    del model[1]
    report = input_changes(before, {"model": decode(probe.encode(model))})
    assert report["model"]["structure"] and "its layers" in changed_inputs(report).detail
    assert input_changes(before, {})["model"] == {"changed": True}


def test_a_folded_layer_is_checked_for_its_kind_dtype_arguments_and_output():
    conv = nn.Conv2d(2, 3, 3, padding=1).eval()
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        want = conv(x)
    init = {"in_channels": 2, "out_channels": 3, "kernel_size": [3, 3]}

    def check(layer):
        return folded_layer_problem(decode(probe.encode(layer)), "Conv2d", init, x, want, rtol=1e-4, atol=1e-5)

    assert check(conv) is None
    assert "should be one nn.Conv2d" in check(nn.Sequential(conv)).detail
    assert check(conv.double()).mistake == "wrong dtype"
    assert "got an nn.Conv2d(in_channels=2, out_channels=3, kernel_size=[1, 1])" in check(nn.Conv2d(2, 3, 1)).detail
    other = nn.Conv2d(2, 3, 3, padding=1).eval()
    assert "the folded layer's output" in check(other).detail

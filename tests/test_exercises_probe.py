"""bnlab.exercises.probe: values become JSON specs and back without losing a bit, dtype or mode; the probe finds the
answer, runs it within a time limit, and reports what came back and what its inputs look like afterwards; it
never writes more than its size limit; and it is self-contained (it is sent as source into a kernel)."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnlab.exercises import probe


def round_trip(value):
    return probe.build(json.loads(json.dumps(probe.encode(value), allow_nan=False)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.uint8, torch.bool])
def test_tensors_come_back_bit_for_bit_with_their_dtype_and_shape(dtype):
    tensor = (torch.randn(3, 4, 2) * 100).to(dtype)
    back = round_trip(tensor)
    assert back.dtype == dtype and back.shape == tensor.shape and torch.equal(back, tensor)


def test_non_finite_numbers_and_requires_grad_survive():
    tensor = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")], requires_grad=True)
    back = round_trip(tensor)
    assert back.requires_grad and torch.equal(back[[0, 2, 3]], tensor.detach()[[0, 2, 3]]) and back[1].isnan()
    assert math.isnan(round_trip(float("nan"))) and round_trip(float("-inf")) == -math.inf


def test_plain_values_keep_their_types():
    value = {"n": 3, "s": "text", "b": True, "none": None, "pair": (1, 2.5), "list": [1, [2]], "set": {3, 1}}
    assert round_trip(value) == {"n": 3, "s": "text", "b": True, "none": None, "pair": (1, 2.5), "list": [1, [2]],
                                 "set": [1, 3]}
    assert round_trip(np.float32(1.5)) == 1.5 and round_trip(np.bool_(True)) is True
    assert torch.equal(round_trip(np.arange(3)), torch.arange(3))


def test_layers_come_back_with_their_weights_buffers_and_each_ones_mode():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4, eps=0.1, momentum=0.3), nn.ReLU(),
                          nn.Dropout(0.25), nn.Sequential(nn.Linear(4, 2)))
    model(torch.randn(5, 3))  # running statistics that are not the defaults
    model.train()
    model[1].eval()
    back = round_trip(model)
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    assert [m.training for m in back.modules()] == [m.training for m in model.modules()]
    assert back[0].bias is None and back[1].eps == 0.1 and back[1].momentum == 0.3 and back[3].p == 0.25
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    x = torch.randn(6, 3)
    model.eval(), back.eval()
    assert torch.equal(model(x), back(x))


def test_a_custom_module_is_described_but_never_built():
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

    spec = probe.encode(Mine())
    assert spec["custom"] and spec["module"] == "Mine" and spec["children"][0][1]["module"] == "Linear"
    with pytest.raises(ValueError, match="cannot build a Mine"):
        probe.build(spec)


def test_sizes_are_capped():
    assert "too large" in probe.encode(torch.zeros(probe.MAX_ELEMENTS + 1))["object"]
    assert "too large" in probe.encode(list(range(probe.MAX_ELEMENTS + 1)))["object"]
    nested = []
    for _ in range(probe.MAX_DEPTH + 5):
        nested = [nested]
    assert "nested too deeply" in json.dumps(probe.encode(nested))
    assert probe.encode(2 ** 70) == {"object": "integer too large"}
    assert len(probe.encode("x" * 10_000)) == probe.MAX_TEXT
    assert probe.encode(object()) == {"object": "object"}


# --- observing an answer -------------------------------------------------------------------------------------------


def request(kind="function", cases=(), limit=5.0):
    return {"token": "t", "answer": "f", "kind": kind, "cases": list(cases), "time_limit": limit}


def case(*args, **kwargs):
    return {"names": [f"a{i}" for i in range(len(args))], "args": [probe.encode(a) for a in args],
            "kwargs": {k: probe.encode(v) for k, v in kwargs.items()}}


def test_the_answer_is_found_by_name_or_reported_missing_or_unanswered():
    assert probe.observe(request(), {})["status"] == "not found"
    for placeholder in (None, ..., ""):
        assert probe.observe(request(), {"f": placeholder})["status"] == "not attempted"
    assert probe.observe(request("value"), {"f": 3})["value"] == 3
    assert probe.observe(request(), {"f": 3}) == {"status": "ran", "callable": False, "type": "int"}


def test_a_function_runs_on_every_case_and_its_inputs_are_reported_as_they_are_afterwards():
    def f(x, scale=1.0):
        x.mul_(2)  # changes its input
        return x.sum() * scale

    x = torch.ones(3)
    observed = probe.observe(request(cases=[case(x, scale=0.5), case(x)]), {"f": f})
    runs = observed["runs"]
    assert [probe.build(r["value"]).item() for r in runs] == [3.0, 6.0]
    assert torch.equal(probe.build(runs[0]["after"]["a0"]), torch.full((3,), 2.0))  # each case built afresh
    assert torch.equal(x, torch.ones(3))  # the caller's own tensor is never handed out


def test_runs_stop_at_the_first_error_and_not_implemented_means_not_attempted():
    def f(x):
        if x > 1:
            raise ValueError("too big")
        return x

    runs = probe.observe(request(cases=[case(1), case(2), case(3)]), {"f": f})["runs"]
    assert runs == [{"value": 1, "after": {"a0": 1}}, {"raised": "ValueError: too big"}]

    def todo(x):
        raise NotImplementedError

    assert probe.observe(request(cases=[case(1)]), {"f": todo}) == {"status": "not attempted"}


def test_a_function_that_runs_too_long_is_stopped_at_the_time_limit():
    def slow(x):
        while True:
            try:
                pass
            except Exception:
                pass

    runs = probe.observe(request(cases=[case(1)], limit=0.3), {"f": slow})["runs"]
    assert runs == [{"timeout": 0.3}]


def test_sys_exit_in_the_answer_is_reported_as_raised():
    def leaves(x):
        raise SystemExit(2)

    assert probe.observe(request(cases=[case(1)]), {"f": leaves})["runs"] == [{"raised": "SystemExit: 2"}]


def test_forbidden_functions_raise_while_the_answer_runs_and_work_again_afterwards():
    def normalise(x):
        return torch.nn.functional.batch_norm(x, None, None, training=True)

    x = torch.randn(4, 3)
    forbid = {**request(cases=[case(x)]), "forbidden": ["torch.nn.functional.batch_norm", "no.such.function"]}
    runs = probe.observe(forbid, {"f": normalise})["runs"]
    assert runs == [{"raised": "ForbiddenCall: torch.nn.functional.batch_norm is not allowed in this exercise"}]
    assert probe.observe({**forbid, "forbidden": []}, {"f": normalise})["runs"][0]["value"]["shape"] == [4, 3]
    torch.testing.assert_close(normalise(x), nn.BatchNorm1d(3, affine=False)(x))  # restored
    assert all(hasattr(owner, name) for owner, name in probe.FORBIDDABLE.values() if name != "native_group_norm")


def test_forbidden_functions_are_restored_when_the_answer_runs_past_its_time_limit():
    original = torch.nn.functional.layer_norm

    def slow(x):
        while True:
            pass

    forbid = {**request(cases=[case(1)], limit=0.3), "forbidden": ["torch.nn.functional.layer_norm"]}
    assert probe.observe(forbid, {"f": slow})["runs"] == [{"timeout": 0.3}]
    assert torch.nn.functional.layer_norm is original


def test_observation_text_is_strict_json_within_its_size_limit(monkeypatch):
    text = probe.observation_text(request("value"), {"f": float("nan")})
    assert json.loads(text) == {"token": "t", "observed": {"status": "ran", "value": {"float": "nan"}}}
    monkeypatch.setattr(probe, "MAX_BYTES", 1_000)
    big = json.loads(probe.observation_text(request("value"), {"f": "x" * 1_500}))
    assert big["observed"]["status"] == "too large" and big["observed"]["bytes"] > 1_000


def test_a_value_that_breaks_the_probe_is_reported_not_raised():
    class HostileList(list):
        def __len__(self):
            raise RuntimeError("no length for you")

    observed = json.loads(probe.observation_text(request("value"), {"f": HostileList([1])}))["observed"]
    assert observed == {"status": "probe failed", "error": "RuntimeError: no length for you"}


def test_the_probe_imports_only_the_standard_library_and_torch():
    tree = ast.parse(Path(probe.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.level == 0}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree)), "no relative imports"
    assert imported <= {"__future__", "json", "math", "signal", "threading", "contextlib", "torch", "IPython"}

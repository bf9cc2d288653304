"""The checking side's view of an answer: observations read strictly, and compared exactly with a reference.

``read_observation`` takes the JSON text that ``probe`` wrote (in the notebook, or in a submission's kernel that may
have been tampered with) and accepts only what ``probe.encode`` can write: sizes capped, every tensor's data
matching its dtype and shape, modules only as descriptions. Anything else raises ``MalformedObservation``.

The comparisons state what they expect and say what differs, one specific sentence per kind of difference: not a
tensor, the wrong dtype (float64 for a float32 task), the wrong shape, NaN, the values, an input changed in place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from . import probe

STATUSES_OBSERVED = ("ran", "not attempted", "not found", "probe failed", "too large")


class MalformedObservation(ValueError):
    """Observation data that ``probe`` cannot have written."""


@dataclass(frozen=True)
class Layer:
    """A module as the probe described it: its type, constructor arguments (``spec["init"]``), parameters and
    buffers (tensors), mode and children. ``build()`` makes a fresh copy of a layer from ``probe.LAYERS``."""

    kind: str
    training: bool
    params: dict
    buffers: dict
    children: tuple
    custom: bool
    spec: dict

    @property
    def state(self) -> dict:
        return {**self.params, **self.buffers}

    def build(self) -> torch.nn.Module:
        return probe.build(self.spec)

    def named_modules(self, prefix: str = ""):
        """``(name, layer)`` for this layer and every layer inside it, as ``nn.Module.named_modules()`` names them."""
        yield prefix, self
        for name, child in self.children:
            if isinstance(child, Layer):
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (layer for _, layer in self.named_modules())

    def modes(self) -> list:
        """Every layer's mode: ``[[name, type, training]]``, the model itself named ``"(model)"``."""
        return [[name or "(model)", layer.kind, layer.training] for name, layer in self.named_modules()]

    def named_tensors(self, kind: str) -> dict:
        """Every parameter (``kind="params"``) or buffer (``"buffers"``) by its full name."""
        return {f"{name}.{key}" if name else key: tensor for name, layer in self.named_modules()
                for key, tensor in getattr(layer, kind).items()}


@dataclass(frozen=True)
class Opaque:
    """A value the probe could not write down (a type it does not know, or too large)."""

    description: str

    def __repr__(self) -> str:
        return f"<{self.description}>"


class Reader:
    """Decodes one observation, counting the numbers it holds."""

    def __init__(self):
        self.left = probe.MAX_ELEMENTS

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise MalformedObservation("more numbers than an observation may hold")

    def value(self, data, depth: int = 0):
        if depth > probe.MAX_DEPTH + 2:
            raise MalformedObservation("nested too deeply")
        if data is None or isinstance(data, (bool, int)):
            return data
        if isinstance(data, float):
            if not math.isfinite(data):
                raise MalformedObservation("a bare non-finite number")
            return data
        if isinstance(data, str):
            if len(data) > probe.MAX_TEXT:
                raise MalformedObservation("text too long")
            return data
        if isinstance(data, list):
            self.spend(len(data))
            return [self.value(item, depth + 1) for item in data]
        if not isinstance(data, dict) or len(data) == 0:
            raise MalformedObservation(f"unexpected {type(data).__name__}")
        if "tensor" in data:
            return self.tensor(data)
        if "module" in data:
            return self.module(data, depth)
        if set(data) == {"tuple"} and isinstance(data["tuple"], list):
            self.spend(len(data["tuple"]))
            return tuple(self.value(item, depth + 1) for item in data["tuple"])
        if set(data) == {"dict"} and isinstance(data["dict"], list):
            self.spend(len(data["dict"]))
            out = {}
            for pair in data["dict"]:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise MalformedObservation("bad dict item")
                key = self.value(pair[0], depth + 1)
                out[key if isinstance(key, (str, int, float, bool)) or key is None else repr(key)] = \
                    self.value(pair[1], depth + 1)
            return out
        if set(data) == {"float"} and data["float"] in ("nan", "inf", "-inf"):
            return float(data["float"])
        if set(data) == {"object"} and isinstance(data["object"], str):
            return Opaque(data["object"][:200])
        raise MalformedObservation("unknown object")

    def tensor(self, data: dict) -> torch.Tensor:
        if not set(data) <= {"tensor", "shape", "data", "grad"}:
            raise MalformedObservation("unexpected tensor fields")
        dtype, shape, values = probe.DTYPES.get(data["tensor"]), data.get("shape"), data.get("data")
        if dtype is None:
            raise MalformedObservation("unknown dtype")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(type(n) is int and n >= 0 for n in shape)):
            raise MalformedObservation("bad tensor shape")
        if not isinstance(values, list) or len(values) != math.prod(shape):
            raise MalformedObservation("tensor data does not match its shape")
        self.spend(len(values))
        if dtype.is_floating_point:
            ok = all(type(v) in (int, float) or v in ("nan", "inf", "-inf") for v in values)
        elif dtype == torch.bool:
            ok = all(type(v) is bool for v in values)
        else:
            ok = all(type(v) is int for v in values)
        grad = data.get("grad", False)
        if not ok or type(grad) is not bool or (grad and not dtype.is_floating_point):
            raise MalformedObservation("tensor data is not of its dtype")
        try:
            return probe.build_tensor(data)
        except (OverflowError, RuntimeError, ValueError) as error:
            raise MalformedObservation(f"tensor data out of range ({error})") from None

    def module(self, data: dict, depth: int) -> Layer:
        if not set(data) <= {"module", "training", "params", "buffers", "children", "init", "custom"}:
            raise MalformedObservation("unexpected module fields")
        kind, training = data["module"], data.get("training")
        children, init, custom = data.get("children", []), data.get("init"), data.get("custom", False)
        if not (isinstance(kind, str) and len(kind) <= 100 and type(training) is bool
                and isinstance(children, list) and type(custom) is bool):
            raise MalformedObservation("bad module")
        if not custom and (kind not in probe.LAYERS or not isinstance(init, dict)
                           or set(init) != set(probe.LAYERS[kind])
                           or not all(v is None or type(v) in (bool, int, float) or
                                      (type(v) is list and all(type(i) is int for i in v)) for v in init.values())):
            raise MalformedObservation("bad layer arguments")
        tensors = {}
        for group in ("params", "buffers"):
            items = data.get(group, {})
            if not isinstance(items, dict):
                raise MalformedObservation("bad module state")
            tensors[group] = {}
            for name, spec in items.items():
                if not (isinstance(name, str) and isinstance(spec, dict) and "tensor" in spec):
                    raise MalformedObservation("bad module state")
                tensors[group][name] = self.tensor(spec)
        kids = []
        for pair in children:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise MalformedObservation("bad module children")
            kids.append((pair[0], self.value(pair[1], depth + 1)))
        return Layer(kind, training, tensors["params"], tensors["buffers"], tuple(kids), custom, data)


def decode(data):
    """The value a spec from ``probe.encode`` stands for; tensors keep their dtype, modules come back as
    ``Layer`` descriptions. Raises ``MalformedObservation`` on anything ``probe.encode`` cannot have written."""
    return Reader().value(data)


def reject_constant(name: str):
    raise MalformedObservation(f"{name} is not JSON")


def read_observation(text: str, token: str | None) -> dict:
    """The observation in ``text`` (JSON from ``probe.observation_text``), checked field by field, with its values
    decoded. Raises ``MalformedObservation``."""
    if not isinstance(text, str) or len(text) > probe.MAX_BYTES:
        raise MalformedObservation("not text, or larger than an observation may be")
    try:
        data = json.loads(text, parse_constant=reject_constant)
    except MalformedObservation:
        raise
    except (ValueError, RecursionError) as error:
        raise MalformedObservation(f"not JSON ({type(error).__name__})") from None
    if not (isinstance(data, dict) and data.get("token") == token and isinstance(data.get("observed"), dict)):
        raise MalformedObservation("not an observation for this check")
    observed = data["observed"]
    status = observed.get("status")
    if status not in STATUSES_OBSERVED:
        raise MalformedObservation("unknown status")
    if status != "ran":
        return {"status": status, **{k: str(v)[:400] for k, v in observed.items() if k in ("error", "bytes")}}
    reader = Reader()
    if "value" in observed:
        return {"status": "ran", "value": reader.value(observed["value"])}
    if observed.get("callable") is False:
        return {"status": "ran", "callable": False, "type": str(observed.get("type"))[:100]}
    runs = observed.get("runs")
    if observed.get("callable") is not True or not isinstance(runs, list) or len(runs) > 100:
        raise MalformedObservation("bad runs")
    return {"status": "ran", "callable": True, "runs": [read_run(run, reader) for run in runs]}


def read_run(run, reader: Reader) -> dict:
    if not isinstance(run, dict):
        raise MalformedObservation("bad run")
    if set(run) == {"raised"} and isinstance(run["raised"], str):
        return {"raised": run["raised"][:400]}
    if set(run) == {"timeout"} and (run["timeout"] is None or type(run["timeout"]) in (int, float)):
        return {"timeout": run["timeout"]}
    if set(run) != {"value", "after"} or not isinstance(run["after"], dict):
        raise MalformedObservation("bad run")
    after = {str(name)[:100]: reader.value(value) for name, value in run["after"].items()}
    return {"value": reader.value(run["value"]), "after": after}


# --- comparing ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """What is wrong with one output: the typical mistake it matches (if any) and the details."""

    detail: str
    mistake: str | None = None


def fmt(x: float) -> str:
    return f"{x:.6g}"


def shape_text(shape) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def describe_value(value) -> str:
    """Short text for a value in a failure message."""
    if isinstance(value, torch.Tensor):
        return f"a {probe.dtype_name(value.dtype)} tensor of shape {shape_text(value.shape)}"
    if isinstance(value, Layer):
        return f"an nn.{value.kind}" if not value.custom else f"a {value.kind} module"
    if isinstance(value, Opaque):
        return f"a {value.description}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, dict):
        return "a dict"
    return repr(value)[:120]


def close(got, want, *, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether tensor ``got`` has ``want``'s shape and values (to float tolerance; NaN never matches). Compares in
    float64; the dtype is checked separately (``tensor_problem``)."""
    return (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)
            and tuple(got.shape) == tuple(want.shape) and got.is_floating_point()
            and bool(torch.isfinite(got).all())
            and torch.allclose(got.to(torch.float64), want.to(torch.float64), rtol=rtol, atol=atol))


def tensor_difference(got: torch.Tensor, want: torch.Tensor) -> str:
    """Where two tensors of the same shape differ most, in words."""
    gap = (got.to(torch.float64) - want.to(torch.float64)).abs()
    index = tuple(int(i) for i in torch.nonzero(gap == gap.max())[0]) if gap.dim() else ()
    where = f"[{', '.join(str(i) for i in index)}]" if index else "the value"
    return (f"at {where} expected {fmt(float(want[index]))}, got {fmt(float(got[index]))} "
            f"(largest difference {fmt(float(gap.max()))})")


FLOAT64_NOTE = "a float64 step, such as .double() or a constant made with dtype=torch.float64, turns it into float64"


def tensor_problem(got, want: torch.Tensor, *, dtype: torch.dtype = torch.float32, what: str = "the result",
                   rtol: float = 1e-4, atol: float = 1e-5) -> Problem | None:
    """None if ``got`` is a ``dtype`` tensor of ``want``'s shape and values; else what differs, checked in this
    order: a tensor at all, the dtype, the shape, NaN or infinity, the values."""
    expected = f"a {probe.dtype_name(dtype)} tensor of shape {shape_text(want.shape)}"
    if not isinstance(got, torch.Tensor):
        return Problem(f"expected {what} to be {expected}, got {describe_value(got)}")
    if got.dtype != dtype:
        note = f" ({FLOAT64_NOTE})" if got.dtype == torch.float64 and dtype == torch.float32 else ""
        return Problem(f"{what} is {probe.dtype_name(got.dtype)}, not {probe.dtype_name(dtype)}{note}", "wrong dtype")
    if tuple(got.shape) != tuple(want.shape):
        return Problem(f"expected {what} of shape {shape_text(want.shape)}, got shape {shape_text(got.shape)}")
    if not bool(torch.isfinite(got).all()):
        return Problem(f"{what} contains NaN or infinity")
    if not close(got, want, rtol=rtol, atol=atol):
        return Problem(f"{what}: " + tensor_difference(got, want))
    return None


def folded_layer_problem(got, kind: str, init: dict, x: torch.Tensor, want: torch.Tensor, *, rtol: float,
                         atol: float) -> Problem | None:
    """None if ``got`` is one ``nn.<kind>`` layer (a fold of BatchNorm into a Linear or Conv layer) with float32
    weights, the constructor arguments in ``init`` (``{name: value}``, as ``probe.LAYERS`` names them) and, in
    eval mode, the output ``want`` on ``x``; else what differs."""
    if not (isinstance(got, Layer) and got.kind == kind and not got.custom):
        return Problem(f"the answer should be one nn.{kind} layer (BatchNorm folded into it); it is "
                       f"{describe_value(got)}")
    weight = got.state.get("weight")
    if weight is not None and weight.dtype != torch.float32:
        return Problem(f"the folded layer's weight should be float32, like the input layers'; it is "
                       f"{probe.dtype_name(weight.dtype)}", "wrong dtype")
    found = {name: got.spec["init"].get(name) for name in init}
    if found != init:
        text = lambda args: ", ".join(f"{name}={value}" for name, value in args.items())  # noqa: E731
        return Problem(f"expected an nn.{kind}({text(init)}), got an nn.{kind}({text(found)})")
    layer = got.build().eval()
    with torch.no_grad():
        y = layer.to(torch.float64)(x.to(torch.float64)).to(torch.float32)
    return tensor_problem(y, want, rtol=rtol, atol=atol, what="the folded layer's output")


def same_value(a, b) -> bool:
    """Whether two decoded values are the same: tensors bit for bit (dtype and shape included), layers in every
    parameter, buffer, mode and child."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, Layer) or isinstance(b, Layer):
        return (isinstance(a, Layer) and isinstance(b, Layer) and a.modes() == b.modes() and
                all(a.named_tensors(k).keys() == b.named_tensors(k).keys() and
                    all(same_value(t, b.named_tensors(k)[n]) for n, t in a.named_tensors(k).items())
                    for k in ("params", "buffers")))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def input_changes(before: dict, after: dict) -> dict:
    """How each input differs afterwards from what was sent: ``{"changed": bool}``, or for a layer ``{"params":
    [names changed], "buffers": [...], "structure": bool, "modes": its layers' modes afterwards}``."""
    report = {}
    for name, original in before.items():
        now = after.get(name)
        if isinstance(original, Layer) and isinstance(now, Layer):
            tensors = {k: (original.named_tensors(k), now.named_tensors(k)) for k in ("params", "buffers")}
            report[name] = {
                **{k: sorted(n for n, t in old.items() if n not in new or not same_value(t, new[n]))
                   for k, (old, new) in tensors.items()},
                "structure": [(n, l.kind) for n, l in original.named_modules()] != [(n, l.kind) for n, l in
                                                                                   now.named_modules()]
                or any(old.keys() != new.keys() for old, new in tensors.values()),
                "modes": now.modes(),
            }
        else:
            report[name] = {"changed": not same_value(original, now)}
    return report


def changed_inputs(changed: dict) -> Problem | None:
    """A problem naming the first input the answer changed in place (values, parameters, buffers or layers), if
    any, from ``input_changes``. A layer's modes (``training`` flags) are not counted here: the exercises that care
    check them."""
    for name, report in changed.items():
        if report.get("changed"):
            return Problem(f"it changed its input `{name}` in place", "input changed in place")
        parts = [f"its {label} {', '.join(report[kind][:3])}" for kind, label in
                 (("params", "parameters"), ("buffers", "buffers")) if report.get(kind)]
        if report.get("structure"):
            parts.append("its layers")
        if parts:
            return Problem(f"it changed `{name}` in place: {' and '.join(parts)}", "input changed in place")
    return None

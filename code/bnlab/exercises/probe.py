"""What runs where the learner's code runs: build a check's inputs, call the answer, write down what came back.

A check crosses a process boundary twice, always as plain JSON data (never pickle):

* the *request* goes in: the answer's name and, for a function, its inputs as *specs* (below), drawn by the
  checking side;
* the *observation* comes out: what the answer returned on each input, and its inputs as they were afterwards.

The checking side (``bnlab.exercises.core``) compares the observation with its reference; no reference value and
no reference code ever exists here. In a notebook, ``qN.check()`` calls ``observe`` directly. The grader sends
this file's source into the submission's kernel, where ``publish`` runs it on the grader's request and sends
the observation back as one display message. So this file imports only the standard library and torch, and
nothing from ``bnlab``.

Specs: JSON data that stands for a Python value. ``None``, booleans, integers, finite floats and strings stand for
themselves, JSON lists for lists, and every JSON object carries exactly one tag:

* ``{"tensor": "float32", "shape": [2, 3], "data": [...], "grad": false}``: a tensor (``"nan"``, ``"inf"``,
  ``"-inf"`` for non-finite elements);
* ``{"module": "Linear", "init": {...}, "params": {...}, "buffers": {...}, "training": true, "children": [[name,
  spec], ...]}``: a layer from ``LAYERS`` (a ``"custom"`` module is described, never built);
* ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}``, ``{"float": "nan"}``, and ``{"object": "what"}`` for a
  value that cannot be written down (an unknown type, or too large).
"""

from __future__ import annotations

import json
import math
import signal
import threading
from contextlib import contextmanager

import torch
from torch import nn

MIME_TYPE = "application/vnd.bnlab.observation+json"
MAX_ELEMENTS = 200_000  # numbers one observation may hold, all its tensors together
MAX_DEPTH = 12  # nesting of lists, dicts and modules
MAX_TEXT = 2_000  # characters of a string
MAX_BYTES = 4_000_000  # bytes of an observation's JSON

# The layers a spec can build: their constructor arguments, read back from a built layer by the same names.
LAYERS = {
    "Sequential": (),
    "Linear": ("in_features", "out_features", "bias"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups", "bias"),
    "BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "LayerNorm": ("normalized_shape", "eps", "elementwise_affine"),
    "GroupNorm": ("num_groups", "num_channels", "eps", "affine"),
    "ReLU": (),
    "Tanh": (),
    "Sigmoid": (),
    "Identity": (),
    "Flatten": ("start_dim", "end_dim"),
    "Dropout": ("p",),
    "MaxPool2d": ("kernel_size", "stride"),
    "AdaptiveAvgPool2d": ("output_size",),
}
# The functions an exercise may forbid while the answer runs (``request["forbidden"]``), by name: PyTorch's
# normalisation functions, which nn.BatchNorm*, nn.InstanceNorm*, nn.GroupNorm and nn.LayerNorm call, for the
# exercises that ask for a normalisation computed from tensor operations.
FORBIDDABLE = {
    **{f"torch.nn.functional.{name}": (nn.functional, name)
       for name in ("batch_norm", "instance_norm", "group_norm", "layer_norm")},
    **{f"torch.{name}": (torch, name) for name in (
        "batch_norm", "native_batch_norm", "instance_norm", "group_norm", "native_group_norm", "layer_norm",
        "native_layer_norm")},
}
DTYPES = {name: getattr(torch, name) for name in (
    "float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")}


def describe_error(error: BaseException) -> str:
    """An exception as one short line: ``"ValueError: the message"``."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 400 else text[:397] + "..."


class ChecksTimeout(BaseException):
    """Raised inside learner code when a check runs past its time limit (a BaseException, like KeyboardInterrupt,
    so that a learner's ``except Exception`` does not swallow it)."""


@contextmanager
def time_limited(seconds: float | None):
    """Raise ``ChecksTimeout`` in the running code after ``seconds`` (and every second after, until the block ends).

    Works in the main thread of a process that has ``SIGALRM`` (Linux, macOS: Colab, Jupyter, the grader's kernel);
    elsewhere the block runs without a limit (the grader also limits each check from outside the kernel).
    """
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise ChecksTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


class ForbiddenCall(Exception):
    """Raised when an answer calls a function its exercise forbids (``forbidden``)."""


@contextmanager
def forbidden(names: list):
    """Within the block, every function in ``names`` (keys of ``FORBIDDABLE``; others are ignored) raises
    ``ForbiddenCall`` instead of running; afterwards each is restored."""
    saved = []
    for name in names or ():
        owner, attribute = FORBIDDABLE.get(name, (None, None))
        if owner is None or not hasattr(owner, attribute):
            continue

        def blocked(*args, _name=name, **kwargs):
            raise ForbiddenCall(f"{_name} is not allowed in this exercise")

        saved.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, blocked)
    try:
        yield
    finally:
        for owner, attribute, original in reversed(saved):
            setattr(owner, attribute, original)


# --- values to specs ----------------------------------------------------------------------------------------------


class Budget:
    """How many more numbers an encoding may write."""

    def __init__(self, elements: int = MAX_ELEMENTS):
        self.left = elements


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def number(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def encode_tensor(tensor: torch.Tensor, budget: Budget) -> dict:
    name = dtype_name(tensor.dtype)
    if name not in DTYPES or tensor.dim() > 8 or tensor.is_sparse:
        return {"object": f"tensor of dtype {name} and shape {tuple(tensor.shape)}"}
    if tensor.numel() > budget.left:
        return {"object": f"tensor of shape {tuple(tensor.shape)}, too large to check"}
    budget.left -= tensor.numel()
    flat = tensor.detach().to("cpu").reshape(-1)
    if flat.is_floating_point():
        data = [number(x) for x in flat.to(torch.float64).tolist()]  # exact for every float dtype
    else:
        data = flat.tolist()
    return {"tensor": name, "shape": list(tensor.shape), "data": data, "grad": bool(tensor.requires_grad)}


def layer_init(module: nn.Module) -> dict:
    init = {}
    for name in LAYERS[type(module).__name__]:
        value = getattr(module, name, None)
        if name == "bias" and not isinstance(value, bool):
            value = value is not None  # the constructor's flag, from the layer's bias tensor
        init[name] = list(value) if isinstance(value, tuple) else value
    return init


def encode_module(module: nn.Module, budget: Budget, depth: int) -> dict:
    kind = type(module).__name__
    known = type(module).__module__.startswith("torch.nn") and kind in LAYERS
    spec = {"module": kind, "training": bool(module.training),
            "params": {name: encode_tensor(t, budget) for name, t in module._parameters.items() if t is not None},
            "buffers": {name: encode_tensor(t, budget) for name, t in module._buffers.items() if t is not None},
            "children": [[name, encode(child, budget, depth + 1)] for name, child in module.named_children()]}
    if known:
        spec["init"] = layer_init(module)
    else:
        spec["custom"] = True
    return spec


def encode(value, budget: Budget | None = None, depth: int = 0):
    """``value`` as a spec. Sizes are capped (``MAX_ELEMENTS`` numbers, ``MAX_DEPTH`` levels)."""
    budget = Budget() if budget is None else budget
    if depth > MAX_DEPTH:
        return {"object": "value nested too deeply"}
    if value is None or isinstance(value, (bool, str)):
        return value[:MAX_TEXT] if isinstance(value, str) else value
    if isinstance(value, int):
        return value if abs(value) < 2**62 else {"object": "integer too large"}
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": number(value)}
    if type(value).__module__ == "numpy":
        try:
            value = torch.as_tensor(value)
        except Exception:
            return {"object": type(value).__name__}
        if value.dim() == 0 and type(value).__name__ != "ndarray":  # a NumPy scalar: a Python number
            return encode(value.item(), budget, depth)
    if isinstance(value, torch.Tensor):
        return encode_tensor(value, budget)
    if isinstance(value, nn.Module):
        return encode_module(value, budget, depth)
    if isinstance(value, (list, tuple, set, frozenset)):
        if len(value) > budget.left:
            return {"object": f"{type(value).__name__} of {len(value)} items, too large to check"}
        budget.left -= len(value)
        items = list(value)
        if isinstance(value, (set, frozenset)):
            try:
                items = sorted(items)
            except TypeError:
                pass
        encoded = [encode(item, budget, depth + 1) for item in items]
        return {"tuple": encoded} if isinstance(value, tuple) else encoded
    if isinstance(value, dict):
        if len(value) > min(1_000, budget.left):
            return {"object": f"dict of {len(value)} items, too large to check"}
        budget.left -= len(value)
        return {"dict": [[encode(k, budget, depth + 1), encode(v, budget, depth + 1)] for k, v in value.items()]}
    return {"object": type(value).__name__}


# --- specs to values ----------------------------------------------------------------------------------------------


def build_tensor(spec: dict) -> torch.Tensor:
    dtype = DTYPES[spec["tensor"]]
    data = [float(x) if isinstance(x, str) else x for x in spec["data"]]  # "nan", "inf", "-inf"
    tensor = torch.tensor(data, dtype=torch.float64 if dtype.is_floating_point else dtype)
    tensor = tensor.to(dtype).reshape(spec["shape"])
    return tensor.requires_grad_(True) if spec.get("grad") else tensor


def build_module(spec: dict) -> nn.Module:
    kind = spec["module"]
    if spec.get("custom") or kind not in LAYERS:
        raise ValueError(f"cannot build a {kind}: only the layers in LAYERS")
    children = [build(child) for _, child in spec.get("children", [])]
    init = {k: tuple(v) if isinstance(v, list) else v for k, v in (spec.get("init") or {}).items()}
    module = nn.Sequential(*children) if kind == "Sequential" else getattr(nn, kind)(**init)
    for name, tensor_spec in spec.get("params", {}).items():
        if name not in module._parameters:
            raise ValueError(f"a {kind} has no parameter {name!r}")
        tensor = build_tensor(tensor_spec)
        module._parameters[name] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    for name, tensor_spec in spec.get("buffers", {}).items():
        if name not in module._buffers:
            raise ValueError(f"a {kind} has no buffer {name!r}")
        module._buffers[name] = build_tensor(tensor_spec)
    module.training = bool(spec.get("training", True))
    return module


def build(spec):
    """The value a spec stands for: tensors and layers built fresh, every time."""
    if isinstance(spec, list):
        return [build(item) for item in spec]
    if not isinstance(spec, dict):
        return spec
    if "tensor" in spec:
        return build_tensor(spec)
    if "module" in spec:
        return build_module(spec)
    if "tuple" in spec:
        return tuple(build(item) for item in spec["tuple"])
    if "dict" in spec:
        return {build(k): build(v) for k, v in spec["dict"]}
    if "float" in spec:
        return float(spec["float"])
    raise ValueError(f"cannot build {spec!r}")


# --- the probe ---------------------------------------------------------------------------------------------------


def is_unanswered(answer) -> bool:
    return answer is None or answer is Ellipsis or (isinstance(answer, str) and not answer.strip())


def call_once(fn, case: dict) -> dict:
    """Run ``fn`` on one case: ``{"value": what it returned, "after": every input as it is afterwards}`` (the
    checking side compares the inputs with what it sent), or ``{"raised"}``. NotImplementedError propagates."""
    names = case.get("names") or []
    args = [build(spec) for spec in case.get("args", [])]
    kwargs = {name: build(spec) for name, spec in case.get("kwargs", {}).items()}
    try:
        value = fn(*args, **kwargs)
    except (ChecksTimeout, KeyboardInterrupt, NotImplementedError):
        raise
    except BaseException as error:  # SystemExit included: a learner's sys.exit() fails the check
        return {"raised": describe_error(error)}
    budget = Budget()
    encoded = encode(value, budget)
    return {"value": encoded, "after": {name: encode(v, budget) for name, v in [*zip(names, args), *kwargs.items()]}}


def observe(request: dict, namespace: dict) -> dict:
    """Find the answer named ``request["answer"]`` in ``namespace`` and observe it.

    For ``request["kind"] == "value"``: the value itself. For ``"function"``: one run per case in
    ``request["cases"]`` (``{"names", "args", "kwargs"}``, as specs), all within ``request["time_limit"]`` seconds,
    with the functions in ``request["forbidden"]`` (if any) blocked; the runs stop at the first that raises or runs
    out of time.
    """
    name = request["answer"]
    if name not in namespace:
        return {"status": "not found"}
    answer = namespace[name]
    if is_unanswered(answer):
        return {"status": "not attempted"}
    if request["kind"] == "value":
        return {"status": "ran", "value": encode(answer)}
    if not callable(answer):
        return {"status": "ran", "callable": False, "type": type(answer).__name__}
    runs = []
    limit = request.get("time_limit")
    try:
        with time_limited(limit), forbidden(request.get("forbidden")):
            for case in request["cases"]:
                run = call_once(answer, case)
                runs.append(run)
                if "raised" in run:
                    break
    except NotImplementedError:
        return {"status": "not attempted"}
    except ChecksTimeout:
        runs.append({"timeout": limit})
    return {"status": "ran", "callable": True, "runs": runs}


def observation_text(request: dict, namespace: dict) -> str:
    """``observe`` as the JSON text that crosses to the checking side (never larger than ``MAX_BYTES``)."""
    try:
        observed = observe(request, namespace)
    except (ChecksTimeout, KeyboardInterrupt):
        raise
    except BaseException as error:  # an answer whose value breaks the probe itself
        observed = {"status": "probe failed", "error": describe_error(error)}
    text = json.dumps({"token": request.get("token"), "observed": observed}, allow_nan=False, separators=(",", ":"))
    if len(text) > MAX_BYTES:
        text = json.dumps({"token": request.get("token"), "observed": {"status": "too large", "bytes": len(text)}})
    return text


def publish(request_text: str, namespace: dict) -> None:
    """In a Jupyter kernel: observe and send the observation to the grader as one display message."""
    from IPython.display import display

    text = observation_text(json.loads(request_text), namespace)
    display({MIME_TYPE: text}, raw=True)

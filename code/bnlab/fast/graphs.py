"""CUDA graphs: capture one training step on the GPU once and replay it for every batch.

For a model as small as the lecture's MLP a GPU step is dominated by launching its few dozen kernels, not by
running them. ``torch.cuda.CUDAGraph`` records the kernels of one step once; each replay launches them all at
once. ``GraphEngine`` wraps another engine's step (by default ``FusedEngine``'s) this way::

    train(model, data, config, device="cuda", engine=GraphEngine())

It is opt-in: ``bnlab.fast.default_engine`` does not use it until a run on a GPU has shown that replays train
exactly like eager steps (``tests/test_fast_graphs.py`` holds that test; it runs only where CUDA is available).

How a capture stays invisible to the run: capturing needs a few eager warm-up steps first, and those train the
model, update BatchNorm's running statistics and draw dropout masks from the CUDA generator. ``TrainingState``
saves all of that before the warm-up and puts it back, in place, after the capture, so the first replay starts
from the state the first eager step would have started from, with the same random numbers. A new batch shape or
a change of any module's mode flag captures again. Where a step cannot be captured (not on CUDA; BatchNorm with
``momentum=None``, whose averaging factor is read on the host every step; an optimizer other than plain
``torch.optim.SGD``, whose state would appear during the warm-up), the wrapped step runs eagerly:
``graph_unsupported_reason`` says why, and ``GraphEngine`` warns once if a GPU run was asked for and is not
possible.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import mode_flags, model_device
from ..training import Engine
from .fused import FusedEngine

WARMUP_STEPS = 3  # eager steps on a side stream before capturing, as PyTorch's documentation recommends


def graph_unsupported_reason(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> str | None:
    """Why a training step of ``model`` with ``optimizer`` on ``device`` cannot be captured as a CUDA graph
    (``None`` if it can)."""
    if torch.device(device).type != "cuda":
        return f"CUDA graphs need a CUDA device; the model is on {torch.device(device).type}"
    if not hasattr(torch.cuda, "CUDAGraph"):
        return f"this PyTorch ({torch.__version__}) has no torch.cuda.CUDAGraph"
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.training and module.momentum is None:
            return f"BatchNorm layer {name!r} has momentum=None: its averaging factor is read on the host every step"
    if type(optimizer) is not torch.optim.SGD:
        return f"the optimizer is a {type(optimizer).__name__}; only torch.optim.SGD is captured"
    if any(group["momentum"] != 0 for group in optimizer.param_groups):
        return "SGD with momentum creates its momentum buffers at the first step, which a capture would have to undo"
    return None


class TrainingState:
    """A copy of everything a training step changes (parameters, buffers, the optimizer's tensors, the CPU and
    CUDA random generators), put back *in place* by ``restore``: a captured graph keeps reading and writing the
    same tensors. Gradients are not restored: every step overwrites them."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.device = torch.device(device)
        self.tensors = [t for t in (*model.parameters(), *model.buffers())]
        self.tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        self.values = [t.detach().clone() for t in self.tensors]
        self.cpu_random = torch.get_rng_state()
        self.cuda_random = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, value in zip(self.tensors, self.values):
            tensor.copy_(value)
        torch.set_rng_state(self.cpu_random)
        if self.cuda_random is not None:
            torch.cuda.set_rng_state(self.cuda_random, self.device)


class GraphStep:
    """Runs ``step`` as a replayed CUDA graph: the batch is copied into static input tensors, the graph replays,
    and the loss is read from its static output. The first call for a batch shape and set of mode flags captures
    the graph (``capture``)."""

    def __init__(self, step, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.step, self.model, self.optimizer = step, model, optimizer
        self.graph = None
        self.key = None
        self.eager = False  # set for good when a capture fails
        self.static_x = self.static_y = self.static_loss = None

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.eager:
            return self.step(xb, yb)
        key = (tuple(xb.shape), tuple(yb.shape), mode_flags(self.model))
        if key != self.key:
            self.capture(xb, yb)
            self.key = key
            if self.eager:
                return self.step(xb, yb)
        self.static_x.copy_(xb, non_blocking=True)
        self.static_y.copy_(yb, non_blocking=True)
        self.graph.replay()
        return self.static_loss.clone()

    def capture(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """Capture one step on static copies of ``(xb, yb)``. The warm-up steps are undone (``TrainingState``);
        if capturing fails, warn and run eagerly from then on."""
        saved = TrainingState(self.model, self.optimizer, xb.device)
        self.static_x, self.static_y = xb.clone(), yb.clone()
        self.graph = None
        try:
            side = torch.cuda.Stream(device=xb.device)
            side.wait_stream(torch.cuda.current_stream(xb.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.step(self.static_x, self.static_y)
            torch.cuda.current_stream(xb.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_loss = self.step(self.static_x, self.static_y)
            self.graph = graph
        except RuntimeError as err:
            warnings.warn(f"bnlab.fast: CUDA graph capture failed ({str(err).splitlines()[0]}); training without "
                          "CUDA graphs.", RuntimeWarning, stacklevel=3)
            self.eager = True
        finally:
            saved.restore()


class GraphEngine(Engine):
    """Opt-in: the steps of ``inner`` (default ``FusedEngine()``) captured as a CUDA graph and replayed, where
    ``graph_unsupported_reason`` allows; elsewhere ``inner``'s steps run as they are (on a CUDA device, with one
    warning saying why)."""

    def __init__(self, inner: Engine | None = None):
        self.inner = FusedEngine() if inner is None else inner
        if not isinstance(self.inner, Engine):
            raise ValueError(f"inner must be a bnlab.training.Engine; got {self.inner!r}.")

    def make_step(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        step = self.inner.make_step(model, optimizer)
        device = model_device(model)
        reason = graph_unsupported_reason(model, optimizer, device)
        if reason is None:
            return GraphStep(step, model, optimizer)
        if device.type == "cuda":
            warnings.warn(f"bnlab.fast: no CUDA graph for this run: {reason}.", RuntimeWarning, stacklevel=3)
        return step

    def __repr__(self) -> str:
        return f"GraphEngine(inner={self.inner!r})"

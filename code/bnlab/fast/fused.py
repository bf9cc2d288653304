"""A fused training step for the course's MLPs: the plain step's bits, without building an autograd graph.

``FusedStep`` runs forward, cross-entropy and backward of an MLP made of ``Flatten``, ``Linear``, ``BatchNorm1d``,
``ReLU``, ``Dropout`` and ``Identity`` (every model ``bnlab.models.build_mlp`` builds) by calling the ATen kernels
autograd would call, in the same order and on the same arguments, stores the gradients in ``param.grad`` and
updates the parameters as the optimizer's own ``step()`` does (for plain SGD on the CPU it runs that step's one
line per parameter itself; for anything else it calls ``optimizer.step()``). It skips what autograd spends on
recording and walking the graph, which for a model this small is a large part of a step (``python -m bnlab.bench``
measures how much).

**Decision: it stays the default where speed matters, on every device.** ``bnlab.fast.default_engine()`` returns
``FusedEngine()``; the command line and the benchmark use it, and so should any caller that trains many runs.
``bnlab.training.train``'s own default stays the plain step, so that the training module is the plain loop and
imports nothing from here. The fused step may be a default because it meets two rules:

* **It computes the same bits as ``PlainStep``, or it does not run.** It calls private ATen ops
  (``native_batch_norm_backward``, ``nll_loss_forward``, ...) that carry no compatibility promise, so before its
  first step in a process for each model shape, batch shape, thread count and set of mode flags, it trains two
  twin copies of the model for two steps on the real batch, one with itself and one with ``PlainStep``, from the
  same random state, and compares the loss, every parameter, gradient and buffer and the optimizer's state bit
  for bit. On any difference, or an op missing from this PyTorch, it warns once and the run uses ``PlainStep``.
  The check runs on copies and restores the random generators, so it changes nothing about the run.
* **No result depends on timing.** The kernels are autograd's. The one choice made by a timing is the order of a
  Linear layer's forward product, ``x W^T`` or ``(W x^T)^T``, and it is only offered where the two give the same
  bits for that shape (``bnlab.fast.products`` checks it first), so the timing decides the speed, never a result.

Any other model (a CNN, a layer with a hook or a replaced ``forward``, a parameter frozen with
``requires_grad=False``, a dtype other than float32, a module used twice) gets ``PlainStep``, without a warning:
``unsupported_reason(model)`` says why.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..training import Engine, PlainStep
from . import products
from .products import same_bits

aten = torch.ops.aten

NLL_MEAN = 1  # ATen's code for reduction="mean"
IGNORE_INDEX = -100  # F.cross_entropy's default
SUPPORTED = (nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Identity)


def _has_hook(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``FusedStep`` cannot train ``model`` (``None`` if it can).

    It can when ``model`` is an ``nn.Sequential`` of ``Flatten(1, -1)`` first, then ``Linear``, ``BatchNorm1d``,
    ``ReLU``, ``Dropout`` and ``Identity`` layers (exactly these classes), each module used once, in float32, with
    every parameter trainable, and no hook or replaced ``forward`` anywhere (their behaviour could not be
    reproduced).
    """
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not an nn.Sequential"
    layers = list(model)
    if not layers or type(layers[0]) is not nn.Flatten or (layers[0].start_dim, layers[0].end_dim) != (1, -1):
        return "the first layer is not nn.Flatten()"
    if len({id(layer) for layer in layers}) < len(layers):
        return "a module appears twice in the model"
    for i, layer in enumerate(layers):
        if type(layer) not in SUPPORTED or (i > 0 and type(layer) is nn.Flatten):
            return f"layer {i} ({type(layer).__name__}) is not one of Linear, BatchNorm1d, ReLU, Dropout, Identity"
        if "forward" in layer.__dict__:
            return f"layer {i} ({type(layer).__name__}) has a replaced forward"
        if _has_hook(layer):
            return f"layer {i} ({type(layer).__name__}) has a hook"
        if type(layer) is nn.Dropout and (layer.p >= 1 or layer.inplace):
            return f"layer {i} is a Dropout with p={layer.p}, inplace={layer.inplace}"
    if _has_hook(model):
        return "the model has a hook"
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return "a global module hook is registered"
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            return f"{name} is {tensor.dtype}, not float32"
    for name, p in model.named_parameters():
        if not p.requires_grad:
            return f"{name} does not require grad"
    return None


# --- one class per layer kind: forward(x) -> (y, saved), backward(g, saved, grads) -> dx ---------------------------


class _Linear:
    """``nn.Linear``: ``y = x W^T (+ b)``; backward ``dW = g^T x``, ``db = sum_rows(g)``, ``dx = g W``.

    As ``F.linear`` and autograd's ``mm``/``addmm`` backward compute them (``W^T`` is a column-major view, so the
    weight gradient is taken as ``g^T x`` directly); the forward product in the faster of two orders that give the
    same bits (``bnlab.fast.products``)."""

    def __init__(self, m: nn.Linear, slot: int, input_grad: bool):
        self.weight, self.bias, self.slot, self.input_grad = m.weight, m.bias, slot, input_grad
        self.seen, self.swap = None, False  # the forward product's order, for the last input shape and threads seen

    def forward(self, x: torch.Tensor):
        seen = (x.shape, torch.get_num_threads())
        if seen != self.seen:
            self.seen, self.swap = seen, products.use_swapped(x, self.weight, self.bias)
        return products.linear(x, self.weight, self.bias, self.swap), x

    def backward(self, g: torch.Tensor, x: torch.Tensor, grads: list):
        grads[self.slot] = torch.mm(g.t(), x)
        if self.bias is not None:
            grads[self.slot + 1] = g.sum(0)
        return torch.mm(g, self.weight) if self.input_grad else None


class _BatchNorm:
    """``nn.BatchNorm1d``: ATen's ``native_batch_norm`` and ``native_batch_norm_backward``, in train or eval mode
    as the layer's own ``training`` flag says, updating ``running_*`` and ``num_batches_tracked`` as it does."""

    def __init__(self, m: nn.BatchNorm1d, slot: int, input_grad: bool):
        self.m, self.slot, self.weight, self.bias = m, slot, m.weight, m.bias
        self.mask = [input_grad, m.weight is not None, m.bias is not None]  # which gradients to compute
        # BatchNorm(momentum=None) averages with factor 1 / num_batches_tracked: counted here, not read back
        self.count = int(m.num_batches_tracked) if m.momentum is None and m.num_batches_tracked is not None else None

    def forward(self, x: torch.Tensor):
        m = self.m
        factor = 0.0 if m.momentum is None else m.momentum
        if m.training and m.track_running_stats and m.num_batches_tracked is not None:
            m.num_batches_tracked.add_(1)
            if self.count is not None:
                self.count += 1
                factor = 1.0 / self.count
        batch_stats = m.training or (m.running_mean is None and m.running_var is None)
        keep_buffers = not m.training or m.track_running_stats
        running_mean = m.running_mean if keep_buffers else None
        running_var = m.running_var if keep_buffers else None
        if batch_stats and x.shape[0] == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        y, mean, invstd = torch.native_batch_norm(
            x, self.weight, self.bias, running_mean, running_var, batch_stats, factor, m.eps
        )
        return y, (x, running_mean, running_var, mean, invstd, batch_stats)

    def backward(self, g: torch.Tensor, saved: tuple, grads: list):
        x, running_mean, running_var, mean, invstd, batch_stats = saved
        gx, gw, gb = aten.native_batch_norm_backward(
            g, x, self.weight, running_mean, running_var, mean, invstd, batch_stats, self.m.eps, self.mask
        )
        if self.weight is not None:
            grads[self.slot], grads[self.slot + 1] = gw, gb
        return gx


class _ReLU:
    """``nn.ReLU``: ``y = max(x, 0)``; backward ``dx = g * (y > 0)``."""

    def forward(self, x: torch.Tensor):
        y = torch.relu(x)
        return y, y

    def backward(self, g: torch.Tensor, y: torch.Tensor, grads: list):
        return aten.threshold_backward(g, y, 0)


class _Dropout:
    """``nn.Dropout``: ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` in train mode, ``y = x`` in eval mode;
    as ``F.dropout`` runs it: a fused kernel on CUDA, a Bernoulli noise tensor elsewhere."""

    def __init__(self, m: nn.Dropout):
        self.m = m

    def forward(self, x: torch.Tensor):
        p = self.m.p
        if not self.m.training or p == 0:
            return x, None
        if x.is_cuda:
            return torch.native_dropout(x, p, True)
        noise = torch.empty_like(x).bernoulli_(1 - p)
        noise.div_(1 - p)
        return x * noise, noise

    def backward(self, g: torch.Tensor, mask, grads: list):
        if mask is None:
            return g
        if mask.dtype == torch.bool:
            return aten.native_dropout_backward(g, mask, 1.0 / (1.0 - self.m.p))
        return g * mask


class _Flatten:
    """``nn.Flatten()``, the first layer: its input is the data, which needs no gradient."""

    def forward(self, x: torch.Tensor):
        return x.flatten(1), None


def cross_entropy(z: torch.Tensor, y: torch.Tensor, one: torch.Tensor):
    """``F.cross_entropy(z, y)`` (mean over the batch) and its gradient with respect to ``z``, from the kernels
    autograd runs: ``log_softmax``, ``nll_loss`` and their backward. ``one`` is the incoming gradient, 1."""
    log_p = torch._log_softmax(z, 1, False)
    loss, total_weight = aten.nll_loss_forward(log_p, y, None, NLL_MEAN, IGNORE_INDEX)
    g = aten.nll_loss_backward(one, log_p, y, None, NLL_MEAN, IGNORE_INDEX, total_weight)
    return loss, aten._log_softmax_backward_data(g, log_p, 1, z.dtype)


# --- the step ----------------------------------------------------------------------------------------------------


class FusedStep:
    """One training step for an MLP, without autograd: the kernels autograd runs, called directly, then the
    optimizer's own ``step()``.

    Per layer (``x`` the layer's input, ``g`` the gradient flowing back into its output)::

        Linear      y = x @ W^T (+ b)            dW = g^T @ x    db = sum_rows(g)    dx = g @ W
        BatchNorm1d y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta   (ATen's native_batch_norm{,_backward})
        ReLU        y = max(x, 0)                dx = g * (y > 0)
        Dropout     y = x * m / (1 - p)          dx = g * m / (1 - p)     (m ~ Bernoulli(1 - p))
        loss        L = mean_i -log softmax(z_i)[y_i]                     (ATen's log_softmax and nll_loss)

    Each layer follows its own ``training`` flag (a BatchNorm layer frozen in eval mode normalises with its running
    statistics), and BatchNorm updates its running statistics and ``num_batches_tracked`` as ``nn.BatchNorm1d``
    does. The backward pass stops at the first layer with parameters: nothing before it needs a gradient.

    Before the first step for a new batch shape or set of mode flags, ``check_exact`` compares it with
    ``PlainStep`` (once per process for each model shape); if they differ, every step runs ``PlainStep``.
    """

    def __init__(self, model: nn.Sequential, optimizer: torch.optim.Optimizer, *, check: bool = True):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"FusedStep cannot train this model: {reason}.")
        self.model, self.optimizer, self.check = model, optimizer, check
        self.params = list(model.parameters())
        self.modules = list(model.modules())
        self.layers = []
        self.first_trained = None  # the index of the first layer with parameters: backward stops there
        slot = 0
        for m in model:
            kind = type(m)
            if kind is nn.Linear or kind is nn.BatchNorm1d:
                layer = (_Linear if kind is nn.Linear else _BatchNorm)(m, slot, input_grad=slot > 0)
                n_params = len(list(m.parameters()))
                if n_params and self.first_trained is None:
                    self.first_trained = len(self.layers)
                slot += n_params
            elif kind is nn.ReLU:
                layer = _ReLU()
            elif kind is nn.Dropout:
                layer = _Dropout(m)
            elif kind is nn.Flatten:
                layer = _Flatten()
            else:  # nn.Identity
                continue
            self.layers.append(layer)
        if self.first_trained is None:
            self.first_trained = len(self.layers)
        self.direct_sgd = _updates_one_tensor_at_a_time(optimizer, self.params)
        self.checked: set = set()  # (batch shape, threads, mode flags) this step has been checked for
        self.fallback: PlainStep | None = None
        self._one = None

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Train on one batch; return its loss (a 0-d tensor on the device)."""
        if self.check and self.fallback is None:
            key = (tuple(xb.shape), torch.get_num_threads(), tuple(m.training for m in self.modules))
            if key not in self.checked:
                self.checked.add(key)
                mismatch = checked_mismatch(self.model, self.optimizer, xb, yb)
                if mismatch is not None:
                    self.fallback = PlainStep(self.model, self.optimizer)
        if self.fallback is not None:
            return self.fallback(xb, yb)
        return self.fused(xb, yb)

    @torch.no_grad()
    def fused(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The step itself, unchecked."""
        saved = []
        h = xb
        for layer in self.layers:
            h, ctx = layer.forward(h)
            saved.append(ctx)
        if self._one is None or self._one.device != h.device:
            self._one = torch.ones((), dtype=h.dtype, device=h.device)
        loss, g = cross_entropy(h, yb, self._one)
        grads = [None] * len(self.params)
        for i in range(len(self.layers) - 1, self.first_trained - 1, -1):
            g = self.layers[i].backward(g, saved[i], grads)
        for p, grad in zip(self.params, grads):
            p.grad = grad
        if self.direct_sgd:  # what torch.optim.SGD.step() runs here, without its per-call bookkeeping
            lr = self.optimizer.param_groups[0]["lr"]
            for p, grad in zip(self.params, grads):
                p.add_(grad, alpha=-lr)
        else:
            self.optimizer.step()
        return loss


def _updates_one_tensor_at_a_time(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
    """Whether ``optimizer.step()`` is plain SGD over exactly ``params``, run one tensor at a time: then it is
    ``param.add_(grad, alpha=-lr)`` for each parameter (``torch.optim.sgd._single_tensor_sgd`` with momentum and
    weight decay 0), which ``FusedStep`` runs itself, saving the step's bookkeeping (about a tenth of a CPU step
    for the lecture's MLP). ``check_exact`` compares the result with ``optimizer.step()``'s, as for the rest."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    one_at_a_time = group["foreach"] is False or (group["foreach"] is None and all(p.device.type == "cpu" for p in params))
    return (
        one_at_a_time
        and not group.get("fused")
        and group["momentum"] == 0
        and group["weight_decay"] == 0
        and not group["maximize"]
        and [id(p) for p in group["params"]] == [id(p) for p in params]
    )


# --- the exactness check -----------------------------------------------------------------------------------------


def _random_state(device: torch.device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_random_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def check_exact(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
                *, steps: int = 2) -> str | None:
    """Train two twin copies of ``model`` (and ``optimizer``) for ``steps`` steps on ``(xb, yb)``, one with
    ``FusedStep`` and one with ``PlainStep``, from the same random state; ``None`` if the losses, parameters,
    gradients, buffers and optimizer states are bitwise equal, else what differs. ``model``, ``optimizer`` and the
    random generators are left as they were."""
    state = _random_state(xb.device)
    try:
        # copied together, so that each copy's optimizer holds that copy's parameters
        fused_model, fused_optimizer = copy.deepcopy((model, optimizer))
        plain_model, plain_optimizer = copy.deepcopy((model, optimizer))
        try:
            fused = FusedStep(fused_model, fused_optimizer, check=False)
            fused_losses = [fused(xb, yb) for _ in range(steps)]
        except Exception as err:  # a missing or changed private op
            return f"the fused step failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        _set_random_state(state, xb.device)
        plain = PlainStep(plain_model, plain_optimizer)
        plain_losses = [plain(xb, yb) for _ in range(steps)]
    finally:
        _set_random_state(state, xb.device)
    for i, (a, b) in enumerate(zip(fused_losses, plain_losses), start=1):
        if not same_bits(a, b):
            return f"the loss of step {i} differs ({a.item()!r} against {b.item()!r})"
    plain_state = plain_model.state_dict()
    for name, value in fused_model.state_dict().items():
        if not same_bits(value, plain_state[name]):
            return f"{name} differs after {steps} steps"
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters()):
        if not same_bits(a.grad, b.grad):
            return f"the gradient of {name} differs"
    fused_state, plain_state = fused_optimizer.state_dict()["state"], plain_optimizer.state_dict()["state"]
    for index, entries in plain_state.items():
        for key, value in entries.items():
            other = fused_state.get(index, {}).get(key)
            if isinstance(value, torch.Tensor) and not same_bits(other, value):
                return f"the optimizer's {key} of parameter {index} differs"
    return None


_CHECKED: dict[tuple, str | None] = {}  # model shape -> None (exact) or what differed, once per process


def shape_key(model: nn.Module, xb: torch.Tensor) -> tuple:
    """What the check's verdict may depend on: each layer's kind, sizes and settings and mode flag, the batch's
    shape, and the device."""
    layers = []
    for m in model.modules():
        settings = {k: v for k, v in vars(m).items() if isinstance(v, (bool, int, float, str, tuple, type(None)))}
        layers.append((type(m).__name__, tuple(sorted(settings.items()))))
    return tuple(layers), tuple(xb.shape), xb.dtype, str(xb.device), torch.get_num_threads()


def checked_mismatch(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor,
                     yb: torch.Tensor) -> str | None:
    """``check_exact`` once per process for each ``shape_key``; warns once when the fused step is not exact."""
    key = shape_key(model, xb)
    if key not in _CHECKED:
        mismatch = check_exact(model, optimizer, xb, yb)
        _CHECKED[key] = mismatch
        if mismatch is not None:
            warnings.warn(
                f"bnlab.fast: the fused training step does not reproduce the plain step on this PyTorch "
                f"({torch.__version__}): {mismatch}. Training with the plain step instead: the same results, "
                "more slowly.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _CHECKED[key]


class FusedEngine(Engine):
    """``FusedStep`` for every model it supports (checked against the plain step before its first step), the plain
    step for every other."""

    def make_step(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        if unsupported_reason(model) is not None:
            return PlainStep(model, optimizer)
        return FusedStep(model, optimizer)

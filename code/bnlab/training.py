"""Training and evaluation, fast on a CPU and on a GPU.

``train`` puts the model in ``train()`` mode for every epoch and evaluates it in ``eval()`` mode under
``torch.inference_mode()``. How it stays fast for a model as small as the lecture's MLP:

* **Data on the device.** Each split is one tensor on the training device. Every epoch draws one permutation
  from a CPU generator seeded with ``TrainConfig.seed`` (so the batches are the same on every device) and each
  mini-batch is gathered from it by index: no ``DataLoader``, no worker processes, no per-sample Python or PIL.
* **No host synchronisation per step.** The loss is summed on the device and correct predictions are counted
  there; everything is read back once per epoch.
* **No autograd overhead.** For MLPs made of ``Flatten``, ``Linear``, ``BatchNorm1d``, ``ReLU``, ``Dropout`` and
  ``Identity`` (every model ``bnlab.models`` builds), ``FusedMLPStep`` runs forward, cross-entropy, backward and the
  SGD update without building an autograd graph. It calls the very ATen kernels autograd calls, in the same order
  and on the same arguments, so the parameters after every step are bitwise those of the plain
  ``loss.backward(); optimizer.step()`` loop. (On the CPU one product may run with its operands swapped, and the
  loss's log-softmax down the columns of the transposed logits, where that is faster and gives the same bits:
  ``swapped_product_wins`` and ``by_columns_wins`` check both, once per shape.) Any other model,
  or a layer with a hook or a replaced ``forward``, is trained by ``AutogradStep``, which *is* that plain loop.
* **On CUDA:** host-to-device copies are non-blocking, ``Engine(amp=True)`` autocasts the step to bfloat16, and
  the whole step is captured once as a CUDA graph and replayed for every batch (``Engine(cuda_graphs=True)``, the
  default), which removes the kernel-launch overhead that dominates a model this small. The CPU runs the same
  step code eagerly.

``python -m bnlab.bench`` measures all of this against the standard ``DataLoader`` + ``ToTensor()`` pipeline.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset, Split
from .models import build_model, is_finite_number, is_integer

aten = torch.ops.aten

NLL_MEAN = 1  # ATen's code for reduction="mean"
IGNORE_INDEX = -100  # F.cross_entropy's default


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults are the lecture's: plain SGD, lr 0.1, batch 256, 50 epochs, seed 123.

    Attributes:
        epochs, batch_size: how long and in which mini-batches (``drop_last``: a short last batch is skipped).
        lr, momentum, weight_decay: ``torch.optim.SGD``'s settings (momentum 0 and weight decay 0: plain SGD).
        seed: seeds the initialisation (``train_model``), the batch order and dropout.
        eval_batch_size: batch size of the evaluations; it changes only speed and memory, never a result.
        record_train_acc: also evaluate the whole training split after every epoch (``EpochStats.train_acc``);
            that costs about a third of a run, so it is off by default and ``train_acc`` is then ``None``.
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 0.1
    seed: int = 123
    eval_batch_size: int = 1_000
    weight_decay: float = 0.0
    momentum: float = 0.0
    record_train_acc: bool = False

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not (is_integer(value) and value > 0):
                raise ValueError(f"TrainConfig.{name} must be a positive integer; got {value!r}.")
        if not (is_integer(self.seed) and 0 <= self.seed < 2**63):
            raise ValueError(f"TrainConfig.seed must be an integer in [0, 2**63); got {self.seed!r}.")
        if not (is_finite_number(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite positive number; got {self.lr!r}.")
        if not (is_finite_number(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be a finite number >= 0; got {self.weight_decay!r}.")
        if not (is_finite_number(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"TrainConfig.momentum must be a number in [0, 1); got {self.momentum!r}.")
        if not isinstance(self.record_train_acc, bool):
            raise ValueError(f"TrainConfig.record_train_acc must be True or False; got {self.record_train_acc!r}.")


@dataclass(frozen=True)
class Engine:
    """How the training step runs. Only ``amp`` changes what is computed; the other options change only speed.

    Attributes:
        fused: use ``FusedMLPStep`` (no autograd graph) where the model allows it; ``False`` always uses
            ``AutogradStep``. Both give bitwise the same parameters on the CPU.
        cuda_graphs: on CUDA, capture one training step as a CUDA graph and replay it for every batch.
            Ignored on other devices.
        amp: autocast the forward pass to bfloat16 (``torch.autocast``); BatchNorm and the loss stay in float32.
            Runs ``AutogradStep``. Off by default: results then differ slightly from float32 runs.
    """

    fused: bool = True
    cuda_graphs: bool = True
    amp: bool = False

    def __post_init__(self):
        for name in ("fused", "cuda_graphs", "amp"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"Engine.{name} must be True or False; got {value!r}.")


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training loss over its mini-batches, accuracies in percent, wall-clock seconds.
    ``train_acc`` is ``None`` unless ``TrainConfig.record_train_acc`` was on."""

    epoch: int
    loss: float
    train_acc: float | None
    val_acc: float
    seconds: float


@dataclass
class History:
    """What happened in one training run.

    ``threads`` is the number of CPU threads a run on the CPU computed with (``None`` on a GPU): the CPU's
    kernels split their sums by thread, so the same seed gives slightly different bits with 1 and 2 threads.
    """

    dataset: str
    device: str
    epochs: list[EpochStats] = field(default_factory=list)
    test_acc: float | None = None
    threads: int | None = None

    def column(self, name: str) -> list[float]:
        """One metric over the epochs, e.g. ``history.column("val_acc")``."""
        return [getattr(e, name) for e in self.epochs]

    @property
    def final(self) -> EpochStats:
        return self.epochs[-1]

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)

    def table(self) -> str:
        """The per-epoch table, as the command line prints it."""
        lines = [f"{'epoch':>5}  {'loss':>8}  {'train %':>8}  {'val %':>8}  {'seconds':>8}"]
        for e in self.epochs:
            train_acc = "-" if e.train_acc is None else f"{e.train_acc:.2f}"
            lines.append(f"{e.epoch:>5}  {e.loss:>8.4f}  {train_acc:>8}  {e.val_acc:>8.2f}  {e.seconds:>8.2f}")
        if self.test_acc is not None:
            lines.append(f"test accuracy: {self.test_acc:.2f} %  ({self.dataset}, {self.device}, {self.seconds:.1f} s)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(d["dataset"], d["device"], [EpochStats(**e) for e in d["epochs"]], d["test_acc"], d.get("threads"))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (it must be available), else CUDA, then Apple's MPS, then the CPU."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but this machine has no usable CUDA GPU; use 'cpu'.")
        if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was asked for, but MPS is not available here; use 'cpu'.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def seed_everything(seed: int) -> None:
    """Seed PyTorch's generators (CPU and every GPU). The same seed gives identical runs on the CPU."""
    torch.manual_seed(seed)


# --- data on the device ------------------------------------------------------------------------------------------


def to_device(data: Dataset, device: torch.device) -> Dataset:
    """``data`` on ``device``. Copies to a GPU go through pinned memory and do not block the host."""
    if device.type != "cuda":
        return data.to(device)

    def move(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    splits = [Split(move(s.images), move(s.labels)) for s in (data.train, data.val, data.test)]
    return Dataset(data.name, *splits)


def epoch_order(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One epoch's random order of ``n`` examples, drawn on the CPU from ``generator`` and sent to ``device``.

    The same order ``bnlab.data.BatchLoader`` draws: batch ``i`` is ``order[i * batch_size : (i + 1) * batch_size]``.
    """
    order = torch.randperm(n, generator=generator)
    if device.type == "cuda":
        return order.pin_memory().to(device, non_blocking=True)
    return order.to(device)


# --- evaluation --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def count_correct(model: nn.Module, split: Split, *, batch_size: int = 1_000) -> torch.Tensor:
    """How many examples of ``split`` ``model`` classifies correctly in eval mode, as a tensor on the split's
    device (reading it is the caller's one synchronisation). Batches are contiguous slices: nothing is copied.
    The model's previous mode is restored."""
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=split.images.device)
    for start in range(0, len(split), batch_size):
        end = start + batch_size
        correct += (model(split.images[start:end]).argmax(dim=1) == split.labels[start:end]).sum()
    model.train(was_training)
    return correct


def accuracy(model: nn.Module, split: Split, *, batch_size: int = 1_000) -> float:
    """Accuracy in percent of ``model`` on ``split``, in eval mode. The model's previous mode is restored."""
    return 100.0 * count_correct(model, split, batch_size=batch_size).item() / len(split)


# --- one training step -------------------------------------------------------------------------------------------


class AutogradStep:
    """One SGD step the standard way: forward, ``F.cross_entropy``, ``backward()``, ``optimizer.step()``.

    Works for any model. With ``amp`` the forward pass runs under ``torch.autocast`` in bfloat16.
    """

    def __init__(self, model: nn.Module, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, amp: bool = False):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.amp = amp

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Train on one batch; return its loss (a detached 0-d tensor on the device)."""
        device_type = xb.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            loss = F.cross_entropy(self.model(xb), yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


FUSED_LAYERS = (nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Identity)


def fused_unsupported_reason(model: nn.Module) -> str | None:
    """Why ``FusedMLPStep`` cannot train ``model`` (``None`` if it can).

    It can when ``model`` is an ``nn.Sequential`` of ``Flatten(1, -1)`` first, then ``Linear``, ``BatchNorm1d``,
    ``ReLU``, ``Dropout`` and ``Identity`` layers (exactly these classes), in float32, with every parameter
    trainable, and no hook or replaced ``forward`` anywhere (their behaviour could not be reproduced).
    """
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not an nn.Sequential"
    layers = list(model)
    if not layers or type(layers[0]) is not nn.Flatten or (layers[0].start_dim, layers[0].end_dim) != (1, -1):
        return "the first layer is not nn.Flatten()"
    for i, layer in enumerate(layers):
        if type(layer) not in FUSED_LAYERS or (i > 0 and type(layer) is nn.Flatten):
            return f"layer {i} ({type(layer).__name__}) is not one of Linear, BatchNorm1d, ReLU, Dropout, Identity"
        if "forward" in layer.__dict__:
            return f"layer {i} ({type(layer).__name__}) has a replaced forward"
        if layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks or layer._backward_pre_hooks:
            return f"layer {i} ({type(layer).__name__}) has a hook"
        if type(layer) is nn.Dropout and layer.p >= 1:
            return f"layer {i} is a Dropout with p={layer.p}"
    if model._forward_hooks or model._forward_pre_hooks or model._backward_hooks or model._backward_pre_hooks:
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


def _faster(first, second, *, repeats: int = 5) -> bool:
    """Whether calling ``first`` takes at most 95 % of the time ``second`` takes (best of ``repeats`` each)."""

    def best_seconds(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    return best_seconds(first) <= 0.95 * best_seconds(second)


def _exact_and_faster(candidate, plain) -> bool:
    """Whether ``candidate()`` returns bitwise what ``plain()`` returns (a tensor or a tuple of tensors) and is
    faster (``_faster``)."""
    ours, theirs = candidate(), plain()
    if isinstance(ours, torch.Tensor):
        ours, theirs = (ours,), (theirs,)
    if not all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)):
        return False
    return _faster(candidate, plain)


@functools.lru_cache(maxsize=None)
def swapped_product_wins(rows: int, n_in: int, n_out: int, threads: int) -> bool:
    """Whether the CPU should compute a bias-free Linear layer's ``x @ W.t()`` (``x`` of ``rows x n_in``, ``W`` of
    ``n_out x n_in``) as ``(W @ x.t()).t()``: only if the BLAS gives bitwise the same product that way round, and
    it is faster. Decided once per shape and thread count, on random data (the BLAS picks its kernels by shape).

    MKL runs the lecture's 784 -> 75 layer about 15 % faster swapped, with the same bits, for batches of 16 or
    more; for most other shapes the plain order is as fast or faster, and for the smallest it rounds differently.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(rows, n_in, generator=generator)
    w = torch.randn(n_out, n_in, generator=generator)

    def plain():
        return torch.mm(x, w.t())

    def swapped():
        return torch.mm(w, x.t()).t().contiguous()

    return _exact_and_faster(swapped, plain)


def cross_entropy_by_rows(z: torch.Tensor, y: torch.Tensor, one: torch.Tensor):
    """``F.cross_entropy(z, y)`` and its gradient ``dL/dz``, by the kernels autograd runs: ``log_softmax`` along
    each row of the ``rows x classes`` logits, ``nll_loss``, and their backward (``one``: the loss's gradient, 1)."""
    log_p = torch._log_softmax(z, 1, False)
    loss, total_weight = aten.nll_loss_forward(log_p, y, None, NLL_MEAN, IGNORE_INDEX)
    g = aten.nll_loss_backward(one, log_p, y, None, NLL_MEAN, IGNORE_INDEX, total_weight)
    return loss, aten._log_softmax_backward_data(g, log_p, 1, z.dtype)


def cross_entropy_by_columns(z: torch.Tensor, y: torch.Tensor, one: torch.Tensor):
    """``cross_entropy_by_rows`` with the log-softmax and its backward run down the columns of ``z^T``
    (``classes x rows``): ATen then vectorises over the batch instead of over 10 classes."""
    log_p = torch._log_softmax(z.t().contiguous(), 0, False)  # classes x rows
    loss, total_weight = aten.nll_loss_forward(log_p.t(), y, None, NLL_MEAN, IGNORE_INDEX)
    g = aten.nll_loss_backward(one, log_p.t(), y, None, NLL_MEAN, IGNORE_INDEX, total_weight)  # rows x classes
    return loss, aten._log_softmax_backward_data(g.t().contiguous(), log_p, 0, z.dtype).t().contiguous()


@functools.lru_cache(maxsize=None)
def by_columns_wins(rows: int, classes: int, threads: int) -> bool:
    """Whether the CPU should compute the loss with ``cross_entropy_by_columns``: only if it gives bitwise the
    loss and gradient ``cross_entropy_by_rows`` gives, and is faster. Decided once per shape and thread count, on
    random logits.

    With AVX-512, batches that are a multiple of 16 give the same bits (a shorter tail is computed with scalar
    ``exp``, which rounds differently), and for the lecture's batch of 256 the loss takes about a third less time.
    """
    generator = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(rows, classes, generator=generator)
    y = torch.randint(0, classes, (rows,), generator=generator)
    one = torch.ones(())
    return _exact_and_faster(lambda: cross_entropy_by_columns(z, y, one), lambda: cross_entropy_by_rows(z, y, one))


class _FusedLinear:
    """``nn.Linear``: ``y = x W^T (+ b)``; backward ``dW = g^T x``, ``db = sum_rows(g)``, ``dx = g W``."""

    def __init__(self, m: nn.Linear, slot: int, input_grad: bool):
        self.weight, self.bias, self.slot, self.input_grad = m.weight, m.bias, slot, input_grad
        self.n_in, self.n_out = m.in_features, m.out_features

    def forward(self, x: torch.Tensor):
        if self.bias is not None:
            return torch.addmm(self.bias, x, self.weight.t()), x
        if x.device.type == "cpu" and swapped_product_wins(x.shape[0], self.n_in, self.n_out, torch.get_num_threads()):
            return torch.mm(self.weight, x.t()).t().contiguous(), x  # the copy gives the next layer rows again
        return torch.mm(x, self.weight.t()), x

    def backward(self, g: torch.Tensor, x: torch.Tensor, grads: list):
        grads[self.slot] = torch.mm(g.t(), x)
        if self.bias is not None:
            grads[self.slot + 1] = g.sum(0)
        return torch.mm(g, self.weight) if self.input_grad else None


class _FusedBatchNorm:
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

    def backward(self, g: torch.Tensor, ctx: tuple, grads: list):
        x, running_mean, running_var, mean, invstd, batch_stats = ctx
        gx, gw, gb = aten.native_batch_norm_backward(
            g, x, self.weight, running_mean, running_var, mean, invstd, batch_stats, self.m.eps, self.mask
        )
        if self.weight is not None:
            grads[self.slot], grads[self.slot + 1] = gw, gb
        return gx


class _FusedReLU:
    """``nn.ReLU``: ``y = max(x, 0)``; backward ``dx = g * (y > 0)``."""

    def forward(self, x: torch.Tensor):
        y = torch.relu(x)
        return y, y

    def backward(self, g: torch.Tensor, y: torch.Tensor, grads: list):
        return aten.threshold_backward(g, y, 0)


class _FusedDropout:
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


class _FusedFlatten:
    """``nn.Flatten()``, the first layer: its input is the data, which needs no gradient."""

    def forward(self, x: torch.Tensor):
        return x.flatten(1), None


class FusedMLPStep:
    """One SGD step for an MLP, without autograd: the same kernels autograd runs, called directly.

    Per layer (``x`` the layer's input, ``g`` the gradient flowing back into its output)::

        Linear      y = x @ W^T (+ b)            dW = g^T @ x    db = sum_rows(g)    dx = g @ W
        BatchNorm1d y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta   (ATen's native_batch_norm{,_backward})
        ReLU        y = max(x, 0)                dx = g * (y > 0)
        Dropout     y = x * m / (1 - p)          dx = g * m / (1 - p)     (m ~ Bernoulli(1 - p))
        loss        L = mean_i -log softmax(z_i)[y_i]                     (ATen's log_softmax and nll_loss)

    then ``param -= lr * grad`` for every parameter, as ``torch.optim.SGD`` does. Each layer follows its own
    ``training`` flag (a BatchNorm layer frozen in eval mode normalises with its running statistics), and
    BatchNorm updates its running statistics and ``num_batches_tracked`` exactly as ``nn.BatchNorm1d`` does.
    The backward pass stops at the first layer with parameters: nothing before it needs a gradient. Each layer
    kind is a small class with ``forward(x) -> (y, saved)`` and ``backward(g, saved, grads) -> dx``, built once, so
    a step runs little Python besides the kernels.
    Build it with ``FusedMLPStep.for_model`` (``None`` when the model is not supported).
    """

    def __init__(self, model: nn.Sequential, *, lr: float):
        reason = fused_unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"FusedMLPStep cannot train this model: {reason}.")
        self.lr = lr
        self.params = list(model.parameters())
        self.layers = []
        self.first_trained = None  # the index of the first layer with parameters: backward stops there
        slot = 0
        for m in model:
            kind = type(m)
            if kind is nn.Linear or kind is nn.BatchNorm1d:
                layer = (_FusedLinear if kind is nn.Linear else _FusedBatchNorm)(m, slot, input_grad=slot > 0)
                n_params = len(list(m.parameters()))
                if n_params and self.first_trained is None:
                    self.first_trained = len(self.layers)
                slot += n_params
            elif kind is nn.ReLU:
                layer = _FusedReLU()
            elif kind is nn.Dropout:
                layer = _FusedDropout(m)
            elif kind is nn.Flatten:
                layer = _FusedFlatten()
            else:  # nn.Identity
                continue
            self.layers.append(layer)
        if self.first_trained is None:
            self.first_trained = len(self.layers)
        self.last_grads: list[torch.Tensor] | None = None
        self._one = None

    @classmethod
    def for_model(cls, model: nn.Module, *, lr: float) -> "FusedMLPStep | None":
        return cls(model, lr=lr) if fused_unsupported_reason(model) is None else None

    @property
    def graph_safe(self) -> bool:
        """Whether the step may be captured as a CUDA graph: not with BatchNorm(momentum=None), whose averaging
        factor changes every step."""
        return not any(isinstance(layer, _FusedBatchNorm) and layer.count is not None for layer in self.layers)

    @torch.no_grad()
    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Train on one batch; return its loss (a 0-d tensor on the device)."""
        saved = []
        h = xb
        for layer in self.layers:
            h, ctx = layer.forward(h)
            saved.append(ctx)

        if self._one is None or self._one.device != h.device:
            self._one = torch.ones((), dtype=h.dtype, device=h.device)
        if h.device.type == "cpu" and by_columns_wins(h.shape[0], h.shape[1], torch.get_num_threads()):
            loss, g = cross_entropy_by_columns(h, yb, self._one)
        else:
            loss, g = cross_entropy_by_rows(h, yb, self._one)

        grads = [None] * len(self.params)
        for i in range(len(self.layers) - 1, self.first_trained - 1, -1):
            g = self.layers[i].backward(g, saved[i], grads)
        if self.params:
            torch._foreach_add_(self.params, grads, alpha=-self.lr)
        self.last_grads = grads
        return loss

    def write_grads(self) -> None:
        """Store the last step's gradients in ``param.grad``, where the plain loop leaves them."""
        if self.last_grads is not None:
            for p, grad in zip(self.params, self.last_grads):
                p.grad = grad.clone()


def make_step(model: nn.Module, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, engine: Engine = Engine()):
    """The fastest step that trains ``model`` exactly: ``FusedMLPStep`` where possible (plain SGD), else
    ``AutogradStep``."""
    if engine.fused and not engine.amp and momentum == 0 and weight_decay == 0:
        step = FusedMLPStep.for_model(model, lr=lr)
        if step is not None:
            return step
    return AutogradStep(model, lr=lr, momentum=momentum, weight_decay=weight_decay, amp=engine.amp)


def _mode_flags(model: nn.Module) -> tuple[bool, ...]:
    return tuple(m.training for m in model.modules())


class StepLoop:
    """Runs one training step per mini-batch of a split that lives on the device.

    ``body`` gathers a batch's images and labels by their row indices and runs the step. On CUDA (when ``graphs``
    is true) it is captured once as a CUDA graph reading one static index tensor, and every batch copies its
    indices there and replays the graph; elsewhere ``body`` runs eagerly on each batch's slice of the epoch's
    order. Losses are summed on the device.
    """

    def __init__(self, model: nn.Module, step, split: Split, batch_size: int, *, graphs: bool = False):
        if not (isinstance(batch_size, int) and 0 < batch_size <= len(split)):
            raise ValueError(f"batch_size must be a positive integer at most the split size {len(split)}; got {batch_size!r}.")
        self.model = model
        self.step = step
        self.split = split
        self.batch_size = batch_size
        self.device = split.images.device
        self.index = torch.arange(batch_size, device=self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.graphs = graphs and self.device.type == "cuda" and getattr(step, "graph_safe", True) and not _has_cumulative_batchnorm(model)
        self.graph = None
        self.graph_modes: tuple[bool, ...] | None = None

    def __len__(self) -> int:
        return len(self.split) // self.batch_size

    def body(self, index: torch.Tensor) -> None:
        """One step on the batch whose rows ``index`` holds."""
        xb = self.split.images.index_select(0, index)
        yb = self.split.labels.index_select(0, index)
        self.loss_sum += self.step(xb, yb)

    def epoch(self, order: torch.Tensor) -> torch.Tensor:
        """One pass over the batches ``order`` defines (``drop_last``); returns the sum of the batch losses, as a
        device tensor (divide by ``len(loop)`` for the mean)."""
        if self.graphs and self.graph_modes != _mode_flags(self.model):
            self.capture()
        self.loss_sum.zero_()
        b = self.batch_size
        for i in range(len(self)):
            batch = order[i * b : (i + 1) * b]
            if self.graph is not None:
                self.index.copy_(batch, non_blocking=True)
                self.graph.replay()
            else:
                self.body(batch)
        if isinstance(self.step, FusedMLPStep):
            self.step.write_grads()
        return self.loss_sum.clone()

    def capture(self) -> None:
        """Capture ``body`` as a CUDA graph. The warm-up steps it needs are undone: parameters and buffers are
        restored afterwards. If capture fails, the loop warns and runs eagerly."""
        snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.graph = None
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.body(self.index)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.body(self.index)
            self.graph = graph
        except RuntimeError as err:  # pragma: no cover - depends on the GPU and driver
            warnings.warn(f"CUDA graph capture failed ({str(err).splitlines()[0]}); training without graphs.")
            self.graphs = False
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(snapshot[k])
        self.loss_sum.zero_()
        self.graph_modes = _mode_flags(self.model)


def _has_cumulative_batchnorm(model: nn.Module) -> bool:
    """BatchNorm with ``momentum=None`` reads its step count on the host every step: it cannot be graph-captured."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None for m in model.modules())


# --- a whole run ------------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    engine: Engine | None = None,
) -> History:
    """Train ``model`` on ``data.train`` with SGD; evaluate on validation (and, with ``config.record_train_acc``,
    on train) after every epoch, on test at the end. Batch order and dropout are seeded from ``config.seed``.
    The model is left in train mode. A run whose loss becomes inf or nan is recorded as it is, not stopped.
    ``engine`` says how the step runs (see ``Engine``)."""
    engine = Engine() if engine is None else engine
    if not isinstance(engine, Engine):
        raise ValueError(f"engine must be a bnlab.training.Engine or None; got {type(engine).__name__}.")
    device = pick_device(device)
    model.to(device)
    data = to_device(data, device)
    if config.batch_size > len(data.train):
        raise ValueError(f"batch_size {config.batch_size} is larger than the training split ({len(data.train)} examples).")
    model.train()
    step = make_step(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, engine=engine)
    loop = StepLoop(model, step, data.train, config.batch_size, graphs=engine.cuda_graphs)
    torch.manual_seed(config.seed)  # dropout masks
    order_generator = torch.Generator().manual_seed(config.seed)  # batch order, as BatchLoader(seed=config.seed)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    history = History(dataset=data.name, device=describe_device(device), threads=threads)

    bar = tqdm(range(1, config.epochs + 1), desc=f"training on {history.device}", disable=not progress, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        loss_sum = loop.epoch(epoch_order(len(data.train), order_generator, device))
        counts = [loss_sum.double(), count_correct(model, data.val, batch_size=config.eval_batch_size).double()]
        if config.record_train_acc:
            counts.append(count_correct(model, data.train, batch_size=config.eval_batch_size).double())
        # One host synchronisation per epoch. float32 -> float64 is exact, so these equal .item() calls.
        loss_sum, correct_val, *correct_train = torch.stack(counts).tolist()
        stats = EpochStats(
            epoch=epoch,
            loss=loss_sum / len(loop),
            train_acc=100.0 * correct_train[0] / len(data.train) if correct_train else None,
            val_acc=100.0 * correct_val / len(data.val),
            seconds=time.perf_counter() - start,
        )
        history.epochs.append(stats)
        bar.set_postfix(loss=f"{stats.loss:.3f}", val=f"{stats.val_acc:.1f}%")
    history.test_acc = accuracy(model, data.test, batch_size=config.eval_batch_size)
    return history


def train_model(
    model_config,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    engine: Engine | None = None,
) -> tuple[nn.Module, History]:
    """Seed, build the model that ``model_config`` describes (``bnlab.models.build_model``), train it; return the
    model and its history."""
    seed_everything(config.seed)
    model = build_model(model_config)
    history = train(model, data, config, device=device, progress=progress, engine=engine)
    return model, history


train_mlp = train_model  # the name the chapters first used

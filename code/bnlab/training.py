"""Training: the plain PyTorch loop of the lecture, with the data on the device.

``train`` runs, for every epoch::

    model.train()
    order = torch.randperm(n, generator=generator)        # one permutation per epoch, seeded by config.seed
    for i in range(n // batch_size):                       # drop_last
        index = order[i * batch_size : (i + 1) * batch_size]
        xb, yb = images[index], labels[index]              # a mini-batch by index, already on the device
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()                                   # torch.optim.SGD(lr, momentum, weight_decay)
    # then accuracy on the validation split (and, if asked for, the training split) in eval mode

and finally the test accuracy. Two things keep it fast without making it less plain:

* **Data on the device.** Each split is one tensor on the training device. The batch order comes from a CPU
  generator seeded with ``TrainConfig.seed``, so the batches are the same on every device, and each mini-batch is
  one indexing operation: no ``DataLoader``, no worker processes, no per-image Python. (``python -m bnlab.bench``
  measures this against the standard ``DataLoader`` + ``ToTensor()`` pipeline.)
* **One host synchronisation per epoch.** Losses are summed and correct predictions counted on the device and
  read back once per epoch.

The step itself is ``PlainStep``. ``bnlab.fast`` has engines that run the same step faster (a fused step that
gives bitwise the same parameters, CUDA graphs); pass one as ``train(..., engine=...)``. On the CPU the same seed
gives the same bits, whichever engine runs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset, Split
from .layers import preserved_modes
from .models import build_model, is_finite_number, is_integer


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
        return t.pin_memory().to(device, non_blocking=True) if t.device.type == "cpu" else t.to(device)

    return Dataset(data.name, *(Split(move(s.images), move(s.labels)) for s in (data.train, data.val, data.test)))


def epoch_order(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One epoch's random order of ``n`` examples, drawn on the CPU from ``generator`` and sent to ``device``.

    The same order ``bnlab.data.BatchLoader`` draws: batch ``i`` is ``order[i * batch_size : (i + 1) * batch_size]``.
    """
    return torch.randperm(n, generator=generator).to(device)


# --- evaluation --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def count_correct(model: nn.Module, split: Split, *, batch_size: int = 1_000) -> torch.Tensor:
    """How many examples of ``split`` ``model`` classifies correctly in eval mode, as a tensor on the split's
    device (reading it is the caller's one synchronisation). Batches are contiguous slices: nothing is copied.
    Every module's mode flag is restored afterwards."""
    if not (is_integer(batch_size) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    correct = torch.zeros((), dtype=torch.long, device=split.images.device)
    with preserved_modes(model):
        model.eval()
        for start in range(0, len(split), batch_size):
            end = start + batch_size
            correct += (model(split.images[start:end]).argmax(dim=1) == split.labels[start:end]).sum()
    return correct


def accuracy(model: nn.Module, split: Split, *, batch_size: int = 1_000) -> float:
    """Accuracy in percent of ``model`` on ``split``, in eval mode. Every module's mode flag is restored."""
    return 100.0 * count_correct(model, split, batch_size=batch_size).item() / len(split)


# --- one training step -------------------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """``torch.optim.SGD`` over the model's parameters with the config's ``lr``, ``momentum`` and ``weight_decay``."""
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


class PlainStep:
    """One training step, as every PyTorch tutorial writes it: forward, ``F.cross_entropy``, ``backward()``,
    ``optimizer.step()``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model = model
        self.optimizer = optimizer

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Train on one batch; return its loss (a detached 0-d tensor on the device)."""
        loss = F.cross_entropy(self.model(xb), yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class Engine:
    """How ``train`` runs its training steps: ``make_step(model, optimizer)`` returns the function that trains on
    one batch, ``step(xb, yb) -> loss``. This engine's is ``PlainStep``; the engines in ``bnlab.fast`` subclass it."""

    def make_step(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        return PlainStep(model, optimizer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def train_epoch(step, split: Split, order: torch.Tensor, batch_size: int) -> torch.Tensor:
    """One pass of ``step`` over the mini-batches of ``split`` that ``order`` defines (``drop_last``); returns the
    sum of the batch losses as a 0-d device tensor (divide by ``len(order) // batch_size`` for the mean)."""
    loss_sum = torch.zeros((), device=split.images.device)
    for i in range(len(order) // batch_size):
        index = order[i * batch_size : (i + 1) * batch_size]
        loss_sum += step(*split.batch(index))
    return loss_sum


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
    The model is left in train mode. A run whose loss becomes inf or nan is recorded as it is, not stopped: its
    accuracies are what the model then scores. ``engine`` (default: ``Engine()``, the plain step) says how the
    steps run; see ``bnlab.fast`` for faster ones."""
    engine = Engine() if engine is None else engine
    if not isinstance(engine, Engine):
        raise ValueError(f"engine must be a bnlab.training.Engine (or None for the plain loop); got {engine!r}.")
    device = pick_device(device)
    model.to(device)
    data = to_device(data, device)
    if config.batch_size > len(data.train):
        raise ValueError(f"batch_size {config.batch_size} is larger than the training split ({len(data.train)} examples).")
    step = engine.make_step(model, make_optimizer(model, config))
    torch.manual_seed(config.seed)  # dropout masks
    order_generator = torch.Generator().manual_seed(config.seed)  # batch order, as BatchLoader(seed=config.seed)
    steps_per_epoch = len(data.train) // config.batch_size
    threads = torch.get_num_threads() if device.type == "cpu" else None
    history = History(dataset=data.name, device=describe_device(device), threads=threads)

    bar = tqdm(range(1, config.epochs + 1), desc=f"training on {history.device}", disable=not progress, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        order = epoch_order(len(data.train), order_generator, device)
        loss_sum = train_epoch(step, data.train, order, config.batch_size)
        sums = [loss_sum, count_correct(model, data.val, batch_size=config.eval_batch_size)]
        if config.record_train_acc:
            sums.append(count_correct(model, data.train, batch_size=config.eval_batch_size))
        # One host synchronisation per epoch. float32 -> float64 is exact, so these equal .item() calls.
        loss_sum, correct_val, *correct_train = torch.stack([s.double() for s in sums]).tolist()
        stats = EpochStats(
            epoch=epoch,
            loss=loss_sum / steps_per_epoch,
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


train_mlp = train_model  # the name the first chapters use

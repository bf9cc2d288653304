"""Training and evaluation, on the GPU when there is one.

``train`` puts the model in ``train()`` mode for every epoch and evaluates it in ``eval()`` mode under
``torch.inference_mode()``. Metrics are accumulated on the device and read back once per epoch, so the loop does
not wait for the device after every batch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import BatchLoader, Dataset, Split
from .models import MLPConfig, build_mlp


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults are the lecture's: plain SGD, lr 0.1, batch 256, 50 epochs, seed 123."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 0.1
    seed: int = 123
    eval_batch_size: int = 1_000

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"TrainConfig.{name} must be a positive integer; got {value!r}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number; got {self.lr!r}.")


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training loss over its mini-batches, accuracies in percent, wall-clock seconds."""

    epoch: int
    loss: float
    train_acc: float
    val_acc: float
    seconds: float


@dataclass
class History:
    """What happened in one training run."""

    dataset: str
    device: str
    epochs: list[EpochStats] = field(default_factory=list)
    test_acc: float | None = None

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
        lines += [
            f"{e.epoch:>5}  {e.loss:>8.4f}  {e.train_acc:>8.2f}  {e.val_acc:>8.2f}  {e.seconds:>8.2f}" for e in self.epochs
        ]
        if self.test_acc is not None:
            lines.append(f"test accuracy: {self.test_acc:.2f} %  ({self.dataset}, {self.device}, {self.seconds:.1f} s)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(d["dataset"], d["device"], [EpochStats(**e) for e in d["epochs"]], d["test_acc"])


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


@torch.inference_mode()
def accuracy(model: nn.Module, split: Split, *, batch_size: int = 1_000) -> float:
    """Accuracy in percent of ``model`` on ``split``, in eval mode. The model's previous mode is restored."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=split.images.device)
    for xb, yb in BatchLoader(split, batch_size, shuffle=False, drop_last=False):
        correct += (model(xb).argmax(dim=1) == yb).sum()
    model.train(was_training)
    return 100.0 * correct.item() / len(split)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` on ``data.train`` with SGD; evaluate on train and validation after every epoch, on test
    at the end. Batch order and dropout are seeded from ``config.seed``. The model is left in train mode."""
    device = pick_device(device)
    model.to(device)
    data = data.to(device)
    torch.manual_seed(config.seed)  # dropout masks
    batches = BatchLoader(data.train, config.batch_size, shuffle=True, drop_last=True, seed=config.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    history = History(dataset=data.name, device=describe_device(device))

    bar = tqdm(range(1, config.epochs + 1), desc=f"training on {history.device}", disable=not progress, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        stats = EpochStats(
            epoch=epoch,
            loss=loss_sum.item() / len(batches),
            train_acc=accuracy(model, data.train, batch_size=config.eval_batch_size),
            val_acc=accuracy(model, data.val, batch_size=config.eval_batch_size),
            seconds=time.perf_counter() - start,
        )
        history.epochs.append(stats)
        bar.set_postfix(loss=f"{stats.loss:.3f}", val=f"{stats.val_acc:.1f}%")
    history.test_acc = accuracy(model, data.test, batch_size=config.eval_batch_size)
    return history


def train_mlp(
    model_config: MLPConfig,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[nn.Module, History]:
    """Seed, build the MLP that ``model_config`` describes, train it; return the model and its history."""
    seed_everything(config.seed)
    model = build_mlp(model_config)
    history = train(model, data, config, device=device, progress=progress)
    return model, history

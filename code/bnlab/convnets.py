"""BatchNorm in a CNN: per-channel statistics, small batches and other normalisers, fine-tuning, fusing.

Topic code for the chapter *BatchNorm in a CNN*: every function computes and returns data; the chapter draws it.

* ``statistic_groups``, ``channel_statistics`` and ``batch_mean_noise``: which values of an ``(N, C, H, W)``
  activation share one mean and variance under BatchNorm, LayerNorm-style, GroupNorm and InstanceNorm; BatchNorm2d's
  per-channel statistics on a model's real activations, and how noisy they are at each batch size.
* ``scaled_lr`` and ``batch_size_sweep``: train with batch sizes from 2 to 256 per normaliser, the learning rate
  scaled linearly with the batch size; test accuracy in eval mode and the gap to train mode, per seed.
* ``digit_tasks`` and ``finetune_comparison``: train on some digits, fine-tune on the others with small batches,
  BatchNorm in train mode or frozen.
* ``inference_times``: how long a forward pass takes, for models such as the unfused and the fused CNN.

Training runs go through ``bnlab.experiments`` (cached, seeds in parallel worker processes on the CPU); what is
measured on a trained model, and fine-tuning, is cached beside them (``cached``), keyed on the weights, the
settings, the data's fingerprint, the torch version and the CPU thread count, so that running a chapter again
trains nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path

import torch
from torch import nn

from . import _workers
from ._workers import using_threads
from .data import Dataset, Split
from .experiments import cache_dir, run_many, seed_threads, seed_workers, write_json_atomic
from .layers import batchnorm_layers, model_device
from .models import NORMS, CNNConfig, build_model
from .modes import accuracy_in_mode, freeze_batchnorm, preserved_state
from .training import TrainConfig, pick_device, train

CACHE_FORMAT = 1  # bump when the meaning of a cached result changes


@dataclass(frozen=True)
class Sizes:
    """How big the chapter's experiments are. Every run trains with SGD, momentum 0.9, at ``scaled_lr``.

    Attributes:
        train_samples: training images for the placement runs and the pretraining (``None``: the whole split).
        epochs, batch_size: of the placement runs and the pretraining.
        sweep_samples, sweep_epochs, sweep_batch_sizes: the batch-size sweep's training images, epochs, sizes.
        reference_batch_size: the sweep's batch size that small batches are compared with.
        probe_images: test images on which the sweep compares train mode with eval mode.
        finetune_samples, finetune_epochs, finetune_batch_size: fine-tuning on the new digits.
    """

    train_samples: int | None
    epochs: int
    batch_size: int
    sweep_samples: int
    sweep_epochs: int
    sweep_batch_sizes: tuple[int, ...]
    reference_batch_size: int
    probe_images: int
    finetune_samples: int
    finetune_epochs: int
    finetune_batch_size: int


#: by run profile (``bnlab.profiles``): ``full`` for the book, ``ci`` to test the chapter in a minute or two
SIZES = {
    "full": Sizes(None, 1, 64, 3_000, 2, (2, 8, 32, 256), 32, 2_000, 1_000, 2, 2),
    "ci": Sizes(2_000, 1, 64, 256, 1, (2, 16, 128), 16, 500, 100, 1, 2),
}


def sizes_for(profile_name: str) -> Sizes:
    """The chapter's ``Sizes`` in the run profile ``profile_name`` (``"full"`` or ``"ci"``)."""
    if profile_name not in SIZES:
        raise ValueError(f"profile_name must be one of {sorted(SIZES)}; got {profile_name!r}.")
    return SIZES[profile_name]

# --- which values share one mean and variance --------------------------------------------------------------------

#: how the chapter names each ``CNNConfig.norm``
NORM_NAMES = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm-style", "none": "none"}

#: the normalisers compared in the chapter, and the dimensions of an (N, C, H, W) input each averages over
AXES = {
    "BatchNorm": "N, H, W (per channel)",
    "LayerNorm-style": "C, H, W (per example)",
    "GroupNorm": "C/G, H, W (per example and group of channels)",
    "InstanceNorm": "H, W (per example and channel)",
}


def statistic_groups(kind: str, n: int, c: int, *, groups: int = 2) -> torch.Tensor:
    """An ``(n, c)`` integer tensor: entry ``[i, j]`` is the id of the statistics (mean and variance) that slice
    ``x[i, j, :, :]`` of an ``(n, c, H, W)`` input is normalised with; equal ids share them.

    ``kind`` is one of ``AXES``: BatchNorm shares per channel across the batch, LayerNorm-style per example across
    all channels, GroupNorm per example across each of ``groups`` equal groups of channels, InstanceNorm per example
    and channel. Every kind averages over all ``H x W`` positions of the slices it joins.
    """
    if kind not in AXES:
        raise ValueError(f"kind must be one of {tuple(AXES)}; got {kind!r}.")
    if not (isinstance(n, int) and n > 0 and isinstance(c, int) and c > 0):
        raise ValueError(f"n and c must be positive integers; got n={n!r}, c={c!r}.")
    if kind == "GroupNorm" and not (isinstance(groups, int) and groups > 0 and c % groups == 0):
        raise ValueError(f"groups must be a positive divisor of c={c}; got {groups!r}.")
    example = torch.arange(n).view(n, 1).expand(n, c)
    channel = torch.arange(c).view(1, c).expand(n, c)
    if kind == "BatchNorm":
        return channel.clone()
    if kind == "LayerNorm-style":
        return example.clone()
    if kind == "GroupNorm":
        return example * groups + channel // (c // groups)
    return example * c + channel


@dataclass(frozen=True)
class ChannelStatistics:
    """What one ``BatchNorm2d`` layer sees: the shape of its input, and per channel the mean and (biased) variance
    over the batch and every position, with the layer's running estimates of the same."""

    layer: str
    input_shape: tuple[int, ...]
    mean: torch.Tensor
    var: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    @property
    def values_per_channel(self) -> int:
        """``N * H * W``: how many numbers each channel's mean and variance are taken over."""
        n, _, *spatial = self.input_shape
        return n * math.prod(spatial)


def batchnorm_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: input}`` for every ``BatchNorm2d`` of ``model``: what it receives when ``images`` run through the
    model in eval mode. Nothing in the model changes."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if not layers:
        raise ValueError("model has no BatchNorm2d layer: build it with CNNConfig(norm='batch').")
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0])) for name, m in layers
    ]
    try:
        with preserved_state(model), torch.no_grad():  # not inference_mode: the inputs may go through autograd later
            model.eval()
            model(images.to(model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: inputs[name].cpu() for name, _ in layers}


def channel_statistics(model: nn.Module, images: torch.Tensor) -> list[ChannelStatistics]:
    """For every ``BatchNorm2d`` in ``model``, the statistics of its real input when ``images`` are one batch,
    over dimensions (0, 2, 3), as train mode would take them; and the layer's running statistics."""
    modules = dict(model.named_modules())
    return [
        ChannelStatistics(
            name, tuple(x.shape), x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), correction=0),
            modules[name].running_mean.detach().cpu().clone(), modules[name].running_var.detach().cpu().clone(),
        )
        for name, x in batchnorm_inputs(model, images).items()
    ]


def batch_mean_noise(model: nn.Module, images: torch.Tensor, batch_sizes: tuple[int, ...]) -> list[dict]:
    """How far a batch's per-channel mean lies from the mean over all ``images``, at each batch size: for every
    ``BatchNorm2d`` input and batch size ``B``, the images are cut into consecutive batches of ``B``, and the
    standard deviation of the batch means is divided by the channel's standard deviation over all images and
    positions (the median over channels is reported, as ``"noise"``).

    ``"independent"`` is what that ratio would be if the ``B * H * W`` values were independent draws,
    ``1 / sqrt(B * H * W)``: the values of one image are not, which is why a batch's statistics are much noisier
    than the number of values suggests. One row per layer and batch size.
    """
    rows = []
    for name, x in batchnorm_inputs(model, images).items():
        n, c, h, w = x.shape
        population_std = x.std(dim=(0, 2, 3))
        for batch_size in batch_sizes:
            if not (isinstance(batch_size, int) and 1 <= batch_size <= n // 2):
                raise ValueError(
                    f"every batch size must be an integer in 1..{n // 2} (two batches at least); got {batch_size!r}."
                )
            k = n // batch_size
            means = x[: k * batch_size].reshape(k, batch_size, c, h * w).mean(dim=(1, 3))  # (batches, channels)
            ratio = means.std(dim=0) / population_std
            rows.append({
                "layer": name, "batch_size": batch_size, "values_per_channel": batch_size * h * w,
                "noise": ratio.median().item(), "independent": (batch_size * h * w) ** -0.5,
            })
    return rows


# --- cached measurements -----------------------------------------------------------------------------------------


def cache_path(kind: str, cache: str | os.PathLike | None = None, *, threads: int | None = None, **parts) -> Path:
    """Where a result of ``kind`` is cached: a hash of everything that can change it, ``parts`` (dataclasses are
    expanded, with their type), the torch version and the CPU threads it is computed with (default: the current
    count; on the CPU, a different count can change the last bits)."""
    spec = {
        "kind": kind,
        "format": CACHE_FORMAT,
        "torch": torch.__version__.split("+")[0],
        "threads": torch.get_num_threads() if threads is None else threads,
        **{name: {"type": type(v).__name__, **asdict(v)} if is_dataclass(v) else v for name, v in parts.items()},
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir(cache) / f"{kind}-{key}.json"


def read_cached(path: Path) -> dict | None:
    """The result stored at ``path``, or ``None`` if there is none or it is unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def cached(kind: str, compute, cache: str | os.PathLike | None = None, **parts) -> dict:
    """``compute()`` (a JSON-able dict), stored under a key of ``kind`` and ``parts``; from the cache when stored."""
    path = cache_path(kind, cache, **parts)
    stored = read_cached(path)
    if stored is not None:
        return stored
    result = compute()
    write_json_atomic(path, result)
    return result


def weights_digest(model: nn.Module) -> str:
    """A short hash of a model's parameters and buffers: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --- small batches: one run per normaliser, batch size and seed ---------------------------------------------------


def scaled_lr(batch_size: int, *, base_lr: float = 0.1, base_batch: int = 256) -> float:
    """The linear scaling rule (Goyal et al. 2017): ``base_lr * batch_size / base_batch``, capped at ``base_lr``.

    Halving the batch halves the learning rate, which keeps the SGD noise scale ``lr / batch_size`` the same, so
    that every batch size trains for the same epochs about equally far. The defaults are the rule's own, 0.1 at
    batch size 256 (the lecture's rate and batch size too); the cap keeps a batch larger than ``base_batch`` at
    ``base_lr``.
    """
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    return base_lr * min(batch_size, base_batch) / base_batch


def train_mode_gap(model: nn.Module, split: Split, batch_size: int, *, cache: str | os.PathLike | None = None) -> dict:
    """``{"eval_acc", "train_mode_acc"}``: the accuracy on ``split`` in eval mode (running statistics) and in train
    mode in consecutive batches of ``batch_size`` (each batch normalised with its own statistics, as in training).
    The model is left as it was. Cached, keyed on the weights."""

    def compute() -> dict:
        return {
            "eval_acc": accuracy_in_mode(model, split, mode="eval"),
            "train_mode_acc": accuracy_in_mode(model, split, mode="train", batch_size=max(batch_size, 2)),
        }

    return cached("gap", compute, cache, weights=weights_digest(model), batch_size=batch_size, n=len(split),
                  images=Dataset("probe", split, split, split).fingerprint)


@dataclass(frozen=True)
class SweepRun:
    """One training run of the batch-size sweep.

    ``test_acc``: eval-mode accuracy on the whole test split. ``gap``: on the sweep's probe images (the first test
    images), the accuracy in train mode, in batches of the training batch size, minus the accuracy in eval mode;
    ``None`` for a model without BatchNorm, whose two modes compute the same thing.
    """

    norm: str
    batch_size: int
    seed: int
    lr: float
    test_acc: float
    gap: float | None
    loss: float


def batch_size_sweep(
    data: Dataset,
    *,
    norms: tuple[str, ...] = NORMS,
    batch_sizes: tuple[int, ...] = (2, 8, 32, 256),
    seeds: tuple[int, ...] = (1, 2, 3),
    epochs: int = 2,
    base_lr: float = 0.1,
    momentum: float = 0.9,
    model: CNNConfig = CNNConfig(),
    probe_images: int = 2_000,
    val_images: int | None = 1_000,
    cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[SweepRun]:
    """One ``SweepRun`` per normaliser, batch size and seed: ``model`` with each ``norm``, trained for ``epochs``
    with SGD (``momentum``) at ``scaled_lr(batch_size, base_lr=base_lr)``. The runs go through
    ``bnlab.experiments`` (cached, seeds in parallel worker processes on the CPU: ``workers``); the gaps are
    measured here, with as many CPU threads as each worker had. ``val_images``: see ``shorter_validation``."""
    if not (norms and batch_sizes and seeds):
        raise ValueError("norms, batch_sizes and seeds must each hold at least one value.")
    for norm in norms:
        if norm not in NORMS:
            raise ValueError(f"every norm must be one of {NORMS}; got {norm!r}.")
    data = shorter_validation(data, val_images)
    probe = data.test.head(probe_images)
    device = pick_device(device)
    threads = seed_threads(seed_workers(workers, device), device)
    runs = []
    for batch_size in batch_sizes:
        lr = scaled_lr(batch_size, base_lr=base_lr)
        train_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum)
        variants = {f"{norm}, batch {batch_size}": replace(model, norm=norm) for norm in norms}
        trained = run_many(variants, train_config, data, seeds, with_models=True, cache=cache, device=device,
                           workers=workers, progress=progress)
        for (label, config), results in zip(variants.items(), trained.values()):
            for seed, (m, history) in zip(seeds, results):
                gap = None
                if config.norm == "batch":
                    with using_threads(threads):
                        measured = train_mode_gap(m, probe, batch_size, cache=cache)
                    gap = measured["train_mode_acc"] - measured["eval_acc"]
                runs.append(SweepRun(config.norm, batch_size, seed, lr, history.test_acc, gap, history.final.loss))
    return runs


# --- fine-tuning with small batches ---------------------------------------------------------------------------------


def digits(split: Split, keep: tuple[int, ...]) -> Split:
    """The examples of ``split`` whose label is one of ``keep``, in their order."""
    mask = torch.isin(split.labels, torch.tensor(keep, device=split.labels.device))
    return Split(split.images[mask], split.labels[mask])


def digit_tasks(
    data: Dataset,
    *,
    old: tuple[int, ...] = (0, 1, 2, 3, 4),
    new: tuple[int, ...] = (5, 6, 7, 8, 9),
    finetune_samples: int = 1_000,
) -> tuple[Dataset, Dataset]:
    """Two tasks from one data set: the ``old`` digits (every split) and the ``new`` digits (the first
    ``finetune_samples`` new-digit training images, and every new-digit validation and test image). The data sets'
    names say which digits they hold."""
    if set(old) & set(new):
        raise ValueError(f"old and new digits must not overlap; both hold {sorted(set(old) & set(new))}.")
    if not (isinstance(finetune_samples, int) and finetune_samples > 1):
        raise ValueError(f"finetune_samples must be an integer above 1; got {finetune_samples!r}.")

    def named(d: tuple[int, ...]) -> str:
        consecutive = list(d) == list(range(min(d), max(d) + 1))
        return f"{data.name}, digits {min(d)}-{max(d)}" if consecutive else f"{data.name}, digits {d}"

    old_data = Dataset(named(old), *(digits(s, old) for s in (data.train, data.val, data.test)))
    new_train = digits(data.train, new).head(finetune_samples)
    new_data = Dataset(named(new), new_train, digits(data.val, new), digits(data.test, new))
    return old_data, new_data


def shorter_validation(data: Dataset, val_images: int | None) -> Dataset:
    """``data`` with its validation split cut to the first ``val_images`` images (``None``: unchanged). For runs
    that evaluate the validation split every epoch and report none of it: the name stays, as the training and
    test images, which results are reported on, are the same."""
    if val_images is None:
        return data
    if not (isinstance(val_images, int) and not isinstance(val_images, bool) and val_images > 0):
        raise ValueError(f"val_images must be a positive integer or None; got {val_images!r}.")
    return Dataset(data.name, data.train, data.val.head(val_images), data.test)


BN_MODES = ("train", "frozen")


@dataclass(frozen=True)
class FinetuneRun:
    """One pretrained model fine-tuned one way.

    Attributes:
        new_acc: eval-mode test accuracy on the new digits after fine-tuning.
        loss: the final epoch's mean training loss.
        stats_shift: how far fine-tuning moved the BatchNorm layers' running means (largest change of a channel's).
        mismatch: how far the new digits' statistics lay from the pretrained running statistics before
            fine-tuning: the largest ``|mean - running_mean| / sqrt(running_var)`` of any channel, the new training
            images taken as one batch.
    """

    seed: int
    bn_mode: str
    new_acc: float
    loss: float
    stats_shift: float
    mismatch: float


def finetune(
    model: nn.Module,
    new: Dataset,
    train_config: TrainConfig,
    *,
    bn_mode: str,
    cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Fine-tune a copy of ``model`` on ``new`` with ``train_config``, its BatchNorm layers in train mode
    (``bn_mode="train"``: batch statistics, running statistics updated) or frozen (``"frozen"``:
    ``modes.freeze_batchnorm``, eval mode that survives ``model.train()``; gamma and beta still train).
    ``model`` itself is not changed.

    Returns the fields of ``FinetuneRun`` but the seed and the mode. Cached, keyed on the weights too.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}; got {bn_mode!r}.")
    path = cache_path("finetune", cache, weights=weights_digest(model), train=train_config, new=new.fingerprint,
                      bn_mode=bn_mode)
    stored = read_cached(path)
    if stored is not None:
        return stored
    result = _finetuned(model, new, train_config, bn_mode, device)
    write_json_atomic(path, result)
    return result


def _finetuned(model: nn.Module, new: Dataset, train_config: TrainConfig, bn_mode: str, device) -> dict[str, float]:
    mismatch = max(
        ((s.mean - s.running_mean).abs() / s.running_var.sqrt()).max().item()
        for s in channel_statistics(model, new.train.images)
    )
    tuned = copy.deepcopy(model)
    if bn_mode == "frozen":
        freeze_batchnorm(tuned)
    history = train(tuned, new, train_config, device=device, progress=False)
    shift = max(
        ((a.running_mean.cpu() - b.running_mean.cpu()).abs().max().item()
         for (_, a), (_, b) in zip(batchnorm_layers(tuned), batchnorm_layers(model))),
        default=0.0,
    )
    return {"new_acc": history.test_acc, "loss": history.final.loss, "stats_shift": shift, "mismatch": mismatch}


@dataclass(frozen=True)
class _FinetuneTask:
    """One fine-tuning run, as a worker process receives it."""

    seed: int
    bn_mode: str
    model: CNNConfig
    state: dict
    train_config: TrainConfig
    path: Path
    device: str

    def __str__(self) -> str:
        return f"fine-tuning seed {self.seed} with BatchNorm {self.bn_mode}"


def _finetune_task(task: _FinetuneTask, new: Dataset) -> dict[str, float]:
    """What a worker runs: rebuild the pretrained model, fine-tune it, store the result."""
    model = build_model(task.model)
    model.load_state_dict(task.state)
    result = _finetuned(model, new, task.train_config, task.bn_mode, task.device)
    write_json_atomic(task.path, result)
    return result


def finetune_comparison(
    data: Dataset,
    *,
    pretrain: TrainConfig,
    finetune_config: TrainConfig,
    seeds: tuple[int, ...],
    model: CNNConfig = CNNConfig(),
    old: tuple[int, ...] = (0, 1, 2, 3, 4),
    new: tuple[int, ...] = (5, 6, 7, 8, 9),
    finetune_samples: int = 1_000,
    val_images: int | None = 1_000,
    cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[FinetuneRun]:
    """Per seed: pretrain ``model`` on the ``old`` digits of ``data`` with ``pretrain``, then fine-tune it on
    ``finetune_samples`` images of the ``new`` digits with ``finetune_config`` (its seed replaced by the run's),
    once per ``BN_MODES`` entry. Both stages are cached and run their seeds in parallel worker processes on the CPU,
    as ``bnlab.experiments.run_many`` does. ``val_images`` cuts the validation splits, which the runs evaluate
    every epoch and nothing here reports, to their first that many images (``None``: keep them whole)."""
    old_data, new_data = digit_tasks(data, old=old, new=new, finetune_samples=finetune_samples)
    old_data, new_data = (shorter_validation(d, val_images) for d in (old_data, new_data))
    pretrained = run_many({"pretrained": model}, pretrain, old_data, seeds, with_models=True, cache=cache,
                          device=device, workers=workers, progress=progress)["pretrained"]
    device = pick_device(device)
    workers = seed_workers(workers, device)
    threads = seed_threads(workers, device)
    found, tasks = {}, []
    for seed, (m, _) in zip(seeds, pretrained):
        for bn_mode in BN_MODES:
            config = replace(finetune_config, seed=seed)
            path = cache_path("finetune", cache, threads=threads, weights=weights_digest(m), train=config,
                              new=new_data.fingerprint, bn_mode=bn_mode)
            stored = read_cached(path)
            if stored is not None:
                found[seed, bn_mode] = stored
            else:
                state = {k: v.detach().cpu() for k, v in m.state_dict().items()}
                tasks.append(_FinetuneTask(seed, bn_mode, model, state, config, path, str(device)))
    for task, result in _workers.results(_finetune_task, tasks, new_data, workers=workers, threads=threads):
        found[task.seed, task.bn_mode] = result
    return [FinetuneRun(seed, bn_mode, **found[seed, bn_mode]) for seed in seeds for bn_mode in BN_MODES]


# --- inference speed ------------------------------------------------------------------------------------------------


@torch.inference_mode()
def inference_times(
    models: dict[str, nn.Module],
    images: torch.Tensor,
    *,
    batch_sizes: tuple[int, ...] = (1, 256),
    rounds: int = 7,
    min_seconds: float = 0.05,
    threads: int | None = 1,
) -> list[dict]:
    """Time an eval-mode forward pass of every model at every batch size; return one row per batch size and
    model: ``{"batch_size", "model", "ms"}`` (milliseconds per batch, the fastest of ``rounds`` rounds) and
    ``"ratio"`` (its time over the first model's at that batch size).

    The models take turns within each round, so that a slow stretch of a shared machine hits them alike; in each
    turn a model runs forward passes for ``min_seconds`` (at least one) and the mean time of one is kept. On the
    CPU they run with ``threads`` threads (``None``: as set): one by default, because on a busy machine a second
    thread that waits for a core distorts small timings. A measurement of this machine at this moment: nothing
    else depends on it. The models are put in eval mode.
    """
    if not models:
        raise ValueError("models is empty: give at least one {label: model}.")
    if not (isinstance(rounds, int) and rounds > 0):
        raise ValueError(f"rounds must be a positive integer; got {rounds!r}.")
    rows = []
    for batch_size in batch_sizes:
        if not (isinstance(batch_size, int) and 0 < batch_size <= len(images)):
            raise ValueError(
                f"every batch size must be an integer in 1..{len(images)} (the images given); got {batch_size!r}."
            )
        batch = images[:batch_size]
        rows += _time_batch(models, batch, rounds, min_seconds, threads if batch.device.type == "cpu" else None)
    return rows


def _time_batch(models: dict[str, nn.Module], batch: torch.Tensor, rounds: int, min_seconds: float,
                threads: int | None) -> list[dict]:
    with using_threads(threads):
        for model in models.values():
            model.eval()
            model(batch)  # warm-up: first calls allocate and pick kernels
            _synchronize(batch.device)
        best = dict.fromkeys(models, float("inf"))
        for _ in range(rounds):
            for label, model in models.items():
                calls, start = 0, time.perf_counter()
                while calls == 0 or time.perf_counter() - start < min_seconds:
                    model(batch)
                    calls += 1
                    _synchronize(batch.device)
                best[label] = min(best[label], (time.perf_counter() - start) / calls)
    first = next(iter(models))
    return [
        {"batch_size": len(batch), "model": label, "ms": 1e3 * best[label], "ratio": best[label] / best[first]}
        for label in models
    ]


def _synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (a CUDA call returns before the work is done); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

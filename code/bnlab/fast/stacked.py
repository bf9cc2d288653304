"""Seeds stacked: all seeds of one MLP configuration trained together, as one model whose weights have a
leading seed dimension.

Each seed keeps everything it has when trained alone by ``bnlab.training.train_model``: its initial weights (the
model built right after ``torch.manual_seed(seed)``), its batch order (a generator seeded with ``seed``), its
dropout masks (drawn from its own generator seeded with ``seed``, in the order a lone run draws them) and its
BatchNorm buffers. For ``S`` seeds, a batch of ``B`` examples and ``s`` one seed, a step computes::

    Linear      y[s] = x[s] @ W[s]^T + b[s]           one batched product (bmm) for all seeds
    BatchNorm1d the (S, B, F) activations as a (B, S * F) batch: every seed's feature is its own channel
    ReLU        y = max(x, 0);  Dropout  y = x * m[s] / (1 - p)
    loss        sum over s of seed s's mean cross-entropy: the seeds share no weights, so the gradient of the
                sum with respect to seed s's weights is the gradient of seed s's own loss
    update      torch.optim.SGD on the stacked weights: elementwise, so each seed gets its own SGD step

A seed's weights and history equal those it gets trained alone up to float rounding (a batched product and a
wider BatchNorm add in another order); ``tests/test_fast_stacked.py`` checks it on the CPU. On the CPU stacking is
no faster (a batched product costs what its products cost one after another); on a GPU, where a model this
small is bound by kernel launches, one stacked step stands in for ``S`` small ones. It is opt-in: not measured
on a GPU yet. On CUDA, dropout masks come from each seed's own CUDA generator through ``bernoulli_``, not from the
fused dropout kernel a lone CUDA run uses, so there runs with dropout differ from lone runs in their masks too.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import Dataset, Split
from ..models import MLPConfig, build_mlp
from ..training import EpochStats, History, TrainConfig, describe_device, pick_device, to_device

STACKED_LAYERS = (nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Identity)


def stack_unsupported_reason(model: nn.Module) -> str | None:
    """Why ``StackedMLP`` cannot stack copies of ``model`` (``None`` if it can): it takes an ``nn.Sequential`` of
    ``Flatten``, ``Linear``, ``BatchNorm1d`` (affine, with running statistics), ``ReLU``, ``Dropout`` and
    ``Identity``, without hooks, in float32 (every model ``bnlab.models.build_mlp`` builds)."""
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not an nn.Sequential"
    for i, layer in enumerate(model):
        if type(layer) not in STACKED_LAYERS:
            return f"layer {i} is a {type(layer).__name__}"
        if layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks:
            return f"layer {i} has a hook"
        if type(layer) is nn.BatchNorm1d and not (layer.affine and layer.track_running_stats):
            return f"layer {i} is a BatchNorm1d without affine parameters or running statistics"
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
        return "a parameter or buffer is not float32"
    return None


class StackedMLP:
    """Several copies of one MLP, each with its own weights, computed together.

    ``tensors`` holds, per layer, the stacked parameters and buffers (leading dimension: the seed);
    ``parameters`` lists the stacked parameters, in the order of ``model.parameters()``.
    """

    def __init__(self, models: list[nn.Sequential]):
        if not models:
            raise ValueError("models is empty: give at least one model to stack.")
        for model in models:
            reason = stack_unsupported_reason(model)
            if reason is not None:
                raise ValueError(f"StackedMLP cannot stack this model: {reason}.")
        shapes = [[(type(m), tuple(t.shape for t in m.state_dict().values())) for m in model] for model in models]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("the models to stack must have the same layers with the same shapes.")
        self.template = copy.deepcopy(models[0])
        self.seeds = len(models)
        self.tensors: list[dict[str, torch.Tensor]] = []
        self.parameters: list[torch.Tensor] = []
        for i, layer in enumerate(models[0]):
            stacked = {name: torch.stack([m[i].state_dict()[name].detach() for m in models])
                       for name in layer.state_dict()}
            for name, _ in layer.named_parameters():
                stacked[name].requires_grad_(True)
                self.parameters.append(stacked[name])
            self.tensors.append(stacked)

    def to(self, device: torch.device) -> "StackedMLP":
        for stacked in self.tensors:
            for name, tensor in stacked.items():
                moved = tensor.detach().to(device)
                stacked[name] = moved.requires_grad_(tensor.requires_grad)
        self.parameters = [t for stacked in self.tensors for t in stacked.values() if t.requires_grad]
        return self

    def forward(self, x: torch.Tensor, *, training: bool, shared: bool = False,
                generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """The logits, ``(seeds, batch, classes)``. ``x`` is ``(seeds, batch, ...)``, one batch per seed, or with
        ``shared``, ``(batch, ...)``, the same batch for every seed. ``training`` draws dropout masks from
        ``generators`` (one per seed) and normalises with batch statistics, updating the BatchNorm buffers."""
        h = x
        for layer, stacked in zip(self.template, self.tensors):
            kind = type(layer)
            if kind is nn.Flatten:
                h = h.flatten(1) if shared else h.flatten(2)
            elif kind is nn.Linear:
                weight_t = stacked["weight"].transpose(1, 2)
                h = h.unsqueeze(0).expand(self.seeds, -1, -1) if shared else h
                shared = False
                if "bias" in stacked:
                    h = torch.baddbmm(stacked["bias"].unsqueeze(1), h, weight_t)
                else:
                    h = torch.bmm(h, weight_t)
            elif kind is nn.BatchNorm1d:
                h = self.batch_norm(layer, stacked, h, training)
            elif kind is nn.ReLU:
                h = torch.relu(h)
            elif kind is nn.Dropout and training and layer.p > 0:
                noise = torch.stack([torch.empty(h.shape[1:], device=h.device).bernoulli_(1 - layer.p, generator=g)
                                     for g in generators])
                h = h * noise.div_(1 - layer.p)
        return h

    @staticmethod
    def batch_norm(layer: nn.BatchNorm1d, stacked: dict, h: torch.Tensor, training: bool) -> torch.Tensor:
        """BatchNorm1d for every seed at once: ``(S, B, F)`` seen as ``B`` examples of ``S * F`` channels."""
        seeds, batch, features = h.shape
        factor = 0.0
        if training:
            stacked["num_batches_tracked"].add_(1)
            factor = layer.momentum if layer.momentum is not None else 1.0 / float(stacked["num_batches_tracked"][0])
        wide = h.transpose(0, 1).reshape(batch, seeds * features)
        y = F.batch_norm(wide, stacked["running_mean"].view(-1), stacked["running_var"].view(-1),
                         stacked["weight"].view(-1), stacked["bias"].view(-1), training, factor, layer.eps)
        return y.view(batch, seeds, features).transpose(0, 1)

    def unstack(self, seed_index: int) -> nn.Sequential:
        """One seed's model, as a plain ``nn.Sequential`` holding a copy of its weights and buffers."""
        model = copy.deepcopy(self.template)
        with torch.no_grad():
            for layer, stacked in zip(model, self.tensors):
                for name, tensor in layer.state_dict().items():
                    tensor.copy_(stacked[name][seed_index])
        return model


@torch.no_grad()
def count_correct(stacked: StackedMLP, split: Split, *, batch_size: int) -> torch.Tensor:
    """How many examples of ``split`` each seed classifies correctly in eval mode: a tensor of ``seeds`` counts."""
    correct = torch.zeros(stacked.seeds, dtype=torch.long, device=split.images.device)
    for start in range(0, len(split), batch_size):
        logits = stacked.forward(split.images[start : start + batch_size], training=False, shared=True)
        correct += (logits.argmax(dim=2) == split.labels[start : start + batch_size]).sum(dim=1)
    return correct


def train_stacked(
    model_config: MLPConfig,
    data: Dataset,
    config: TrainConfig,
    seeds,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[tuple[nn.Module, History]]:
    """Train ``model_config`` once per seed (the seed replaces ``config.seed``), all seeds stacked; returns
    ``[(model, History)]`` in seed order, what ``train_model`` returns for each seed alone, up to rounding."""
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be one or more different seeds; got {seeds}.")
    if not isinstance(model_config, MLPConfig):
        raise ValueError(f"train_stacked trains an MLPConfig; got {type(model_config).__name__}.")
    device = pick_device(device)
    data = to_device(data, device)
    if config.batch_size > len(data.train):
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the training split ({len(data.train)} examples)."
        )
    models = []
    for seed in seeds:
        torch.manual_seed(seed)  # the initial weights, as train_model draws them
        models.append(build_mlp(model_config))
    stacked = StackedMLP(models).to(device)
    optimizer = torch.optim.SGD(stacked.parameters, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    dropout = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]  # as train() reseeds
    orders = [torch.Generator().manual_seed(seed) for seed in seeds]
    n, batch = len(data.train), config.batch_size
    steps = n // batch
    threads = torch.get_num_threads() if device.type == "cpu" else None
    histories = [History(data.name, describe_device(device), threads=threads) for _ in seeds]

    bar = tqdm(range(1, config.epochs + 1), desc=f"{len(seeds)} seeds stacked on {histories[0].device}",
               disable=not progress, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        order = torch.stack([torch.randperm(n, generator=g) for g in orders]).to(device)
        loss_sum = torch.zeros(len(seeds), device=device)
        for i in range(steps):
            index = order[:, i * batch : (i + 1) * batch]
            xb = data.train.images.index_select(0, index.flatten())
            xb = xb.view(len(seeds), batch, *data.train.images.shape[1:])
            yb = data.train.labels.index_select(0, index.flatten())
            logits = stacked.forward(xb, training=True, generators=dropout)
            losses = F.cross_entropy(logits.reshape(len(seeds) * batch, -1), yb, reduction="none")
            losses = losses.view(len(seeds), batch).mean(dim=1)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            loss_sum += losses.detach()
        counts = [loss_sum.double(), count_correct(stacked, data.val, batch_size=config.eval_batch_size).double()]
        if config.record_train_acc:
            counts.append(count_correct(stacked, data.train, batch_size=config.eval_batch_size).double())
        counts = torch.stack(counts).tolist()  # one host synchronisation per epoch
        seconds = time.perf_counter() - start
        for s, history in enumerate(histories):
            train_acc = 100.0 * counts[2][s] / n if config.record_train_acc else None
            val_acc = 100.0 * counts[1][s] / len(data.val)
            history.epochs.append(EpochStats(epoch, counts[0][s] / steps, train_acc, val_acc, seconds))
    correct = count_correct(stacked, data.test, batch_size=config.eval_batch_size).tolist()
    results = []
    for s, history in enumerate(histories):
        history.test_acc = 100.0 * correct[s] / len(data.test)
        model = stacked.unstack(s).to(device).train()
        results.append((model, history))
    return results

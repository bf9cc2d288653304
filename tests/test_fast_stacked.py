import copy
import dataclasses

import pytest
import torch
from torch import nn

from bnlab.data import Dataset
from bnlab.fast.stacked import StackedMLP, stack_unsupported_reason, train_stacked
from bnlab.models import MLPConfig, build_mlp
from bnlab.training import TrainConfig, train_model

SEEDS = (1, 2, 3)
FIVE_STEPS = TrainConfig(epochs=1, batch_size=100)  # on 500 images


def models_for(config: MLPConfig, seeds=SEEDS) -> list[nn.Sequential]:
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_mlp(config))
    return models


def assert_close_states(a: nn.Module, b: nn.Module, *, atol: float):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert x.shape == y.shape, name
        assert torch.allclose(x.double(), y.double(), rtol=0, atol=atol), f"{name}: {(x - y).abs().max().item()}"


def head(data: Dataset, n: int) -> Dataset:
    return Dataset(data.name, data.train.head(n), data.val, data.test)


def test_stacking_keeps_every_seeds_weights_and_buffers_exactly():
    models = models_for(MLPConfig(placement="after", dropout=0.2))
    stacked = StackedMLP(models)
    assert stacked.seeds == 3
    assert [tuple(p.shape) for p in stacked.parameters] == [(3, *p.shape) for p in models[0].parameters()]
    for s, model in enumerate(models):
        for (name, x), y in zip(stacked.unstack(s).state_dict().items(), model.state_dict().values()):
            assert torch.equal(x, y), name


def test_eval_mode_gives_each_seeds_outputs_up_to_rounding(small_data):
    models = models_for(MLPConfig())
    with torch.no_grad():
        for model in models:  # running statistics away from their start values
            model.train()(small_data.train.images[:200])
    stacked = StackedMLP(models)
    x = small_data.val.images[:300]
    with torch.no_grad():
        logits = stacked.forward(x, training=False, shared=True)
        for s, model in enumerate(models):
            assert torch.allclose(logits[s], model.eval()(x), atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum 0.1", "cumulative"])
def test_train_mode_draws_each_seeds_dropout_masks_and_updates_its_buffers(small_data, momentum):
    models = models_for(MLPConfig(placement="after", dropout=0.3))
    for model in models:
        for layer in model:
            if isinstance(layer, nn.BatchNorm1d):
                layer.momentum = momentum
    stacked = StackedMLP(models)
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    batches = [small_data.train.images[100 * s : 100 * s + 64] for s in range(len(SEEDS))]
    with torch.no_grad():
        for _ in range(2):
            logits = stacked.forward(torch.stack(batches), training=True, generators=generators)
        for s, (seed, model) in enumerate(zip(SEEDS, models)):
            torch.manual_seed(seed)  # a lone run draws its masks from the global generator, seeded with the seed
            for _ in range(2):
                alone = model.train()(batches[s])
            assert torch.allclose(logits[s], alone, atol=1e-5)
            assert_close_states(stacked.unstack(s), model, atol=1e-6)


def test_a_stacked_run_equals_the_seeds_trained_alone_up_to_rounding(small_data):
    config, data = MLPConfig(), head(small_data, 1_000)
    stacked = train_stacked(config, data, TrainConfig(epochs=2, batch_size=100), SEEDS, device="cpu", progress=False)
    assert len(stacked) == len(SEEDS)
    for seed, (model, history) in zip(SEEDS, stacked):
        alone, expected = train_model(config, data, TrainConfig(epochs=2, batch_size=100, seed=seed), device="cpu",
                                      progress=False)
        assert_close_states(model, alone, atol=1e-5)
        assert [e.loss for e in history.epochs] == pytest.approx([e.loss for e in expected.epochs], rel=1e-5)
        assert [e.val_acc for e in history.epochs] == pytest.approx([e.val_acc for e in expected.epochs], abs=0.21)
        assert history.test_acc == pytest.approx(expected.test_acc, abs=0.03)
        assert (history.dataset, history.device, history.threads) == (expected.dataset, "cpu", torch.get_num_threads())
        assert all(e.train_acc is None for e in history.epochs)
    assert not torch.equal(stacked[0][0][1].weight, stacked[1][0][1].weight)  # the seeds differ


@pytest.mark.parametrize(
    "config, train_config",
    [
        (MLPConfig(placement="after", dropout=0.3), FIVE_STEPS),
        (MLPConfig(placement="none", dropout=0.5, hidden=(40,)), FIVE_STEPS),
        (MLPConfig(), dataclasses.replace(FIVE_STEPS, momentum=0.9, weight_decay=1e-3, record_train_acc=True)),
    ],
    ids=["dropout after BN", "dropout without BN", "momentum, weight decay, training accuracy"],
)
def test_each_seed_keeps_its_masks_batches_and_optimiser_settings(small_data, config, train_config):
    data = head(small_data, 500)
    stacked = train_stacked(config, data, train_config, SEEDS, device="cpu", progress=False)
    for seed, (model, history) in zip(SEEDS, stacked):
        alone, expected = train_model(config, data, dataclasses.replace(train_config, seed=seed), device="cpu",
                                      progress=False)
        assert_close_states(model, alone, atol=1e-4)
        assert history.final.loss == pytest.approx(expected.final.loss, rel=1e-5)
        if train_config.record_train_acc:
            assert history.final.train_acc == pytest.approx(expected.final.train_acc, abs=0.21)


def test_what_cannot_be_stacked_is_refused_with_the_reason(small_data):
    assert stack_unsupported_reason(build_mlp()) is None
    assert "Conv2d" in stack_unsupported_reason(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    assert "not an nn.Sequential" in stack_unsupported_reason(nn.Linear(3, 2))
    no_stats = nn.Sequential(nn.Flatten(), nn.Linear(784, 5), nn.BatchNorm1d(5, track_running_stats=False))
    assert "running statistics" in stack_unsupported_reason(no_stats)
    assert "float32" in stack_unsupported_reason(build_mlp().double())
    with pytest.raises(ValueError, match="layer 0 is a Conv2d"):
        StackedMLP([nn.Sequential(nn.Conv2d(1, 2, 3))])
    with pytest.raises(ValueError, match="same layers with the same shapes"):
        StackedMLP([build_mlp(MLPConfig(hidden=(8,))), build_mlp(MLPConfig(hidden=(9,)))])
    with pytest.raises(ValueError, match="models is empty"):
        StackedMLP([])
    with pytest.raises(ValueError, match="different seeds"):
        train_stacked(MLPConfig(), small_data, FIVE_STEPS, (1, 1), device="cpu")
    with pytest.raises(ValueError, match="larger than the training split"):
        train_stacked(MLPConfig(), head(small_data, 50), FIVE_STEPS, (1,), device="cpu")
    with pytest.raises(ValueError, match="trains an MLPConfig"):
        train_stacked(copy.copy(FIVE_STEPS), small_data, FIVE_STEPS, (1,), device="cpu")

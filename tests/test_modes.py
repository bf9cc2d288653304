import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab import modes
from bnlab.data import Split
from bnlab.layers import batchnorm_layers
from bnlab.models import MLPConfig, build_mlp
from bnlab.training import TrainConfig, train_mlp


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same_state(before: dict[str, torch.Tensor], model: nn.Module) -> bool:
    return all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def flags(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


@pytest.fixture(scope="module")
def trained(small_data):
    """The reference MLP after a short training run: running statistics far from their start values."""
    model, _ = train_mlp(MLPConfig(), small_data, TrainConfig(epochs=3, batch_size=100), device="cpu", progress=False)
    return model


@pytest.fixture
def model(trained):
    return copy.deepcopy(trained)


@pytest.fixture
def batch():
    return torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def sgd_step(model: nn.Module, x: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model(x), torch.arange(len(x)) % 10)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# --- preserved_state and evaluation batches -------------------------------------------------------------------


def test_preserved_state_restores_buffers_and_every_modules_flag(model, batch):
    model.train()
    model[2].eval()
    before, before_flags = clone_state(model), flags(model)
    with modes.preserved_state(model):
        model.train()
        model(batch)
        model.eval()
    assert same_state(before, model)
    assert flags(model) == before_flags


def test_preserved_state_restores_even_when_the_block_raises(model, batch):
    model.eval()
    before = clone_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with modes.preserved_state(model):
            model.train()
            model(batch)
            raise RuntimeError("boom")
    assert same_state(before, model) and not any(flags(model))


@pytest.mark.parametrize("convert", ["double", "half"])
def test_preserved_state_restores_buffers_when_the_block_changes_the_dtype(model, batch, convert):
    model.eval()
    before = clone_state(model)
    with modes.preserved_state(model):
        getattr(model, convert)()
        model.train()
        model(batch.to(model[1].weight.dtype))  # running statistics move, in the new dtype
    for name, value in model.state_dict().items():
        assert value.dtype == (before[name].dtype if name.endswith("num_batches_tracked") else getattr(torch, {
            "double": "float64", "half": "float16"}[convert]))  # the block's dtype stays
        assert torch.equal(value, before[name].to(value.dtype)), name  # the values from before come back
    assert not any(flags(model))


def test_evaluation_batches_cover_every_index_once_and_merge_a_lone_last_example_in_train_mode():
    for mode in modes.MODES:
        for n, size in [(10, 3), (9, 3), (7, 2), (1, 5), (5, 5)]:
            batches = modes.evaluation_batches(n, size, mode=mode)
            assert [i for b in batches for i in range(n)[b]] == list(range(n))
    assert [b.stop - b.start for b in modes.evaluation_batches(7, 2, mode="eval")] == [2, 2, 2, 1]
    assert [b.stop - b.start for b in modes.evaluation_batches(7, 2, mode="train")] == [2, 2, 3]


# --- outputs and accuracy in a mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", modes.MODES)
@pytest.mark.parametrize("start_in_train_mode", [True, False])
def test_accuracy_in_mode_restores_the_mode_and_leaves_running_statistics_alone(model, small_data, mode, start_in_train_mode):
    model.train(start_in_train_mode)
    before, before_flags = clone_state(model), flags(model)
    modes.accuracy_in_mode(model, small_data.test, mode=mode, batch_size=8)
    assert same_state(before, model)
    assert flags(model) == before_flags


def test_eval_mode_accuracy_does_not_depend_on_the_batch_size(model, small_data):
    accuracies = {size: modes.accuracy_in_mode(model, small_data.test, batch_size=size) for size in (1, 7, 64, 1000)}
    assert max(accuracies.values()) - min(accuracies.values()) <= 0.2
    assert accuracies[1000] > 50


def test_train_mode_accuracy_with_batches_of_two_is_far_below_eval_mode(model, small_data):
    in_eval = modes.accuracy_in_mode(model, small_data.test, mode="eval")
    in_train = modes.accuracy_in_mode(model, small_data.test, mode="train", batch_size=2)
    assert in_train < in_eval - 15


def test_train_mode_accuracy_uses_batch_statistics_and_matches_a_manual_evaluation(model, small_data):
    split = small_data.test.head(100)
    manual = copy.deepcopy(model).train()
    with torch.no_grad():
        predicted = torch.cat([manual(split.images[i : i + 10]).argmax(1) for i in range(0, 100, 10)])
    expected = 100.0 * (predicted == split.labels).float().mean().item()
    assert modes.accuracy_in_mode(model, split, mode="train", batch_size=10) == pytest.approx(expected)


def test_outputs_in_mode_concatenate_batches_in_order(model, batch):
    whole = modes.outputs_in_mode(model, batch, mode="eval", batch_size=len(batch))
    pieces = modes.outputs_in_mode(model, batch, mode="eval", batch_size=5)
    assert pieces.shape == (32, 10)
    assert torch.allclose(whole, pieces, atol=1e-5)


def test_outputs_in_train_mode_depend_on_the_rest_of_the_batch(model, batch):
    alone = modes.outputs_in_mode(model, batch, mode="train", batch_size=2)
    shifted = modes.outputs_in_mode(model, batch.roll(1, dims=0), mode="train", batch_size=2).roll(-1, dims=0)
    assert not torch.allclose(alone, shifted, atol=1e-3)


def test_a_lone_last_example_joins_the_previous_batch_in_train_mode(model, batch):
    out = modes.outputs_in_mode(model, batch[:5], mode="train", batch_size=2)  # batches of 2 and 3, no error
    assert out.shape == (5, 10)


def test_frozen_batchnorm_stays_in_eval_mode_when_evaluating_in_train_mode(model, batch):
    modes.freeze_batchnorm(model)
    in_train = modes.outputs_in_mode(model, batch, mode="train", batch_size=4)
    in_eval = modes.outputs_in_mode(model, batch, mode="eval", batch_size=4)
    assert torch.allclose(in_train, in_eval, atol=1e-5)  # no Dropout here: nothing else switches


def test_accuracy_by_batch_size_has_one_entry_per_mode_and_size(model, small_data):
    split = small_data.test.head(64)
    table = modes.accuracy_by_batch_size(model, split, batch_sizes=(2, 64))
    assert set(table) == set(modes.MODES) and all(set(row) == {2, 64} for row in table.values())
    assert table["eval"][2] == table["eval"][64] == modes.accuracy_in_mode(model, split)
    only_train = modes.accuracy_by_batch_size(model, split, batch_sizes=(8,), modes=("train",))
    assert list(only_train) == ["train"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "test"}, "mode must be one of"),
        ({"mode": "train", "batch_size": 1}, "batch_size must be an integer >= 2 in train mode"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1 in eval mode"),
        ({"batch_size": 2.0}, "batch_size must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
    ],
)
def test_invalid_mode_or_batch_size_names_the_argument(model, small_data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        modes.accuracy_in_mode(model, small_data.test, **kwargs)


def test_train_mode_needs_at_least_two_examples(model, small_data):
    with pytest.raises(ValueError, match="at least 2 example"):
        modes.accuracy_in_mode(model, small_data.test.head(1), mode="train", batch_size=2)
    assert 0 <= modes.accuracy_in_mode(model, small_data.test.head(1), mode="eval") <= 100


def test_accuracy_by_batch_size_rejects_empty_or_unknown_choices(model, small_data):
    with pytest.raises(ValueError, match="batch_sizes is empty"):
        modes.accuracy_by_batch_size(model, small_data.test, batch_sizes=())
    with pytest.raises(ValueError, match="modes must be"):
        modes.accuracy_by_batch_size(model, small_data.test, modes=("inference",))


def test_mode_dependent_layers_finds_batchnorm_and_dropout_only(batch):
    torch.manual_seed(0)
    model = build_mlp(MLPConfig(dropout=0.3))
    names = modes.mode_dependent_layers(model, batch)
    assert sorted({type(model.get_submodule(name)).__name__ for name in names}) == ["BatchNorm1d", "Dropout"]
    assert modes.mode_dependent_layers(build_mlp(MLPConfig(placement="none")), batch) == []
    with pytest.raises(ValueError, match="at least 2 examples"):
        modes.mode_dependent_layers(model, batch[:1])


def test_preserved_state_rejects_what_is_not_a_module():
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        with modes.preserved_state("model"):
            pass


# --- freezing BatchNorm ---------------------------------------------------------------------------------------


def test_plain_bn_eval_is_undone_by_model_train(model):
    for _, layer in batchnorm_layers(model):
        layer.eval()
    model.train()
    assert all(layer.training for _, layer in batchnorm_layers(model))


def test_freeze_keeps_batchnorm_in_eval_mode_across_model_train_and_other_layers_follow(model):
    frozen = modes.freeze_batchnorm(model)
    assert frozen == [layer for _, layer in batchnorm_layers(model)] and len(frozen) == 2
    model.train()
    assert not any(layer.training for layer in frozen)
    assert all(m.training for m in model.modules() if not isinstance(m, nn.BatchNorm1d))
    assert all(modes.is_frozen(layer) for layer in frozen)
    model.eval()
    model.train()
    frozen[0].train()
    assert not any(layer.training for layer in frozen)


def test_running_statistics_stay_unchanged_through_training_steps_while_other_layers_train(model, batch):
    modes.freeze_batchnorm(model)
    before = clone_state(model)
    for _ in range(3):
        model.train()
        sgd_step(model, batch)
    state = model.state_dict()
    for name in before:
        moved = not torch.equal(before[name], state[name])
        is_buffer = name.endswith(("running_mean", "running_var", "num_batches_tracked"))
        assert moved != is_buffer, name  # buffers stay put; every weight, bias, gamma and beta moved


def test_train_affine_false_stops_gamma_and_beta_gradients_and_unfreeze_restores_them(model, batch):
    layers = modes.freeze_batchnorm(model, train_affine=False)
    model.train()
    before = clone_state(model)
    sgd_step(model, batch)
    for layer in layers:
        assert not layer.weight.requires_grad and layer.weight.grad is None and layer.bias.grad is None
    assert torch.equal(before["2.weight"], model.state_dict()["2.weight"])
    assert not torch.equal(before["1.weight"], model.state_dict()["1.weight"])
    modes.unfreeze_batchnorm(model)
    assert all(layer.weight.requires_grad and layer.bias.requires_grad for layer in layers)


def test_unfreeze_lets_batchnorm_follow_the_mode_and_update_its_statistics_again(model, batch):
    modes.freeze_batchnorm(model)
    model.train()
    thawed = modes.unfreeze_batchnorm(model)
    assert len(thawed) == 2 and all(layer.training for layer in thawed)
    assert not any(modes.is_frozen(layer) for layer in thawed)
    mean = thawed[0].running_mean.clone()
    model(batch)
    assert not torch.equal(mean, thawed[0].running_mean)
    model.eval()
    assert not any(layer.training for layer in thawed)
    assert modes.unfreeze_batchnorm(model) == []


def test_unfreeze_puts_the_layers_in_the_models_current_mode(model):
    modes.freeze_batchnorm(model)
    model.eval()
    assert not any(layer.training for layer in modes.unfreeze_batchnorm(model))


def test_freezing_twice_keeps_the_requires_grad_from_before_the_first_freeze(model):
    model[2].bias.requires_grad_(False)
    modes.freeze_batchnorm(model, train_affine=False)
    modes.freeze_batchnorm(model, train_affine=True)
    assert model[2].weight.requires_grad and not model[2].bias.requires_grad
    modes.unfreeze_batchnorm(model)
    assert model[2].weight.requires_grad and not model[2].bias.requires_grad


def test_frozen_batchnorm_context_manager_unfreezes_on_exit_even_after_an_error(model):
    with pytest.raises(RuntimeError):
        with modes.frozen_batchnorm(model, train_affine=False) as layers:
            model.train()
            assert not any(layer.training for layer in layers)
            raise RuntimeError("stop")
    assert all(layer.training and layer.weight.requires_grad for layer in layers)
    assert not any(modes.is_frozen(layer) for layer in layers)


def test_a_frozen_model_stays_frozen_after_deepcopy_and_torch_save(model):
    modes.freeze_batchnorm(model)
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (copied, loaded):
        other.train()
        layers = [layer for _, layer in batchnorm_layers(other)]
        assert not any(layer.training for layer in layers)
        assert all(layer.train.layer is layer for layer in layers)  # each record points at its own copy's layer
    assert set(model.state_dict()) == set(build_mlp().state_dict())  # freezing adds nothing to the state dict


def test_freezing_follows_the_frozen_layer_in_any_batchnorm_flavour():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    (layer,) = modes.freeze_batchnorm(model)
    model.train()
    assert isinstance(layer, nn.BatchNorm2d) and not layer.training


def test_freeze_rejects_models_without_batchnorm_and_bad_arguments():
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        modes.freeze_batchnorm(build_mlp(MLPConfig(placement="none")))
    with pytest.raises(ValueError, match="train_affine must be True or False"):
        modes.freeze_batchnorm(build_mlp(), train_affine="no")
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        modes.freeze_batchnorm(Split(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long)))

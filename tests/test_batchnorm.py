"""bnlab.batchnorm: the from-scratch BatchNorm1d behaves like torch.nn.BatchNorm1d."""

import copy

import pytest
import torch
from torch import nn

from bnlab.batchnorm import (
    COMPARED,
    BatchNorm1d,
    channel_dims,
    max_differences,
    preactivations,
    preactivations_during_training,
)
from bnlab.models import MLPConfig, build_mlp
from bnlab.training import TrainConfig

TOLERANCE = 1e-4  # float32, values of order 1-10


def random_batches(shape, count=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [3.0 * torch.randn(shape, generator=generator) + 2.0 for _ in range(count)]


def pair(num_features, **kwargs):
    return BatchNorm1d(num_features, **kwargs), nn.BatchNorm1d(num_features, **kwargs)


def assert_train_alike(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> None:
    """Train both models for ``steps`` SGD steps on (x, y), then check that they agree in eval mode."""
    for model in (ours, theirs):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(16, 5), (8, 5, 7), (2, 5)], ids=["N,C", "N,C,L", "two examples"])
@pytest.mark.parametrize("momentum", [0.1, None, 0.5])
def test_matches_torch_in_train_mode_outputs_gradients_and_buffers(shape, momentum):
    ours, theirs = pair(5, momentum=momentum)
    differences = max_differences(ours, theirs, random_batches(shape))
    assert set(differences) == set(COMPARED)
    assert all(d < TOLERANCE for d in differences.values()), differences
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 5


@pytest.mark.parametrize("shape", [(16, 5), (8, 5, 7), (1, 5)], ids=["N,C", "N,C,L", "one example"])
def test_matches_torch_in_eval_mode_after_training(shape):
    ours, theirs = pair(5)
    max_differences(ours, theirs, random_batches((32, 5), seed=1))  # a few train-mode steps first
    ours.eval(), theirs.eval()
    differences = max_differences(ours, theirs, random_batches(shape, seed=2))
    assert all(d < TOLERANCE for d in differences.values()), differences


def test_eval_mode_leaves_the_buffers_unchanged():
    bn = BatchNorm1d(4)
    bn(torch.randn(10, 4))
    before = {k: v.clone() for k, v in bn.named_buffers()}
    bn.eval()
    bn(torch.randn(10, 4) * 5 + 3)
    for name, value in bn.named_buffers():
        assert torch.equal(value, before[name]), name


def test_starts_with_gamma_one_beta_zero_mean_zero_variance_one():
    bn = BatchNorm1d(3)
    assert torch.equal(bn.weight, torch.ones(3)) and torch.equal(bn.bias, torch.zeros(3))
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
    assert bn.num_batches_tracked.item() == 0 and bn.num_batches_tracked.dtype == torch.long
    assert bn.eps == 1e-5 and bn.momentum == 0.1


def test_weight_and_bias_are_parameters_and_statistics_are_buffers():
    bn = BatchNorm1d(3)
    assert [name for name, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [name for name, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    assert list(bn.state_dict()) == list(nn.BatchNorm1d(3).state_dict())


def test_state_dict_is_interchangeable_with_torch_batchnorm1d():
    theirs = nn.BatchNorm1d(4)
    for x in random_batches((20, 4), count=3):
        theirs(x)
    with torch.no_grad():
        theirs.weight.mul_(2.0)
    ours = BatchNorm1d(4)
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(6, 4)
    torch.testing.assert_close(ours(x), theirs(x))


def test_buffers_move_with_to_device_and_dtype():
    bn = BatchNorm1d(3).to("meta")  # a real device move that every machine can do
    assert all(t.device.type == "meta" for t in [*bn.parameters(), *bn.buffers()])
    bn = BatchNorm1d(3).to(torch.float64)
    assert bn.running_mean.dtype == bn.running_var.dtype == bn.weight.dtype == torch.float64
    assert bn.num_batches_tracked.dtype == torch.long  # integer buffers keep their type
    assert bn(torch.randn(4, 3, dtype=torch.float64)).dtype == torch.float64


def test_train_mode_normalises_with_the_biased_variance_over_all_but_the_channel_dimension():
    x = random_batches((6, 3, 4), count=1)[0]
    bn = BatchNorm1d(3)
    mean = x.mean(dim=(0, 2), keepdim=True)
    var_biased = ((x - mean) ** 2).mean(dim=(0, 2), keepdim=True)
    torch.testing.assert_close(bn(x), (x - mean) / torch.sqrt(var_biased + 1e-5))


def test_running_var_stores_the_unbiased_variance_with_momentum_on_the_new_value():
    x = random_batches((6, 3), count=1)[0]
    bn = BatchNorm1d(3, momentum=0.1)
    bn(x)
    torch.testing.assert_close(bn.running_mean, 0.9 * torch.zeros(3) + 0.1 * x.mean(dim=0))
    torch.testing.assert_close(bn.running_var, 0.9 * torch.ones(3) + 0.1 * x.var(dim=0, correction=1))


def test_momentum_none_keeps_the_plain_average_of_the_batch_statistics():
    batches = random_batches((10, 4), count=4)
    bn = BatchNorm1d(4, momentum=None)
    for x in batches:
        bn(x)
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(dim=0) for x in batches]).mean(dim=0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(dim=0) for x in batches]).mean(dim=0))
    assert bn.num_batches_tracked.item() == 4


def test_no_grad_in_train_mode_still_updates_the_running_statistics_like_torch():
    ours, theirs = pair(3)
    x = random_batches((8, 3), count=1)[0]
    with torch.no_grad():
        ours(x), theirs(x)
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 1
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)


def test_running_statistics_do_not_enter_the_autograd_graph():
    bn = BatchNorm1d(3)
    x = torch.randn(8, 3, requires_grad=True)
    bn(x)
    assert not bn.running_mean.requires_grad and not bn.running_var.requires_grad


def test_reset_parameters_restores_the_start_values():
    bn = BatchNorm1d(3)
    bn(torch.randn(8, 3) + 4)
    with torch.no_grad():
        bn.weight.add_(1.0), bn.bias.add_(1.0)
    bn.reset_parameters()
    fresh = BatchNorm1d(3)
    for name, value in fresh.state_dict().items():
        assert torch.equal(bn.state_dict()[name], value), name


def test_one_value_per_channel_in_train_mode_raises_the_same_error_as_torch():
    ours, theirs = pair(5)
    x = torch.randn(1, 5)
    with pytest.raises(ValueError) as torch_error:
        theirs(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as our_error:
        ours(x)
    assert str(our_error.value) == str(torch_error.value)
    assert ours.num_batches_tracked.item() == 0  # nothing was updated


def test_one_example_with_a_length_dimension_is_enough_in_train_mode():
    ours, theirs = pair(5)
    differences = max_differences(ours, theirs, random_batches((1, 5, 4), count=2))
    assert all(d < TOLERANCE for d in differences.values()), differences


@pytest.mark.parametrize("shape", [(5,), (4, 5, 2, 2), (4, 6), (4, 6, 3)])
def test_wrong_input_shape_raises_value_error_naming_the_expected_shape(shape):
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 5\) or \(N, 5, L\)") as error:
        BatchNorm1d(5)(torch.randn(shape))
    assert str(tuple(shape)) in str(error.value)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"num_features": 0}, "num_features"),
        ({"num_features": 2.0}, "num_features"),
        ({"num_features": True}, "num_features"),
        ({"num_features": 3, "eps": 0}, "eps"),
        ({"num_features": 3, "momentum": 1.5}, "momentum"),
        ({"num_features": 3, "momentum": -0.1}, "momentum"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        BatchNorm1d(**kwargs)


def test_repr_shows_the_configuration():
    assert repr(BatchNorm1d(7, momentum=None)) == "BatchNorm1d(7, eps=1e-05, momentum=None)"


def test_channel_dims_are_every_dimension_but_the_channels():
    assert channel_dims(2) == (0,)
    assert channel_dims(3) == (0, 2)
    assert channel_dims(4) == (0, 2, 3)
    with pytest.raises(ValueError, match="ndim"):
        channel_dims(1)


def test_channel_dims_give_batchnorm2d_its_per_channel_statistics():
    x = random_batches((4, 3, 5, 5), count=1)[0]
    bn2d = nn.BatchNorm2d(3, momentum=1.0)  # momentum 1: the running mean is the batch mean
    bn2d(x)
    torch.testing.assert_close(bn2d.running_mean, x.mean(dim=channel_dims(4)))


def test_can_replace_torch_batchnorm_inside_the_course_mlp():
    from bnlab.models import MLPConfig, build_mlp

    torch.manual_seed(0)
    theirs = build_mlp(MLPConfig(hidden=(8, 6), in_features=12, num_classes=3))
    ours = copy.deepcopy(theirs)
    for index, layer in enumerate(ours):
        if isinstance(layer, nn.BatchNorm1d):
            ours[index] = BatchNorm1d(layer.num_features)
    ours.load_state_dict(theirs.state_dict())
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    assert_train_alike(ours, theirs, x, y)


class UnbiasedNormalisation(BatchNorm1d):
    """A typical mistake: normalising with the unbiased variance."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims = channel_dims(x.dim())
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        mean, var = x.mean(dim=dims), x.var(dim=dims, correction=1)
        self.update_running_stats(mean.detach(), var.detach())
        return self.weight.view(shape) * (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps) + self.bias.view(shape)


class MomentumOnTheOldValue(BatchNorm1d):
    """Another typical mistake: ``running = momentum * running + (1 - momentum) * batch``."""

    @torch.no_grad()
    def update_running_stats(self, batch_mean, batch_var_unbiased):
        self.num_batches_tracked += 1
        self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * batch_mean)
        self.running_var.mul_(self.momentum).add_((1 - self.momentum) * batch_var_unbiased)


def test_max_differences_catches_normalising_with_the_unbiased_variance():
    differences = max_differences(UnbiasedNormalisation(5), nn.BatchNorm1d(5), random_batches((4, 5)))
    assert differences["output"] > 1e-2
    assert differences["running_var"] < TOLERANCE  # the stored variance is right; only the output is wrong


def test_max_differences_catches_momentum_on_the_wrong_term():
    differences = max_differences(MomentumOnTheOldValue(5), nn.BatchNorm1d(5), random_batches((16, 5)))
    assert differences["running_mean"] > 0.5 and differences["running_var"] > 0.5
    assert differences["output"] < TOLERANCE  # train-mode outputs do not use the running statistics


def test_max_differences_needs_batches_and_modules_in_the_same_mode():
    with pytest.raises(ValueError, match="batches"):
        max_differences(BatchNorm1d(3), nn.BatchNorm1d(3), [])
    with pytest.raises(ValueError, match="same mode"):
        max_differences(BatchNorm1d(3), nn.BatchNorm1d(3).eval(), random_batches((4, 3)))



# --- BatchNorm2d: (N, C, H, W) -----------------------------------------------------------------------------------

from bnlab.batchnorm import BatchNorm, BatchNorm2d  # noqa: E402


def pair2d(num_features, **kwargs):
    return BatchNorm2d(num_features, **kwargs), nn.BatchNorm2d(num_features, **kwargs)


@pytest.mark.parametrize("shape", [(8, 4, 5, 5), (2, 4, 3, 7), (1, 4, 6, 6)], ids=["N,C,H,W", "two images", "one image"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm2d_matches_torch_in_train_mode_outputs_gradients_and_buffers(shape, momentum):
    ours, theirs = pair2d(4, momentum=momentum)
    differences = max_differences(ours, theirs, random_batches(shape))
    assert all(d < TOLERANCE for d in differences.values()), differences
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 5


def test_batchnorm2d_matches_torch_in_eval_mode_after_training():
    ours, theirs = pair2d(3)
    max_differences(ours, theirs, random_batches((16, 3, 4, 4), seed=1))
    ours.eval(), theirs.eval()
    differences = max_differences(ours, theirs, random_batches((5, 3, 4, 4), seed=2))
    assert all(d < TOLERANCE for d in differences.values()), differences


def test_batchnorm2d_takes_one_mean_per_channel_over_the_batch_and_every_position():
    x = random_batches((6, 3, 4, 5), count=1)[0]
    bn = BatchNorm2d(3, momentum=1.0)
    y = bn(x)
    mean = x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, mean)
    n = 6 * 4 * 5
    torch.testing.assert_close(bn.running_var, x.var(dim=(0, 2, 3), correction=0) * n / (n - 1))
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-3, rtol=0)
    # not per position: normalising each (h, w) over the batch alone gives something else
    per_position = (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0, correction=0) + bn.eps)
    assert (y - per_position).abs().max() > 0.1


def test_batchnorm2d_accepts_channels_last_inputs():
    ours, theirs = pair2d(4)
    x = random_batches((4, 4, 5, 5), count=1)[0].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_batchnorm2d_state_dict_is_interchangeable_with_torch_batchnorm2d():
    theirs = nn.BatchNorm2d(3)
    for x in random_batches((8, 3, 4, 4), count=3):
        theirs(x)
    ours = BatchNorm2d(3)
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (4, 5, 2, 2), (4, 3, 2, 2, 2)])
def test_batchnorm2d_wrong_input_shape_raises_value_error_naming_the_expected_shape(shape):
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)") as error:
        BatchNorm2d(3)(torch.randn(shape))
    assert str(tuple(shape)) in str(error.value)


def test_batchnorm1d_and_2d_are_one_implementation():
    assert issubclass(BatchNorm1d, BatchNorm) and issubclass(BatchNorm2d, BatchNorm)
    assert BatchNorm2d.forward is BatchNorm1d.forward is BatchNorm.forward
    assert repr(BatchNorm2d(5)) == "BatchNorm2d(5, eps=1e-05, momentum=0.1)"
    general = BatchNorm(3, momentum=None)
    x = random_batches((2, 3, 2, 2, 2), count=1)[0]  # any number of dimensions from 2 on
    torch.testing.assert_close(general(x), nn.BatchNorm3d(3, momentum=None)(x), rtol=1e-5, atol=1e-5)


def test_batchnorm2d_can_replace_torch_batchnorm_inside_the_course_cnn():
    from bnlab.models import CNNConfig, build_cnn

    torch.manual_seed(0)
    theirs = build_cnn(CNNConfig(channels=(4, 6)))
    ours = copy.deepcopy(theirs)
    for index, layer in enumerate(ours):
        if isinstance(layer, nn.BatchNorm2d):
            ours[index] = BatchNorm2d(layer.num_features)
    ours.load_state_dict(theirs.state_dict())
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    assert_train_alike(ours, theirs, x, y)


class StatisticsOverTheBatchOnly(BatchNorm2d):
    """A typical mistake in 2d: statistics over N alone (one per channel *and position*), as BatchNorm1d on (N, C)."""

    def forward(self, x):
        mean, var = x.mean(dim=0, keepdim=True), x.var(dim=0, correction=0, keepdim=True)
        shape = (1, self.num_features, 1, 1)
        return self.weight.view(shape) * (x - mean) / torch.sqrt(var + self.eps) + self.bias.view(shape)


def test_max_differences_catches_batchnorm2d_statistics_over_the_wrong_dimensions():
    differences = max_differences(StatisticsOverTheBatchOnly(3), nn.BatchNorm2d(3), random_batches((8, 3, 4, 4)))
    assert differences["output"] > 0.1


# --- what reaches the activations during training ----------------------------------------------------------------


def mlp(placement="before", seed=0):
    torch.manual_seed(seed)
    return build_mlp(MLPConfig(placement=placement))


def test_preactivations_are_batchnorms_train_mode_output_before_the_relu():
    model, x = mlp(), torch.rand(64, 1, 28, 28)
    expected = model[2](model[1](model[0](x)))  # Flatten -> Linear -> BatchNorm1d, in train mode
    torch.testing.assert_close(preactivations(model.eval(), x), expected.detach())


def test_preactivations_without_batchnorm_are_the_linear_layers_output_and_layer_picks_the_relu():
    model, x = mlp("none"), torch.rand(64, 1, 28, 28)
    first = preactivations(model, x)
    torch.testing.assert_close(first, model[1](model[0](x)).detach())
    second = preactivations(model, x, layer=1)
    assert first.shape == (64, 75) and second.shape == (64, 45)
    torch.testing.assert_close(second, model[3](model[2](first)).detach())


def test_preactivations_leave_buffers_modes_and_hooks_as_they_were():
    model = mlp().eval()
    model[2].train()  # a mixed-mode model comes back mixed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    preactivations(model, torch.rand(32, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model] == [False, False, True, False, False, False, False, False]
    assert all(not m._forward_pre_hooks for m in model)


def test_preactivations_reject_a_missing_layer_with_a_clear_error():
    with pytest.raises(ValueError, match="layer must be an integer from 0 to 1"):
        preactivations(mlp(), torch.rand(8, 1, 28, 28), layer=2)
    with pytest.raises(ValueError, match="has no nn.ReLU"):
        preactivations(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), torch.rand(8, 1, 28, 28))


def test_preactivations_during_training_record_the_untrained_model_then_training_moves_them(small_data):
    config, plain = TrainConfig(batch_size=100, seed=5), MLPConfig(placement="none")
    recorded = preactivations_during_training(plain, small_data, config, epochs=(0, 1, 3), probe_size=200)
    assert list(recorded) == [0, 1, 3] and all(v.shape == (200, 75) for v in recorded.values())
    untrained = mlp("none", seed=5)
    torch.testing.assert_close(recorded[0], preactivations(untrained, small_data.val.images[:200]))
    assert not torch.allclose(recorded[0], recorded[1]) and not torch.allclose(recorded[1], recorded[3])
    again = preactivations_during_training(plain, small_data, config, epochs=(0, 1, 3), probe_size=200)
    assert all(torch.equal(recorded[e], again[e]) for e in recorded)  # the same seed, the same bits on the CPU


def test_preactivations_during_training_with_batchnorm_stay_normalised_per_unit(small_data):
    config = TrainConfig(batch_size=100)
    recorded = preactivations_during_training(MLPConfig(), small_data, config, epochs=(0, 2), probe_size=500)
    for values in recorded.values():  # gamma and beta barely move in two short epochs
        assert values.mean(dim=0).abs().max() < 0.1
        assert (values.std(dim=0, correction=0) - 1).abs().max() < 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": (0, 2, 1)}, "epochs must be increasing whole numbers"),
        ({"epochs": (-1, 1)}, "epochs must be increasing whole numbers"),
        ({"epochs": ()}, "epochs must be increasing whole numbers"),
        ({"epochs": (0, True)}, "epochs must be increasing whole numbers"),
        ({"probe_size": 1}, "probe_size must be an integer from 2"),
        ({"config": TrainConfig(momentum=0.9)}, "config.momentum must be 0"),
    ],
)
def test_preactivations_during_training_reject_bad_arguments_naming_them(small_data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        preactivations_during_training(MLPConfig(), small_data, **kwargs)

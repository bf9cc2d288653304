import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from bnlab import running_stats
from bnlab.data import BatchLoader, Split
from bnlab.models import build_mlp


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4), nn.BatchNorm1d(4))


def known_data(n: int = 300, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(n, 6, generator=generator)


# --- the update rule ---------------------------------------------------------------------------------------------


def test_start_weight_is_one_minus_momentum_to_the_power_of_the_steps():
    assert running_stats.start_weight(0.1, 0) == 1.0
    assert running_stats.start_weight(0.1, 10) == pytest.approx(0.9**10)
    assert running_stats.start_weight(0.01, 50) == pytest.approx(0.99**50)


@pytest.mark.parametrize("momentum", [0.5, 0.1, 0.01])
def test_steps_to_forget_is_the_first_step_at_or_below_the_weight(momentum):
    k = running_stats.steps_to_forget(momentum, weight=0.01)
    assert (1 - momentum) ** k <= 0.01 < (1 - momentum) ** (k - 1)


def test_steps_to_forget_of_momentum_one_is_a_single_step():
    assert running_stats.steps_to_forget(1.0) == 1


@pytest.mark.parametrize("momentum", [0.0, -0.1, 1.5, "0.1", True])
def test_invalid_momentum_is_rejected_naming_the_argument(momentum):
    with pytest.raises(ValueError, match="momentum"):
        running_stats.start_weight(momentum, 3)


def test_momentum_none_is_allowed_where_the_cumulative_average_makes_sense():
    running_stats.check_momentum(None)
    with pytest.raises(ValueError, match="momentum"):
        running_stats.check_momentum(None, allow_none=False)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0, None])
def test_trajectory_matches_a_real_batchnorm_layer_step_by_step(momentum):
    bn = nn.BatchNorm1d(1, momentum=momentum)
    real = [bn.running_mean.item()]
    for batch in running_stats.synthetic_batches(batch_size=8, steps=40, seed=3):
        bn(batch)
        real.append(bn.running_mean.item())
    simulated = running_stats.running_mean_trajectory(momentum=momentum, batch_size=8, steps=40, seed=3)
    assert simulated.shape == (41,)
    assert torch.allclose(torch.tensor(real, dtype=torch.float64), simulated, atol=1e-5)


def test_trajectory_follows_its_expected_value_with_large_batches():
    path = running_stats.running_mean_trajectory(momentum=0.05, batch_size=4096, steps=60, true_mean=3.0)
    expected = running_stats.expected_running_mean(0.05, 60, true_mean=3.0)
    assert torch.allclose(path, expected, atol=0.05)
    assert path[10] < 0.5 * 3.0  # 0.95^10 = 0.6 of the start value 0 is still there


def test_expected_running_mean_of_the_cumulative_average_is_the_true_mean_after_one_step():
    expected = running_stats.expected_running_mean(None, 5, true_mean=2.0)
    assert expected.tolist() == [0.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def test_ema_noise_matches_the_spread_of_a_long_trajectory():
    path = running_stats.running_mean_trajectory(momentum=0.2, batch_size=16, steps=4000, true_std=1.5, seed=1)
    measured = path[100:].std().item()
    assert measured == pytest.approx(running_stats.ema_noise(0.2, 16, true_std=1.5), rel=0.15)


@pytest.mark.parametrize("kwargs", [{"batch_size": 1}, {"batch_size": 0}, {"steps": 0}, {"steps": 2.5}])
def test_synthetic_batches_reject_sizes_batchnorm_cannot_use(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        running_stats.synthetic_batches(**kwargs)


# --- BatchNorm layers in a model ---------------------------------------------------------------------------------


def test_tracked_layers_lists_only_layers_with_running_statistics():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3, track_running_stats=False), nn.BatchNorm2d(2))
    assert [name for name, _ in running_stats.tracked_layers(model)] == ["0", "2"]


def test_set_momentum_sets_every_layer_and_rejects_a_model_without_batchnorm():
    model = running_stats.set_momentum(mlp(), 0.01)
    assert [layer.momentum for _, layer in running_stats.batchnorm_layers(model)] == [0.01, 0.01]
    with pytest.raises(ValueError, match="no BatchNorm"):
        running_stats.set_momentum(nn.Linear(3, 3), 0.1)


# --- precise BN --------------------------------------------------------------------------------------------------


def test_precise_bn_of_a_single_layer_is_the_population_mean_and_variance():
    x = known_data()
    model = nn.Sequential(nn.BatchNorm1d(6))
    assert running_stats.precise_bn(model, x, batch_size=64) == 1
    bn = model[0]
    by_hand_mean = x.double().sum(dim=0) / len(x)
    by_hand_var = ((x.double() - by_hand_mean) ** 2).sum(dim=0) / len(x)  # divide by N: the population variance
    assert torch.allclose(bn.running_mean.double(), by_hand_mean, atol=1e-5)
    assert torch.allclose(bn.running_var.double(), by_hand_var, rtol=1e-5)


def test_precise_bn_of_batchnorm2d_pools_every_position_of_each_channel():
    generator = torch.Generator().manual_seed(1)
    x = 1.0 + 0.5 * torch.randn(40, 3, 5, 5, generator=generator)
    model = nn.Sequential(nn.BatchNorm2d(3))
    running_stats.precise_bn(model, x, batch_size=7)
    assert torch.allclose(model[0].running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[0].running_var, x.var(dim=(0, 2, 3), correction=0), rtol=1e-4)


def test_precise_bn_gives_each_layer_the_statistics_of_its_eval_mode_input():
    x = known_data()
    model = mlp()
    running_stats.precise_bn(model, x)
    model.eval()
    with torch.no_grad():
        first_input = model[0](x)
        second_input = model[3](model[2](model[1](first_input)))
    for layer, inputs in ((model[1], first_input), (model[4], second_input)):
        assert torch.allclose(layer.running_mean, inputs.mean(dim=0), atol=1e-5)
        assert torch.allclose(layer.running_var, inputs.var(dim=0, correction=0), rtol=1e-4)


def test_precise_bn_does_not_depend_on_the_batch_size():
    x = known_data()
    a, b = mlp(), mlp()
    running_stats.precise_bn(a, x, batch_size=7)
    running_stats.precise_bn(b, x, batch_size=300)
    for (_, la), (_, lb) in zip(running_stats.batchnorm_layers(a), running_stats.batchnorm_layers(b)):
        assert torch.allclose(la.running_mean, lb.running_mean, atol=1e-6)
        assert torch.allclose(la.running_var, lb.running_var, rtol=1e-5)


def test_precise_bn_agrees_with_update_bn_within_tolerance():
    x = known_data(n=1024)
    ours, theirs = mlp(), mlp()
    running_stats.precise_bn(ours, x)
    update_bn([(batch,) for batch in x.split(128)], theirs)
    for (_, a), (_, b) in zip(running_stats.batchnorm_layers(ours), running_stats.batchnorm_layers(theirs)):
        assert torch.allclose(a.running_mean, b.running_mean, atol=0.05 * a.running_var.sqrt().max().item())
        assert torch.allclose(a.running_var, b.running_var, rtol=0.05)
    # the first layer's input is the same in both; update_bn averages the per-batch statistics
    first = torch.stack([ours[0](batch) for batch in x.split(128)]).detach()
    bn = theirs[1]
    assert torch.allclose(bn.running_mean, first.mean(dim=1).mean(dim=0), atol=1e-5)
    assert torch.allclose(bn.running_var, first.var(dim=1, correction=1).mean(dim=0), rtol=1e-4)


def test_precise_bn_restores_every_modules_mode():
    model = mlp()
    model.train()
    model[4].eval()  # a frozen layer stays frozen
    running_stats.precise_bn(model, known_data())
    assert [m.training for m in model.modules()] == [True, True, True, True, True, False]
    model.eval()
    running_stats.precise_bn(model, known_data())
    assert not any(m.training for m in model.modules())


def test_precise_bn_does_not_change_parameters_momentum_or_the_batch_count():
    model = mlp()
    model(known_data(n=16))  # one train-mode step: num_batches_tracked = 1
    before = copy.deepcopy(model.state_dict())
    running_stats.precise_bn(model, known_data())
    after = model.state_dict()
    for name, value in before.items():
        if name.endswith(("running_mean", "running_var")):
            assert not torch.equal(value, after[name])
        else:
            assert torch.equal(value, after[name]), name
    assert all(layer.momentum == 0.1 for _, layer in running_stats.batchnorm_layers(model))


def test_precise_bn_accepts_a_split():
    x = known_data(n=50)
    model = nn.Sequential(nn.BatchNorm1d(6))
    running_stats.precise_bn(model, Split(x, torch.zeros(50, dtype=torch.long)))
    assert torch.allclose(model[0].running_mean, x.mean(dim=0), atol=1e-5)


def test_with_precise_bn_leaves_the_original_alone():
    model = mlp()
    twin = running_stats.with_precise_bn(model, known_data())
    assert torch.equal(model[1].running_mean, torch.zeros(5))
    assert not torch.equal(twin[1].running_mean, torch.zeros(5))


def test_precise_bn_skips_layers_without_running_statistics_after_the_last_one_with_them():
    model = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 3), nn.BatchNorm1d(3, track_running_stats=False))
    assert running_stats.precise_bn(model, known_data()) == 1
    assert model[2].running_mean is None
    torch.testing.assert_close(model[0].running_mean, known_data().double().mean(0).float())


def test_precise_bn_refuses_a_layer_without_running_statistics_before_one_with_them():
    model = nn.Sequential(nn.BatchNorm1d(6, track_running_stats=False), nn.Linear(6, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=r"'0' has no running statistics .* runs before '2'.*depend on batch_size"):
        running_stats.precise_bn(model, known_data(), batch_size=7)
    assert torch.equal(model[2].running_mean, torch.zeros(3))  # nothing changed
    assert model.training and all(m.training for m in model)


@pytest.mark.parametrize("batch_size", [1, 7, 299])  # 300 rows: batches of 1, or a last batch of one row
def test_precise_bn_takes_batches_of_a_single_row(batch_size):
    model = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 3), nn.BatchNorm1d(3), nn.ReLU(),
                          nn.BatchNorm1d(3, track_running_stats=False))
    reference = copy.deepcopy(model)
    running_stats.precise_bn(model, known_data(), batch_size=batch_size)
    running_stats.precise_bn(reference, known_data(), batch_size=300)
    for a, b in zip(model.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b)


def test_precise_bn_rejects_a_model_without_batchnorm():
    with pytest.raises(ValueError, match="no BatchNorm"):
        running_stats.precise_bn(nn.Sequential(nn.Linear(6, 2)), known_data())
    with pytest.raises(ValueError, match="no BatchNorm"):
        running_stats.precise_bn(nn.Sequential(nn.BatchNorm1d(6, track_running_stats=False)), known_data())


@pytest.mark.parametrize("split, batch_size, match", [
    ("images", 10, "split"),
    (None, 10, "split"),
    (torch.ones(1, 6), 10, "split"),
    (torch.ones(8, 6), 0, "batch_size"),
])
def test_precise_bn_rejects_invalid_input(split, batch_size, match):
    with pytest.raises(ValueError, match=match):
        running_stats.precise_bn(mlp(), split, batch_size=batch_size)


def test_stats_gap_is_the_worst_variance_ratio():
    a, b = mlp(), mlp()
    assert running_stats.stats_gap(a, b) == pytest.approx(1.0)
    a[4].running_var[2] = 4.0
    b[1].running_var[0] = 0.5
    assert running_stats.stats_gap(a, b) == pytest.approx(4.0)


# --- shadow statistics and early training ------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_shadow_stats_with_the_layers_own_momentum_reproduce_its_buffers(momentum):
    model = running_stats.set_momentum(mlp(), momentum)
    shadow = running_stats.ShadowStats(model, momentum)
    for batch in known_data(n=160).split(32):
        model(batch)
    model.eval()
    model(known_data(n=8))  # eval mode: neither the buffers nor the shadow change
    twin = shadow.apply(model)
    for (_, a), (_, b) in zip(running_stats.batchnorm_layers(model), running_stats.batchnorm_layers(twin)):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-5)
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-4)
    shadow.remove()
    model.train()(known_data(n=8))
    assert not torch.allclose(model[1].running_mean, twin[1].running_mean)


def test_shadow_stats_with_another_momentum_equal_a_twin_trained_with_it():
    model = mlp()
    twin = running_stats.set_momentum(copy.deepcopy(model), 0.02)
    shadow = running_stats.ShadowStats(model, 0.02)
    for batch in known_data(n=320).split(32):
        model(batch)
        twin(batch)
    applied = shadow.apply(model)
    assert applied[1].momentum == 0.02
    assert torch.allclose(applied[1].running_var, twin[1].running_var, rtol=1e-4)
    assert not torch.allclose(applied[1].running_var, model[1].running_var, rtol=1e-2)


def test_early_accuracy_reports_every_momentum_and_the_precise_statistics(small_data):
    result = running_stats.early_accuracy(small_data, momenta=(0.1, 0.01), steps=(10, 2, 2), seed=1, device="cpu")
    assert result.steps == (2, 10) and result.dataset == small_data.name
    assert list(result.accuracy) == ["momentum 0.1", "momentum 0.01", "precise"]
    assert all(len(values) == 2 and all(0 <= v <= 100 for v in values) for values in result.accuracy.values())
    # after 10 steps with momentum 0.01, 0.99^10 = 90 % of the start variance 1 is left: far from the truth
    assert result.gap["momentum 0.01"][1] > result.gap["momentum 0.1"][1] > 1.5


def test_early_accuracy_rejects_empty_or_invalid_arguments(small_data):
    with pytest.raises(ValueError, match="momenta"):
        running_stats.early_accuracy(small_data, momenta=())
    with pytest.raises(ValueError, match="momentum"):
        running_stats.early_accuracy(small_data, momenta=(0.0,))
    with pytest.raises(ValueError, match="steps"):
        running_stats.early_accuracy(small_data, steps=(0, 5))

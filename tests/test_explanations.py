import math

import pytest
import torch
from torch import nn

from bnlab import explanations as ex
from bnlab.models import MLPConfig
from bnlab.training import TrainConfig, train_model

from model_state import same_state, state


# --- sizes and the plain loop --------------------------------------------------------------------------------------


def test_probe_points_start_at_zero_end_at_the_last_step_and_grow():
    points = ex.probe_points(600, 8)
    assert points[0] == 0 and points[-1] == 599 and len(points) == 8
    assert all(a < b for a, b in zip(points, points[1:]))
    assert ex.probe_points(1, 5) == [0]


def test_sizes_reject_a_non_positive_field_by_name():
    with pytest.raises(ValueError, match="Sizes.steps"):
        ex.Sizes(steps=0, probe_size=1, sweep_epochs=1, probes=1)
    with pytest.raises(ValueError, match="profile_name"):
        ex.sizes_for("huge")


def test_build_variant_is_seeded_and_the_noisy_one_has_noise_after_every_batchnorm():
    a, b = ex.build_variant("BatchNorm", 3), ex.build_variant("BatchNorm", 3)
    assert same_state(state(a), state(b))
    noisy = ex.build_variant("noisy BatchNorm", 3)
    kinds = [type(m).__name__ for m in noisy]
    assert [kinds[i + 1] for i, k in enumerate(kinds) if k == "BatchNorm1d"] == ["ShiftNoise", "ShiftNoise"]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in ex.build_variant("without BatchNorm", 3))
    with pytest.raises(ValueError, match="label"):
        ex.build_variant("LayerNorm", 0)


# --- 1. covariate shift --------------------------------------------------------------------------------------------


def test_shift_noise_scales_and_shifts_each_feature_within_its_ranges_anew_every_step():
    noise = ex.ShiftNoise(64, shift=0.5, scale=(0.25, 1.75)).train()
    x = torch.stack([torch.zeros(64), torch.ones(64)])  # row 0 gives b, row 1 - row 0 gives a
    torch.manual_seed(0)
    draws = [noise(x) for _ in range(200)]
    b = torch.stack([d[0] for d in draws])
    a = torch.stack([d[1] - d[0] for d in draws])
    assert b.abs().max() <= 0.5 and b.std() > 0.2  # non-zero shifts, within range
    assert a.min() >= 0.25 - 1e-6 and a.max() <= 1.75 + 1e-6
    assert not torch.equal(draws[0], draws[1])  # a new distribution at every step
    assert abs(a.mean().item() - 1) < 0.02 and abs(b.mean().item()) < 0.01  # mean 1 and 0: eval mode is the mean
    torch.manual_seed(0)
    assert torch.equal(noise(x), draws[0])  # seeded by PyTorch's generator
    assert torch.equal(noise.eval()(x), x)


def test_shift_noise_rejects_bad_ranges_by_name():
    with pytest.raises(ValueError, match="scale"):
        ex.ShiftNoise(4, scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="shift"):
        ex.ShiftNoise(4, shift=-1.0)


def test_input_moments_see_batchnorm_output_with_mean_beta_and_std_gamma_and_change_nothing(split):
    model = ex.build_variant("noisy BatchNorm", 0)
    probe = split.images[:256]
    model[2].eval()  # a mixed set of flags, to be kept as it is
    before, flags, rng = state(model), [m.training for m in model.modules()], torch.get_rng_state()
    moments = ex.input_moments(model, probe)
    assert same_state(before, state(model)) and torch.equal(rng, torch.get_rng_state())
    assert [m.training for m in model.modules()] == flags
    assert set(moments) == {(layer, pos) for layer in (1, 2) for pos in ex.POSITIONS}

    plain = ex.build_variant("BatchNorm", 0)
    mean, std = ex.input_moments(plain, probe)[1, "ReLU input"]
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)


def test_distribution_shift_is_the_gaussian_wasserstein_distance_in_old_standard_deviations():
    before = (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))
    after = (torch.tensor([3.0, 1.0]), torch.tensor([5.0, 2.0]))
    assert ex.distribution_shift(before, after) == pytest.approx((5.0 + 0.0) / 2)
    assert ex.distribution_shift(before, before) == 0.0


def test_shift_run_records_every_step_layer_and_position_and_repeats_bit_for_bit(split):
    probe = split.images[:128]
    runs = [ex.shift_run(ex.build_variant("BatchNorm", 1), split, probe, steps=5, seed=1) for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0]) == 5 * 2 * 2 and {r["step"] for r in runs[0]} == set(range(1, 6))
    relu = [r["shift"] for r in runs[0] if r["position"] == "ReLU input"]
    linear = [r["shift"] for r in runs[0] if r["position"] == "Linear output"]
    assert max(relu) < min(linear)  # BatchNorm pins the moments the ReLU sees


def test_shift_run_of_the_noisy_network_moves_the_relu_input_more_than_without_batchnorm(split):
    probe = split.images[:128]
    shifts = {}
    for label in ("without BatchNorm", "noisy BatchNorm"):
        records = ex.shift_run(ex.build_variant(label, 2), split, probe, steps=5, seed=2)
        shifts[label] = sum(r["shift"] for r in records if r["position"] == "ReLU input")
    assert shifts["noisy BatchNorm"] > 5 * shifts["without BatchNorm"]


# --- 2. landscape --------------------------------------------------------------------------------------------------


def test_along_gradient_on_a_quadratic_gives_what_theory_says():
    # L(w) = w^T A w / 2 with A = diag(4, 1); from w on A's first eigenvector, g = 4 w, so
    # L(w - eta g) = 2 (1 - 4 eta)^2 |w|^2, |grad(w - eta g) - g| = 4 eta |g| and beta = 4.
    a = torch.tensor([4.0, 1.0], dtype=torch.float64)
    w = torch.tensor([0.5, 0.0], dtype=torch.float64, requires_grad=True)
    start = w.detach().clone()
    etas = (0.05, 0.1, 0.25, 0.4)
    probe = ex.along_gradient(lambda: 0.5 * (a * w * w).sum(), [w], etas)
    assert torch.equal(w.detach(), start)  # restored
    assert probe.grad_norm == pytest.approx(2.0)
    assert probe.losses == pytest.approx([2 * (1 - 4 * eta) ** 2 * 0.25 for eta in etas])
    assert probe.grad_changes == pytest.approx([4 * eta * 2.0 for eta in etas])
    assert probe.beta == pytest.approx(4.0)
    assert probe.loss_range == pytest.approx(max(probe.losses) - min(probe.losses))
    # Off the eigenvectors the effective smoothness lies between the smallest and largest curvature.
    v = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    mixed = ex.along_gradient(lambda: 0.5 * (a * v * v).sum(), [v], etas)
    assert 1.0 < mixed.beta < 4.0


def test_along_gradient_rejects_non_positive_step_sizes():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="step_sizes"):
        ex.along_gradient(lambda: (w * w).sum(), [w], (0.1, 0.0))


def test_probing_the_landscape_does_not_change_the_training_run(split):
    probed, plain = ex.build_variant("BatchNorm", 4), ex.build_variant("BatchNorm", 4)
    records = ex.landscape_run(probed, split, steps=6, probe_at=[0, 3], step_sizes=(0.1, 0.4), seed=4)
    ex.landscape_run(plain, split, steps=6, probe_at=[5], step_sizes=(0.1,), seed=4)
    reference = ex.build_variant("BatchNorm", 4)
    step = ex.sgd(reference, 0.1)
    for _, (xb, yb) in zip(range(6), ex.batches(split, 256, 4)):
        step(xb, yb)
    assert same_state(state(probed), state(reference)) and same_state(state(plain), state(reference))
    assert [(r["step"], r["step_size"]) for r in records] == [(0, 0.1), (0, 0.4), (3, 0.1), (3, 0.4)]
    with pytest.raises(ValueError, match="probe_at"):
        ex.landscape_run(probed, split, steps=6, probe_at=[6], step_sizes=(0.1,))


def test_landscape_summary_gives_one_row_per_probe_with_range_change_and_beta():
    records = [
        {"variant": "v", "seed": 1, "step": 0, "step_size": 0.1, "loss": 1.0, "grad_change": 0.2, "grad_norm": 2.0},
        {"variant": "v", "seed": 1, "step": 0, "step_size": 0.2, "loss": 0.7, "grad_change": 0.6, "grad_norm": 2.0},
        {"variant": "v", "seed": 1, "step": 9, "step_size": 0.1, "loss": 0.5, "grad_change": 0.1, "grad_norm": 1.0},
    ]
    rows = ex.landscape_summary(records)
    expected = {"variant": "v", "seed": 1, "step": 0, "loss_range": 0.3, "max_grad_change": 0.6, "beta": 1.5}
    assert rows[0] == pytest.approx(expected)
    assert rows[1]["loss_range"] == 0.0 and rows[1]["beta"] == pytest.approx(1.0)


# --- 3. learning rates ---------------------------------------------------------------------------------------------


def test_diverged_means_not_finite_or_no_lower_than_at_the_start():
    assert ex.diverged(float("nan"), 2.3) and ex.diverged(float("inf"), 2.3) and ex.diverged(2.4, 2.3)
    assert not ex.diverged(2.29, 2.3)


def test_start_loss_is_the_loss_of_the_model_training_starts_from(small_data):
    loss = ex.start_loss(MLPConfig(), small_data, seed=3, batch_size=100)
    assert 2.0 < loss < 2.8  # about ln 10: an untrained network guesses
    # An epoch with a vanishing learning rate measures the same model's loss over the same images (in another order).
    config = TrainConfig(epochs=1, batch_size=100, lr=1e-9, seed=3)
    _, history = train_model(MLPConfig(), small_data, config, progress=False)
    assert history.final.loss == pytest.approx(loss, rel=1e-3)
    assert ex.start_loss(MLPConfig(), small_data, seed=4, batch_size=100) != loss


def test_lr_sweep_records_a_diverging_run_instead_of_raising_and_a_slow_one_as_not_diverged(small_data, tmp_path):
    records = ex.lr_sweep(
        {"without BatchNorm": MLPConfig(placement="none")}, (1e-4, 0.1, 1e4), TrainConfig(epochs=1, batch_size=100),
        small_data, (1, 2), cache=tmp_path,
    )
    assert [(r["lr"], r["seed"]) for r in records] == [(1e-4, 1), (1e-4, 2), (0.1, 1), (0.1, 2), (1e4, 1), (1e4, 2)]
    assert all(r["diverged"] for r in records if r["lr"] == 1e4)
    assert not any(r["diverged"] for r in records if r["lr"] < 1)  # 1e-4 learns slowly, but it does not diverge
    assert all(0 <= r["test_acc"] <= 100 and r["dataset"] == small_data.name for r in records)
    assert all(len(r["epoch_loss"]) == len(r["epoch_val_acc"]) == 1 for r in records)  # one epoch: its curves
    assert all(r["epoch_loss"][-1] == r["final_loss"] for r in records if math.isfinite(r["final_loss"]))
    with pytest.raises(ValueError, match="lrs"):
        ex.lr_sweep({"x": MLPConfig()}, (0.1, -1.0), TrainConfig(epochs=1), small_data, (1,), cache=tmp_path)

"""bnlab.convnets: statistics axes, per-channel statistics, the batch-size sweep, fine-tuning, inference timings."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from bnlab import convnets
from bnlab.convnets import AXES, SweepRun, scaled_lr, statistic_groups
from bnlab.data import Dataset, Split
from bnlab.models import NORMS, CNNConfig, build_cnn
from bnlab.training import TrainConfig

TINY = CNNConfig(channels=(2, 4))


def normalise_by_groups(x: torch.Tensor, ids: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise every (example, channel) slice with the mean and variance of all slices sharing its id."""
    out = torch.empty_like(x)
    for group in ids.unique():
        mask = ids == group
        values = x[mask]  # (slices, H, W)
        out[mask] = (values - values.mean()) / torch.sqrt(values.var(correction=0) + eps)
    return out


@pytest.mark.parametrize(
    "kind, layer",
    [
        ("BatchNorm", nn.BatchNorm2d(4, affine=False)),
        ("LayerNorm-style", nn.GroupNorm(1, 4, affine=False)),
        ("GroupNorm", nn.GroupNorm(2, 4, affine=False)),
        ("InstanceNorm", nn.InstanceNorm2d(4)),
    ],
)
def test_statistic_groups_say_which_slices_each_pytorch_normaliser_averages_together(kind, layer):
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 + 1
    ids = statistic_groups(kind, 3, 4, groups=2)
    assert ids.shape == (3, 4)
    torch.testing.assert_close(normalise_by_groups(x, ids), layer(x), rtol=1e-4, atol=1e-4)


def test_statistic_groups_count_one_set_per_channel_example_group_or_slice():
    counts = {kind: statistic_groups(kind, 6, 8, groups=4).unique().numel() for kind in AXES}
    assert counts == {"BatchNorm": 8, "LayerNorm-style": 6, "GroupNorm": 6 * 4, "InstanceNorm": 6 * 8}


@pytest.mark.parametrize(
    "args, kwargs, message",
    [(("BatchNorm1d", 2, 2), {}, "kind must be one of"), (("GroupNorm", 2, 6), {"groups": 4}, "divisor of c=6"),
     (("BatchNorm", 0, 2), {}, "n and c must be positive")],
)
def test_statistic_groups_refuse_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        statistic_groups(*args, **kwargs)


def trained_looking_cnn(config=TINY, seed=0):
    torch.manual_seed(seed)
    model = build_cnn(config)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 28, 28))
    return model.eval()


def test_channel_statistics_are_what_train_mode_batchnorm2d_uses_and_change_nothing():
    model = trained_looking_cnn()
    before = copy.deepcopy(model.state_dict())
    images = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    stats = convnets.channel_statistics(model, images)
    assert [s.layer for s in stats] == ["1", "5"]
    assert [s.input_shape for s in stats] == [(10, 2, 28, 28), (10, 4, 14, 14)]
    assert [s.values_per_channel for s in stats] == [10 * 28 * 28, 10 * 14 * 14]
    first_input = model[0](images)
    probe = nn.BatchNorm2d(2, momentum=1.0)  # momentum 1: the running mean becomes this batch's mean
    probe(first_input)
    torch.testing.assert_close(stats[0].mean, probe.running_mean.detach())
    torch.testing.assert_close(stats[0].var, first_input.var(dim=(0, 2, 3), correction=0).detach())
    torch.testing.assert_close(stats[0].running_mean, model[1].running_mean)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_channel_statistics_need_a_batchnorm2d():
    with pytest.raises(ValueError, match="no BatchNorm2d layer"):
        convnets.channel_statistics(build_cnn(CNNConfig(channels=(2,), norm="layer")), torch.rand(2, 1, 28, 28))


def test_batch_mean_noise_follows_the_number_of_independent_values():
    model = nn.Sequential(nn.BatchNorm2d(1)).eval()
    generator = torch.Generator().manual_seed(0)
    independent = torch.randn(4096, 1, 4, 4, generator=generator)
    per_image = torch.randn(4096, 1, 1, 1, generator=generator).expand(4096, 1, 4, 4)  # one value per image
    rows = {name: convnets.batch_mean_noise(model, x, (2, 8, 32)) for name, x in (("iid", independent), ("image", per_image))}
    for row in rows["iid"]:
        assert row["values_per_channel"] == row["batch_size"] * 16
        assert row["noise"] == pytest.approx(row["independent"], rel=0.2)
    for row in rows["image"]:  # 16 copies of one value carry one value's information
        assert row["noise"] == pytest.approx(row["batch_size"] ** -0.5, rel=0.2)
    with pytest.raises(ValueError, match="every batch size"):
        convnets.batch_mean_noise(model, independent[:8], (8,))


def test_scaled_lr_is_linear_in_the_batch_size_and_capped():
    assert scaled_lr(256) == 0.1
    assert scaled_lr(2) == pytest.approx(0.1 * 2 / 256)
    assert scaled_lr(32, base_lr=0.2, base_batch=64) == pytest.approx(0.1)
    assert scaled_lr(1024) == 0.1
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            scaled_lr(bad)


def test_cached_computes_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert convnets.cached("thing", compute, tmp_path, a=1, config=TINY) == {"value": 1}
    assert convnets.cached("thing", compute, tmp_path, a=1, config=TINY) == {"value": 1}
    assert convnets.cached("thing", compute, tmp_path, a=2, config=TINY) == {"value": 2}
    assert convnets.cached("thing", compute, tmp_path, a=1, config=CNNConfig(channels=(2,))) == {"value": 3}
    (path,) = [p for p in tmp_path.iterdir() if p.read_text() == '{"value": 1}']
    path.write_text("{not json")
    assert convnets.cached("thing", compute, tmp_path, a=1, config=TINY) == {"value": 4}  # recomputed, not crashed on


def test_weights_digest_changes_with_any_weight():
    model = trained_looking_cnn()
    twin = copy.deepcopy(model)
    assert convnets.weights_digest(model) == convnets.weights_digest(twin)
    with torch.no_grad():
        twin[1].running_mean[0] += 1e-3
    assert convnets.weights_digest(model) != convnets.weights_digest(twin)


def test_train_mode_gap_compares_the_two_modes_and_leaves_the_model_alone(tmp_path):
    model = trained_looking_cnn()
    before = copy.deepcopy(model.state_dict())
    split = Split(torch.rand(12, 1, 28, 28), torch.randint(0, 10, (12,)))
    gap = convnets.train_mode_gap(model, split, 4, cache=tmp_path)
    assert set(gap) == {"eval_acc", "train_mode_acc"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training
    group_model = trained_looking_cnn(CNNConfig(channels=(2, 4), norm="group", groups=2))
    group_gap = convnets.train_mode_gap(group_model, split, 2, cache=tmp_path)
    assert group_gap["train_mode_acc"] == group_gap["eval_acc"]  # GroupNorm does not look at the batch


def test_batch_size_sweep_runs_every_norm_batch_size_and_seed_and_caches(small_data, tmp_path, monkeypatch):
    kwargs = dict(norms=("batch", "group"), batch_sizes=(8, 64), seeds=(1, 2), epochs=1, model=replace(TINY, groups=2),
                  probe_images=64, cache=tmp_path, device="cpu", workers=1, progress=False)
    runs = convnets.batch_size_sweep(small_data, **kwargs)
    assert [(r.norm, r.batch_size, r.seed) for r in runs] == [
        (n, b, s) for b in (8, 64) for n in ("batch", "group") for s in (1, 2)
    ]
    assert all(isinstance(r, SweepRun) and 0 <= r.test_acc <= 100 for r in runs)
    assert {r.lr for r in runs if r.batch_size == 8} == {scaled_lr(8)}
    assert all((r.gap is None) == (r.norm == "group") for r in runs)
    assert len({r.test_acc for r in runs if r.batch_size == 8 and r.norm == "batch"} | {0}) > 1  # seeds differ

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached sweep trained again")

    monkeypatch.setattr("bnlab.experiments.train_model", must_not_train)
    assert convnets.batch_size_sweep(small_data, **kwargs) == runs


def test_batch_size_sweep_refuses_unknown_norms_and_empty_settings(small_data):
    with pytest.raises(ValueError, match="every norm must be one of"):
        convnets.batch_size_sweep(small_data, norms=("instance",))
    with pytest.raises(ValueError, match="must each hold at least one value"):
        convnets.batch_size_sweep(small_data, seeds=())


def test_digit_tasks_split_the_data_by_label(small_data):
    old, new = convnets.digit_tasks(small_data, finetune_samples=50)
    assert old.name == f"{small_data.name}, digits 0-4" and new.name == f"{small_data.name}, digits 5-9"
    for split in (old.train, old.val, old.test):
        assert set(split.labels.tolist()) <= {0, 1, 2, 3, 4}
    assert len(new.train) == 50 and set(new.test.labels.tolist()) <= {5, 6, 7, 8, 9}
    assert len(old.test) + len(new.test) == len(small_data.test)
    odd, even = convnets.digit_tasks(small_data, old=(1, 3), new=(0, 2), finetune_samples=10)
    assert odd.name.endswith("digits (1, 3)")
    with pytest.raises(ValueError, match="must not overlap; both hold \\[3\\]"):
        convnets.digit_tasks(small_data, old=(1, 3), new=(3, 4))
    with pytest.raises(ValueError, match="finetune_samples"):
        convnets.digit_tasks(small_data, finetune_samples=1)


def test_finetuning_frozen_keeps_the_running_statistics_and_train_mode_moves_them(small_data, tmp_path):
    runs = convnets.finetune_comparison(
        small_data, pretrain=TrainConfig(epochs=1, batch_size=32, lr=0.05), seeds=(1, 2),
        finetune_config=TrainConfig(epochs=1, batch_size=4, lr=0.01), model=TINY, finetune_samples=40,
        cache=tmp_path, device="cpu", workers=1, progress=False,
    )
    assert [(r.seed, r.bn_mode) for r in runs] == [(1, "train"), (1, "frozen"), (2, "train"), (2, "frozen")]
    for train_run, frozen_run in zip(runs[0::2], runs[1::2]):
        assert frozen_run.stats_shift == 0.0 and train_run.stats_shift > 0
        assert train_run.new_acc != frozen_run.new_acc or train_run.loss != frozen_run.loss


def test_finetune_leaves_the_pretrained_model_alone_and_checks_the_mode(small_data, tmp_path):
    model = trained_looking_cnn()
    before = copy.deepcopy(model.state_dict())
    _, new = convnets.digit_tasks(small_data, finetune_samples=20)
    result = convnets.finetune(model, new, TrainConfig(epochs=1, batch_size=4, lr=0.01), bn_mode="train",
                               cache=tmp_path, device="cpu")
    assert set(result) == {"new_acc", "loss", "stats_shift", "mismatch"}
    assert result["mismatch"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        convnets.finetune(model, new, TrainConfig(), bn_mode="eval")


def test_inference_times_one_row_per_batch_size_and_model_relative_to_the_first():
    model = trained_looking_cnn()
    rows = convnets.inference_times({"a": model, "b": copy.deepcopy(model)}, torch.rand(8, 1, 28, 28),
                                    batch_sizes=(1, 8), rounds=2, min_seconds=0.001)
    assert [(r["batch_size"], r["model"]) for r in rows] == [(1, "a"), (1, "b"), (8, "a"), (8, "b")]
    assert all(r["ms"] > 0 for r in rows) and [r["ratio"] for r in rows[0::2]] == [1.0, 1.0]
    with pytest.raises(ValueError, match="every batch size must be an integer in 1..8"):
        convnets.inference_times({"a": model}, torch.rand(8, 1, 28, 28), batch_sizes=(16,))
    with pytest.raises(ValueError, match="models is empty"):
        convnets.inference_times({}, torch.rand(8, 1, 28, 28))


def test_dataset_fingerprint_is_what_the_gap_cache_sees():
    a = Split(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    b = Split(torch.ones(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    assert Dataset("probe", a, a, a).fingerprint != Dataset("probe", b, b, b).fingerprint


def test_the_ci_sizes_are_smaller_than_the_full_ones():
    full, ci = convnets.SIZES["full"], convnets.SIZES["ci"]
    assert full.train_samples is None and ci.train_samples < 10_000
    assert ci.sweep_samples * ci.sweep_epochs < full.sweep_samples * full.sweep_epochs
    assert min(full.sweep_batch_sizes) == 2 and max(full.sweep_batch_sizes) == 256
    assert all(size <= ci.sweep_samples for size in ci.sweep_batch_sizes)
    for sizes in (full, ci):
        assert sizes.reference_batch_size in sizes.sweep_batch_sizes


def test_sizes_for_each_profile_and_a_clear_error_for_others():
    assert convnets.sizes_for("full") is convnets.SIZES["full"]
    with pytest.raises(ValueError, match=r"profile_name must be one of \['ci', 'full'\]; got 'quick'"):
        convnets.sizes_for("quick")


def test_batchnorm_inputs_can_go_through_autograd_afterwards():
    model = trained_looking_cnn()
    x = convnets.batchnorm_inputs(model, torch.rand(4, 1, 28, 28))["1"]
    assert not x.is_inference() and not x.requires_grad
    nn.BatchNorm2d(2)(x.requires_grad_(True)).sum().backward()
    assert x.grad is not None


def test_every_normaliser_the_models_build_has_a_name_in_the_chapter():
    assert list(convnets.NORM_NAMES) == list(NORMS)
    assert convnets.NORM_NAMES["layer"] == "LayerNorm-style"

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bnlab import bench
from bnlab.fast import FusedEngine, FusedStep
from bnlab.models import MLPConfig, build_mlp
from bnlab.stats import Spread
from bnlab.training import Engine

TINY = bench.Sizes(
    peak_n=64, standard_steps=2, standard_warmup=1, rate_images=512, rate_epochs=1,
    epochs=1, images=512, val_images=64, batch_size=256, repeats=1, seeds=2, seed_epochs=1,
)


def test_flop_count_of_a_small_mlp_matches_a_count_by_hand():
    # 4 -> 3 -> 2: forward 2*4*3 + 2*3*2 = 36; backward: first layer only its weight gradient, 2*4*3 = 24,
    # second layer weight and input gradients, 4*3*2 = 24.
    assert bench.training_flops((4, 3, 2)) == bench.Flops(forward=36, backward=48)
    assert bench.training_flops((4, 3, 2)).total == 84
    assert bench.training_flops().total == 258_150  # the lecture's 784-75-45-10


@pytest.mark.parametrize("config", [MLPConfig(), MLPConfig(hidden=(32,), placement="none")], ids=["lecture", "one-hidden"])
def test_flop_count_matches_what_pytorch_counts_in_a_real_training_step(config):
    model = build_mlp(config)
    sizes = bench.linear_sizes(model)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with FlopCounterMode(display=False) as autograd_count:
        F.cross_entropy(model(x), y).backward()
    step = FusedStep(model, torch.optim.SGD(model.parameters(), lr=0.1))  # built first: FlopCounterMode
    step(x, y)  # installs global module hooks; the first step also checks itself against the plain step
    with FlopCounterMode(display=False) as fused_count:
        step(x, y)
    expected = 16 * bench.training_flops(sizes).total
    assert autograd_count.get_total_flops() == expected
    assert fused_count.get_total_flops() == expected


def test_linear_sizes_reads_the_chain_of_linear_layers():
    assert bench.linear_sizes(build_mlp()) == bench.LECTURE_SIZES
    with pytest.raises(ValueError, match="do not form a chain"):
        bench.linear_sizes(nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="sizes must be two or more positive integers"):
        bench.training_flops((784,))


def test_matmul_peak_is_a_positive_rate_and_checks_its_arguments():
    assert bench.matmul_peak(n=64, repeats=2) > 0
    with pytest.raises(ValueError, match="n and repeats must be positive integers"):
        bench.matmul_peak(n=0)


def test_standard_pipeline_reads_torchvision_mnist_when_the_files_are_there(subset_root):
    dataset, description = bench.standard_dataset(subset_root)
    assert type(dataset).__name__ == "MNIST" and "MNIST-10k subset" in description
    image, label = dataset[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert isinstance(label, int)


def test_standard_pipeline_stand_in_goes_through_mnists_own_getitem(tmp_path):
    dataset, description = bench.standard_dataset(tmp_path / "nothing-here", size=300)
    assert isinstance(dataset, bench.MNIST) and "random" in description and len(dataset) == 300
    data = bench.random_mnist(300)
    image, label = dataset[7]
    assert torch.equal(image, data.train.images[7]) and label == data.train.labels[7].item()  # ToTensor() round trip


def test_rates_count_the_samples_they_time():
    data = bench.random_mnist(512)
    standard = bench.standard_rate(bench.InMemoryMNIST(data, transform=bench.transforms.ToTensor()), steps=3, warmup=1)
    assert standard.samples == 3 * 256 and standard.per_second > 0
    for engine in (Engine(), FusedEngine()):
        rate = bench.loop_rate(data, engine, epochs=2)
        assert rate.samples == 2 * 2 * 256 and rate.per_second > 0


@pytest.mark.parametrize("how", ["one after another", "workers", "stacked"])
def test_seeds_rates_count_every_seeds_samples(how):
    data = bench.random_mnist(600, n_val=100, n_test=100)
    rate = bench.seeds_rate(data, how=how, seeds=2, epochs=2, batch_size=128)
    assert rate.samples == 2 * 2 * 4 * 128 and rate.per_second > 0  # drop_last: 600 // 128 = 4 steps an epoch
    with pytest.raises(ValueError, match="how must be"):
        bench.seeds_rate(data, how="sideways", seeds=2, epochs=1)


def test_a_seeds_flops_count_its_evaluation_forward_passes():
    flops = bench.training_flops()
    data = bench.random_mnist(600, n_val=100, n_test=50)
    # 2 epochs x 4 steps x 128 = 1,024 training samples; 2 x 100 validation + 50 test images evaluated
    per_sample = bench.seed_flops_per_sample(flops, data, epochs=2, batch_size=128)
    assert per_sample * 1024 == pytest.approx(1024 * flops.total + 250 * flops.forward)
    assert bench.seed_flops_per_sample(flops, bench.random_mnist(600), epochs=2, batch_size=128) == flops.total


def test_reference_run_times_training_alone_and_with_evaluation():
    run = bench.reference_run(epochs=2, images=600, val_images=100, batch_size=128)
    assert run.steps == 2 * 4 and run.samples == 2 * 4 * 128  # drop_last: 600 // 128 = 4 steps an epoch
    assert 0 < run.train_seconds and 0 < run.total_seconds


CPU_ROWS = (
    "matmul peak", "FLOPs per training sample", "standard pipeline", "bnlab, plain loop", "bnlab, fused step",
    "seeds one after another", "seeds in worker processes",
    "speed-up of the plain loop over the standard pipeline", "speed-up of the fused step over the standard pipeline",
    "speed-up of the fused step over the plain loop", "speed-up of seeds in worker processes", "training-loop FLOP/s",
    "seeds in worker processes: time per seed / FLOP floor", "reference run, training steps",
    "reference run, with per-epoch evaluation", "reference run, FLOP floor", "reference run / FLOP floor",
    "standard pipeline, reference run",
)


def test_the_table_has_every_named_row_and_names_the_environment(subset_root):
    rows = bench.run_benchmark(sizes=TINY, device="cpu", data_root_path=subset_root)
    assert tuple(r.what for r in rows) == CPU_ROWS  # the CUDA-graph rows only on CUDA
    assert bench.row(rows, "bnlab, fused step").value.endswith("samples/s")
    table = bench.format_table(rows, bench.environment(torch.device("cpu")), "python -m bnlab.bench --quick")
    for name in CPU_ROWS:
        assert f"| {name} " in table
    for key in ("date:", "torch:", "torchvision:", "threads:", "command: `python -m bnlab.bench --quick`"):
        assert key in table
    assert "MNIST-10k subset" in bench.row(rows, "standard pipeline").note  # it says which data it read
    with pytest.raises(KeyError, match="no row named 'nothing'"):
        bench.row(rows, "nothing")


def test_a_new_rate_gets_its_row_and_every_ratio_is_paired_within_a_round(monkeypatch, tmp_path):
    """Two rounds with made-up rates: the ratio row is the median of the per-round ratios (2 and 3), not the ratio
    of the best rates (20 / 10 = 2)."""
    per_round = {"standard pipeline": iter([10.0, 5.0]), "bnlab, plain loop": iter([20.0, 15.0]),
                 "bnlab, fused step": iter([30.0, 30.0]), "a new way": iter([4.0, 3.0])}

    def made_up(name):
        return lambda setup: bench.Rate(int(next(per_round[name])), 1.0)

    rates = tuple(bench.RateRow(r.name, r.how, made_up(r.name), r.cuda_only) for r in bench.RATES if r.name in per_round)
    monkeypatch.setattr(bench, "RATES", (*rates, bench.RateRow("a new way", lambda s: "made up", made_up("a new way"))))
    monkeypatch.setitem(bench.RATIOS, "a new way / standard pipeline", ("a new way", "standard pipeline"))
    rows = bench.run_benchmark(sizes=bench.replace(TINY, repeats=2), device="cpu", data_root_path=tmp_path)
    assert bench.row(rows, "a new way").value == "4 samples/s" and "made up" in bench.row(rows, "a new way").note
    plain = bench.row(rows, "speed-up of the plain loop over the standard pipeline")
    assert plain.value == "2.5x" and "median of 2 rounds, 2.00x to 3.00x" in plain.note
    assert bench.row(rows, "a new way / standard pipeline").value == "0.5x"  # median of 0.4 and 0.6


def test_the_seeds_distance_from_the_floor_pairs_each_round_with_its_own_peak(monkeypatch, tmp_path):
    """Made-up rounds: peaks of 2 and 3 times the seeds' FLOP/s, so 2.00x and 3.00x from the floor; the row is their
    median (2.50x), not the table's first peak over the fastest round."""
    sizes = bench.replace(TINY, repeats=2)
    data = bench.random_mnist(sizes.rate_images, n_val=sizes.val_images, n_test=sizes.batch_size)
    per_sample = bench.seed_flops_per_sample(bench.training_flops(), data, epochs=sizes.seed_epochs,
                                             batch_size=sizes.batch_size)
    peaks = iter([10 * per_sample, 2 * per_sample, 3 * per_sample] + [per_sample] * sizes.repeats)
    monkeypatch.setattr(bench, "matmul_peak", lambda **kwargs: next(peaks))
    made_up = tuple(replace(r, measure=lambda setup: bench.Rate(1, 1.0)) for r in bench.RATES)
    monkeypatch.setattr(bench, "RATES", made_up)
    rows = bench.run_benchmark(sizes=sizes, device="cpu", data_root_path=tmp_path)
    floor = bench.row(rows, "seeds in worker processes: time per seed / FLOP floor")
    assert floor.value == "2.50x" and "median of 2 rounds, 2.00x to 3.00x" in floor.note


def test_command_runs_quick_and_prints_the_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bnlab.bench", "--quick", "--threads", "1", "--device", "cpu", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert all(f"| {name} " in result.stdout for name in CPU_ROWS)
    assert "threads: 1" in result.stdout


def test_command_rejects_bad_threads(capsys):
    assert bench.main(["--quick", "--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err


def test_describe_rounds_says_how_many_rounds_and_their_range():
    assert bench.describe_rounds(Spread.of([14.0, 9.0, 15.5])) == "median of 3 rounds, 9.00x to 15.50x"
    assert bench.describe_rounds(Spread.of([2.0])) == "1 round"

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bnlab import bench
from bnlab.models import MLPConfig, build_mlp
from bnlab.stats import Spread
from bnlab.training import Engine, FusedMLPStep

TINY = bench.Sizes(
    peak_n=64, standard_steps=2, standard_warmup=1, rate_images=512, rate_epochs=1,
    epochs=1, images=512, val_images=64, batch_size=256, repeats=1,
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
    step = FusedMLPStep(model, lr=0.1)  # built first: FlopCounterMode installs global module hooks
    step(x, y)  # the first step on a CPU also times the operand orders of its products (once per shape)
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
    fused = bench.bnlab_rate(data, epochs=2)
    assert fused.samples == 2 * 2 * 256 and fused.per_second > 0


def test_reference_run_times_training_alone_and_with_evaluation():
    run = bench.reference_run(epochs=2, images=600, val_images=100, batch_size=128)
    assert run.steps == 2 * 4 and run.samples == 2 * 4 * 128  # drop_last: 600 // 128 = 4 steps an epoch
    assert 0 < run.train_seconds and 0 < run.total_seconds


def test_the_table_has_every_row_and_names_the_environment(subset_root):
    rows = bench.run_benchmark(sizes=TINY, device="cpu", engine=Engine(), data_root_path=subset_root)
    assert tuple(r.what for r in rows) == bench.ROW_NAMES
    table = bench.format_table(rows, bench.environment(torch.device("cpu")), "python -m bnlab.bench --quick")
    for name in bench.ROW_NAMES:
        assert f"| {name} " in table
    for key in ("date:", "torch:", "torchvision:", "threads:", "command: `python -m bnlab.bench --quick`"):
        assert key in table
    assert "MNIST-10k subset" in table  # the standard pipeline says which data it read


def test_command_runs_quick_and_prints_the_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bnlab.bench", "--quick", "--threads", "1", "--device", "cpu", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert all(f"| {name} " in result.stdout for name in bench.ROW_NAMES)
    assert "threads: 1" in result.stdout


def test_command_rejects_bad_threads(capsys):
    assert bench.main(["--quick", "--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err


def test_describe_rounds_says_how_many_rounds_and_their_range():
    assert bench.describe_rounds(Spread.of([14.0, 9.0, 15.5])) == "median of 3 rounds, 9.00x to 15.50x"
    assert bench.describe_rounds(Spread.of([2.0])) == "1 round"

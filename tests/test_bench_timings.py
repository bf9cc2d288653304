"""bnlab.bench.timings: FLOP counts that match PyTorch's own count, a matmul peak, and rates that count the samples
they time."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bnlab.bench import timings
from bnlab.fast import FusedEngine, FusedStep
from bnlab.models import MLPConfig, build_mlp
from bnlab.training import Engine


def test_flop_count_of_a_small_mlp_matches_a_count_by_hand():
    # 4 -> 3 -> 2: forward 2*4*3 + 2*3*2 = 36; backward: first layer only its weight gradient, 2*4*3 = 24,
    # second layer weight and input gradients, 4*3*2 = 24.
    assert timings.training_flops((4, 3, 2)) == timings.Flops(forward=36, backward=48)
    assert timings.training_flops((4, 3, 2)).total == 84
    assert timings.training_flops().total == 258_150  # the lecture's 784-75-45-10


@pytest.mark.parametrize("config", [MLPConfig(), MLPConfig(hidden=(32,), placement="none")], ids=["lecture", "one-hidden"])
def test_flop_count_matches_what_pytorch_counts_in_a_real_training_step(config):
    model = build_mlp(config)
    sizes = timings.linear_sizes(model)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with FlopCounterMode(display=False) as autograd_count:
        F.cross_entropy(model(x), y).backward()
    step = FusedStep(model, torch.optim.SGD(model.parameters(), lr=0.1))  # built first: FlopCounterMode
    step(x, y)  # installs global module hooks; the first step also checks itself against the plain step
    with FlopCounterMode(display=False) as fused_count:
        step(x, y)
    expected = 16 * timings.training_flops(sizes).total
    assert autograd_count.get_total_flops() == expected
    assert fused_count.get_total_flops() == expected


def test_linear_sizes_reads_the_chain_of_linear_layers():
    assert timings.linear_sizes(build_mlp()) == timings.LECTURE_SIZES
    with pytest.raises(ValueError, match="do not form a chain"):
        timings.linear_sizes(nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="sizes must be two or more positive integers"):
        timings.training_flops((784,))


def test_matmul_peak_is_a_positive_rate_and_checks_its_arguments():
    assert timings.matmul_peak(n=64, repeats=2) > 0
    with pytest.raises(ValueError, match="n and repeats must be positive integers"):
        timings.matmul_peak(n=0)


def test_standard_pipeline_reads_torchvision_mnist_when_the_files_are_there(subset_root):
    dataset, description = timings.standard_dataset(subset_root)
    assert type(dataset).__name__ == "MNIST" and "MNIST-10k subset" in description
    image, label = dataset[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert isinstance(label, int)


def test_standard_pipeline_stand_in_goes_through_mnists_own_getitem(tmp_path):
    dataset, description = timings.standard_dataset(tmp_path / "nothing-here", size=300)
    assert isinstance(dataset, timings.MNIST) and "random" in description and len(dataset) == 300
    data = timings.random_mnist(300)
    image, label = dataset[7]
    assert torch.equal(image, data.train.images[7]) and label == data.train.labels[7].item()  # ToTensor() round trip


def test_rates_count_the_samples_they_time():
    data = timings.random_mnist(512)
    standard = timings.standard_rate(timings.InMemoryMNIST(data, transform=timings.transforms.ToTensor()), steps=3, warmup=1)
    assert standard.samples == 3 * 256 and standard.per_second > 0
    for engine in (Engine(), FusedEngine()):
        rate = timings.loop_rate(data, engine, epochs=2)
        assert rate.samples == 2 * 2 * 256 and rate.per_second > 0


@pytest.mark.parametrize("how", ["one after another", "workers", "stacked"])
def test_seeds_rates_count_every_seeds_samples(how):
    data = timings.random_mnist(600, n_val=100, n_test=100)
    rate = timings.seeds_rate(data, how=how, seeds=2, epochs=2, batch_size=128)
    assert rate.samples == 2 * 2 * 4 * 128 and rate.per_second > 0  # drop_last: 600 // 128 = 4 steps an epoch
    with pytest.raises(ValueError, match="how must be"):
        timings.seeds_rate(data, how="sideways", seeds=2, epochs=1)


def test_a_seeds_flops_count_its_evaluation_forward_passes():
    flops = timings.training_flops()
    data = timings.random_mnist(600, n_val=100, n_test=50)
    # 2 epochs x 4 steps x 128 = 1,024 training samples; 2 x 100 validation + 50 test images evaluated
    per_sample = timings.seed_flops_per_sample(flops, data, epochs=2, batch_size=128)
    assert per_sample * 1024 == pytest.approx(1024 * flops.total + 250 * flops.forward)
    assert timings.seed_flops_per_sample(flops, timings.random_mnist(600), epochs=2, batch_size=128) == flops.total


def test_reference_run_times_training_alone_and_with_evaluation():
    run = timings.reference_run(epochs=2, images=600, val_images=100, batch_size=128)
    assert run.steps == 2 * 4 and run.samples == 2 * 4 * 128  # drop_last: 600 // 128 = 4 steps an epoch
    assert 0 < run.train_seconds and 0 < run.total_seconds

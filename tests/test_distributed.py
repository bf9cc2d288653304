"""bnlab.distributed: BatchNorm under data parallelism, in real processes joined by torch.distributed (gloo)."""

import socket
import time

import pytest
import torch
from torch import nn

from bnlab import distributed
from bnlab.batchnorm import BatchNorm
from bnlab.distributed import Replicas, SyncBatchNorm

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def replicas():
    with Replicas(2, timeout=300) as started:
        yield started


def global_batch(seed=0, shape=(8, 3, 4, 4)):
    generator = torch.Generator().manual_seed(seed)
    x = 2.0 + 3.0 * torch.randn(shape, generator=generator)
    dy = torch.randn(shape, generator=generator)
    return x, dy


def trained_looking_bn(channels=3, seed=0, dims=2):
    generator = torch.Generator().manual_seed(seed)
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator))
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return bn


def test_sync_batchnorm_equals_one_batchnorm_over_the_global_batch(replicas):
    x, dy = global_batch()
    bn = trained_looking_bn()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    differences = distributed.sync_batchnorm_check(x, dy, bn, replicas=replicas)
    assert set(differences) == {"output", "input grad", "weight grad", "bias grad", "running_mean", "running_var"}
    assert all(d < TOLERANCE for d in differences.values()), differences
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())  # the reference is left as it was
    assert bn.weight.grad is None


def test_sync_batchnorm_also_matches_for_batchnorm1d_inputs(replicas):
    x, dy = global_batch(seed=1, shape=(6, 5))
    differences = distributed.sync_batchnorm_check(x, dy, trained_looking_bn(5, dims=1), replicas=replicas)
    assert all(d < TOLERANCE for d in differences.values()), differences


def test_unsynchronised_replicas_normalise_with_their_own_share(replicas):
    x, dy = global_batch(seed=2)
    x[:4] += 1.0  # the two shares differ in mean
    differences = distributed.sync_batchnorm_check(x, dy, trained_looking_bn(), sync=False, replicas=replicas)
    assert differences["output"] > 0.1 and differences["input grad"] > 0.01 and differences["running_mean"] > 0.01
    assert differences["bias grad"] < TOLERANCE  # beta's gradient is a plain sum of dy either way


def test_replica_statistics_are_each_shares_and_sync_gives_the_global_ones(replicas):
    x, _ = global_batch(seed=3)
    stats = distributed.replica_statistics(x, replicas=replicas)
    shares = x.chunk(2)
    for rank, share in enumerate(shares):
        torch.testing.assert_close(stats["mean"][rank], share.mean(dim=(0, 2, 3)))
        torch.testing.assert_close(stats["var"][rank], share.var(dim=(0, 2, 3), correction=0))
        torch.testing.assert_close(stats["sync_running_mean"][rank], x.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats["sync_running_var"][rank], x.var(dim=(0, 2, 3), correction=1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(stats["mean"][0], stats["mean"][1])


def test_pytorch_sync_batchnorm_refuses_cpu_tensors_in_a_process_group_in_train_mode_only(replicas):
    outcome = distributed.torch_sync_batchnorm_on_cpu(replicas=replicas)
    assert outcome["train"].startswith("SyncBatchNorm expected input tensor to be on GPU")
    assert outcome["eval"] == ""  # eval mode does not synchronise, so CPU tensors are fine


def test_allreduce_times_are_positive_seconds_for_each_size(replicas):
    times = distributed.allreduce_times((8, 64), repeats=5, rounds=2, replicas=replicas)
    assert list(times) == [8, 64]
    assert all(0 < t < 5 for t in times.values())
    with pytest.raises(ValueError, match="sizes must be positive integers"):
        distributed.allreduce_times((0,), replicas=replicas)


def _raise(rank, world_size):
    if rank == 1:
        raise KeyError("broken on purpose")
    return rank


def _sleep(rank, world_size, seconds):
    time.sleep(seconds)


def test_an_error_in_a_process_names_it_and_stops_every_process():
    with Replicas(2, timeout=300) as fresh:
        processes = list(fresh.processes)
        with pytest.raises(RuntimeError, match=r"(?s)_raise failed in process 1 of 2.*KeyError: 'broken on purpose'"):
            fresh.run(_raise)
        assert not any(p.is_alive() for p in processes)
        with pytest.raises(RuntimeError, match="not running"):
            fresh.run(_raise)


def test_a_run_past_its_timeout_raises_and_stops_every_process():
    with Replicas(2, timeout=300) as fresh:
        processes = list(fresh.processes)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="_sleep did not finish in 2 processes within 1 s"):
            fresh.run(_sleep, 60, timeout=1)
        assert time.monotonic() - start < 30
        assert not any(p.is_alive() for p in processes)


def test_leaving_the_block_stops_the_processes():
    with Replicas(2, timeout=300) as fresh:
        processes = list(fresh.processes)
        assert fresh.run(_sleep, 0) == [None, None]
    assert not any(p.is_alive() for p in processes) and fresh.processes == []


@pytest.mark.parametrize("kwargs, message", [({"world_size": 0}, "world_size"), ({"timeout": 0}, "timeout"),
                                              ({"world_size": True}, "world_size")])
def test_invalid_replica_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Replicas(**kwargs)


def test_sync_batchnorm_without_a_process_group_is_the_plain_batchnorm():
    x, dy = global_batch(seed=4)
    ours, plain = SyncBatchNorm(3), BatchNorm(3)
    torch.testing.assert_close(ours(x), plain(x))
    torch.testing.assert_close(ours.running_var, plain.running_var)


def test_free_port_can_be_bound_and_shards_must_split_evenly():
    port = distributed.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert [len(distributed.shard(torch.zeros(6, 2), r, 3)) for r in range(3)] == [2, 2, 2]
    with pytest.raises(ValueError, match="split evenly over 4 replicas"):
        distributed.shard(torch.zeros(6, 2), 0, 4)

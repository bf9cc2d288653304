"""bnlab._workers: the worker processes behind bnlab.experiments (their runs are tested in test_experiments.py)."""

import pytest
import torch

from bnlab import _workers
from bnlab.data import Dataset, Split


def tiny_data() -> Dataset:
    split = Split(torch.rand(6, 1, 28, 28), torch.arange(6))
    return Dataset("tiny", split, split, split)


def test_using_threads_sets_the_count_inside_and_restores_it_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with _workers.using_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with _workers.using_threads(None):
        assert torch.get_num_threads() == before


def test_the_shared_copy_holds_the_same_data_and_leaves_the_callers_tensors_alone():
    data = tiny_data()
    pointer = data.train.images.data_ptr()
    shared = _workers.shared_copy(data)
    assert shared.name == "tiny"
    assert torch.equal(shared.train.images, data.train.images) and torch.equal(shared.test.labels, data.test.labels)
    assert shared.train.images.is_shared() and not data.train.images.is_shared()
    assert data.train.images.data_ptr() == pointer


def test_a_workers_start_keeps_its_own_copy_and_its_thread_count():
    data = _workers.shared_copy(tiny_data())
    before = torch.get_num_threads()
    try:
        _workers._start(data, 1)
        assert torch.get_num_threads() == 1
        own = _workers._data
        assert torch.equal(own.train.images, data.train.images) and not own.train.images.is_shared()
        assert _workers.call_with_data(lambda task, d: (task, d.name), 7) == (7, "tiny")
    finally:
        torch.set_num_threads(before)
        _workers._data = None


def test_one_worker_runs_every_task_here_in_order_with_the_threads_asked_for():
    seen = []

    def record(task, data):
        seen.append((task, torch.get_num_threads(), data.name))
        return task * 10

    results = list(_workers.results(record, [3, 1, 2], tiny_data(), workers=1, threads=1))
    assert results == [(3, 30), (1, 10), (2, 20)]
    assert seen == [(3, 1, "tiny"), (1, 1, "tiny"), (2, 1, "tiny")]


def test_processes_that_cannot_start_give_a_warning_and_no_pool(monkeypatch):
    def no_processes(*args, **kwargs):
        raise PermissionError("no semaphores here")

    monkeypatch.setattr(_workers.concurrent.futures, "ProcessPoolExecutor", no_processes)
    with pytest.warns(UserWarning, match="PermissionError: no semaphores here.*with 2 thread"):
        assert _workers.start(tiny_data(), 2, 2) is None


def _parent_memory_map(task, data) -> str:
    """Runs in a worker: the memory map of the process it was forked from (on Linux)."""
    import os
    from pathlib import Path

    return Path(f"/proc/{os.getppid()}/maps").read_text()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs Linux's /proc")
def test_workers_fork_from_a_server_that_has_torch_loaded_already():
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver here: workers are spawned")
    done = dict(_workers.results(_parent_memory_map, [1, 2], tiny_data(), workers=2, threads=1))
    assert all("libtorch" in parent_map for parent_map in done.values())


@pytest.mark.parametrize("tasks, workers, expected", [
    (1, 2, 1),  # one task: one process
    (4, 2, 2),  # a multiple of the cores: one process per core
    (5, 2, 3),  # 2 processes take 3 task-times (the fifth alone); 3 take 2.5
    (3, 2, 3),  # 3 processes share 2 cores: 1.5 task-times instead of 2
    (15, 2, 3),  # 3 variants x 5 seeds: 5 rounds of 3 (7.5) against 7 of 2 and one alone (8)
    (20, 2, 2),
    (6, 3, 3),
    (7, 1, 1),  # one core: more processes gain nothing
])
def test_processes_for_keeps_every_core_busy_to_the_end(tasks, workers, expected):
    assert _workers.processes_for(tasks, workers) == expected


def test_processes_for_never_starts_more_than_the_most_allowed():
    assert _workers.processes_for(5, 2, most=2) == 2
    assert all(_workers.processes_for(n, 2) <= 4 for n in range(1, 60))


def test_a_pool_has_every_worker_started_when_start_returns():
    import multiprocessing

    before = set(multiprocessing.active_children())
    pool = _workers.start(tiny_data(), 3, 1)
    assert pool is not None
    try:
        # a pool starts its processes one at a time as tasks come; start waits until all three have run _start
        assert len(set(multiprocessing.active_children()) - before) == 3
    finally:
        _workers.stop(pool)

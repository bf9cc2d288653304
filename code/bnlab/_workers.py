"""Worker processes for ``bnlab.experiments``: each holds one data set and computes with a fixed number of threads.

The data set is copied once into shared memory, which every worker maps (nothing big goes through a pipe) and
copies into its own memory.
Workers start with ``forkserver`` where it exists, else ``spawn``: a fresh interpreter that imports ``bnlab``,
safe in a notebook kernel (which ``fork`` is not). The fork server imports ``bnlab`` (and with it torch) once, so
that every later worker starts from it ready instead of importing anew (about two seconds of a CPU each). The
function a worker runs must be importable from ``bnlab``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import threading
import warnings

import torch

from .data import Dataset, Split, empty_on_huge_pages

_data: Dataset | None = None  # in a worker: the data set every task uses
START_TIMEOUT = 600  # seconds for a pool's workers to start


@contextlib.contextmanager
def using_threads(threads: int | None):
    """Compute with ``threads`` CPU threads inside the block (``None``: leave the setting alone)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start(data: Dataset, threads: int, everyone=None) -> None:
    """Runs once in each worker: its own copy of the images, on huge pages as ``load_mnist`` keeps them (training
    gathers its batches at random from the whole split), and ``threads`` threads; then it waits at the barrier
    ``everyone`` (if given) until every worker of the pool has got this far."""
    global _data
    torch.set_num_threads(threads)

    def own(split: Split) -> Split:
        return Split(empty_on_huge_pages(tuple(split.images.shape), split.images.dtype).copy_(split.images),
                     split.labels.clone())

    _data = Dataset(data.name, own(data.train), own(data.val), own(data.test))
    if everyone is not None:
        everyone.wait(timeout=START_TIMEOUT)


def _ready() -> int:
    return os.getpid()


def call_with_data(fn, task):
    """What a worker runs for a task: ``fn(task, data)`` with the worker's data set."""
    return fn(task, _data)


def shared_copy(data: Dataset) -> Dataset:
    """A copy of ``data`` in shared memory (the caller's tensors stay where they are)."""

    def share(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().clone().share_memory_()

    return Dataset(data.name, *(Split(share(s.images), share(s.labels)) for s in (data.train, data.val, data.test)))


def start(data: Dataset, workers: int, threads: int) -> concurrent.futures.ProcessPoolExecutor | None:
    """``workers`` processes holding ``data``, all started and ready when this returns (a pool starts its processes
    one by one as tasks arrive, and a late one would start while the first runs tasks), or ``None``, with a
    warning, where processes cannot be started."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":  # takes effect when the server starts (the first pool); later calls change nothing
        context.set_forkserver_preload([__name__])
    pool = None
    try:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start,
            initargs=(shared_copy(data), threads, context.Barrier(workers)),
        )
        for future in [pool.submit(_ready) for _ in range(workers)]:  # one task each: every process is started
            future.result(timeout=START_TIMEOUT)
        return pool
    except (OSError, RuntimeError, NotImplementedError, ImportError, concurrent.futures.TimeoutError,
            threading.BrokenBarrierError) as err:
        if pool is not None:
            stop(pool)
        warnings.warn(
            f"worker processes could not be started ({type(err).__name__}: {err}); running one after another in "
            f"this process instead, with {threads} thread(s) each, as the workers would have.",
            stacklevel=3,
        )
        return None


def stop(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop the workers now, even in the middle of a task."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # before 3.14: no public way
        process.terminate()


def processes_for(tasks: int, workers: int, *, most: int | None = None) -> int:
    """How many processes finish ``tasks`` tasks of equal length soonest when ``workers`` of them can compute at
    once (one per core), each process taking one task at a time: at least ``workers`` (or ``tasks``, if fewer), at
    most ``most`` (default ``2 * workers``: each process holds a copy of the data), the fewest among equals.

    ``workers`` processes leave cores idle in the last round when ``tasks`` is not a multiple of ``workers``:
    5 tasks on 2 cores take 3 task-times. 3 processes share the 2 cores (the operating system switches between
    them) and take 2.5: 3 tasks at 2/3 speed, then 2 at full speed. A round of ``w >= workers`` processes takes
    ``w / workers`` task-times and a last round of ``r`` tasks ``max(r / workers, 1)``.
    """
    most = 2 * workers if most is None else most
    if tasks <= workers:
        return max(tasks, 1)

    def task_times(w: int) -> float:
        rounds, left = divmod(tasks, w)
        return rounds * w / workers + (max(left / workers, 1) if left else 0)

    return min(range(workers, max(workers, min(tasks, most)) + 1), key=task_times)


def results(fn, tasks: list, data: Dataset, *, workers: int, threads: int | None):
    """Yield ``(task, fn(task, data))`` for every task as it finishes: in worker processes sharing ``workers``
    cores (``processes_for`` says how many processes) with ``threads`` threads each, or in this process with
    ``threads`` threads when ``workers`` is 1, there is a single task, or processes cannot be started. A worker's exception is raised here,
    with the worker's traceback as its cause."""
    pool = start(data, processes_for(len(tasks), workers), threads) if workers > 1 and len(tasks) > 1 else None
    if pool is None:
        for task in tasks:
            with using_threads(threads):
                result = fn(task, data)
            yield task, result
        return
    try:
        futures = {pool.submit(call_with_data, fn, task): task for task in tasks}
        for future in concurrent.futures.as_completed(futures):
            task = futures[future]
            try:
                result = future.result()
            except BaseException as err:
                if hasattr(err, "add_note"):  # Python 3.11+
                    err.add_note(f"(raised in a worker process, running {task})")
                raise
            yield task, result
    finally:
        stop(pool)

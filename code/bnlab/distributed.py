"""Data-parallel BatchNorm, run for real with ``torch.distributed`` on the CPU.

Under data-parallel training (``DistributedDataParallel``) every process, a *replica*, holds a copy of the model
and trains on its own share of the global batch; only the gradients are averaged. A plain BatchNorm layer in each
replica therefore normalises with the statistics of that replica's share, not of the global batch.

A *synchronised* BatchNorm gives every replica the statistics of the global batch. With ``R`` replicas and, per
channel, ``n_r`` values, ``S1_r = sum x`` and ``S2_r = sum x^2`` on replica ``r``, one all-reduce (a sum over the
replicas, whose result every replica receives) of ``(n_r, S1_r, S2_r)`` gives::

    n = sum_r n_r,   mean = sum_r S1_r / n,   var = sum_r S2_r / n - mean^2      (biased, as BatchNorm uses)

Its backward needs global sums too. With ``x_hat = (x - mean) / sqrt(var + eps)`` and ``dy`` the gradient of the
loss with respect to the layer's output, the input gradient is::

    dx = gamma / sqrt(var + eps) * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n)

where both sums run over the *global* batch: a second all-reduce, of ``(sum dy, sum dy * x_hat)``. The gradients of
gamma and beta stay per replica (``sum dy * x_hat`` and ``sum dy`` over the replica's share), as in PyTorch's
``nn.SyncBatchNorm``: data-parallel training averages every parameter gradient over the replicas anyway.

(Sums of squares are the simplest statistics to all-reduce; they lose precision when a channel's mean is large
next to its spread. PyTorch's ``nn.SyncBatchNorm`` instead all-gathers every replica's mean, inverse standard
deviation and count and merges them, see ``torch/nn/modules/_functions.py``.)

``Replicas`` starts ``world_size`` CPU processes joined by the ``gloo`` backend on a free local port and runs
functions of this module in all of them, with a time limit; no process outlives its ``with`` block. The functions
the chapter uses, each in given replicas or in fresh ones: ``replica_statistics``, ``sync_batchnorm_check``,
``torch_sync_batchnorm_on_cpu`` and ``allreduce_times``.
"""

from __future__ import annotations

import os
import queue as queue_module
import socket
import statistics
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from .batchnorm import BatchNorm, channel_dims

# --- a synchronised BatchNorm, from scratch --------------------------------------------------------------------


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every process of the default group (every process receives the sum)."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class SyncBatchNormFunction(torch.autograd.Function):
    """Train-mode batch normalisation over the global batch: forward and backward each all-reduce per-channel sums.

    ``forward(x, weight, bias, eps)`` returns ``(y, mean, var, n)``: the output, and the global batch's per-channel
    mean and biased variance and its number of values per channel (not differentiable; the module uses them for
    its running statistics).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = channel_dims(x.dim())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype)
        sums = all_reduce_sum(torch.cat([count, x.sum(dims), (x * x).sum(dims)]))
        n, s1, s2 = sums.split([1, x.shape[1], x.shape[1]])
        mean = s1 / n
        var = s2 / n - mean * mean
        invstd = torch.rsqrt(var + eps)
        x_hat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x_hat, weight, invstd, n)
        ctx.mark_non_differentiable(mean, var, n)
        return weight.view(shape) * x_hat + bias.view(shape), mean, var, n

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dn):
        x_hat, weight, invstd, n = ctx.saved_tensors
        dims = channel_dims(dy.dim())
        shape = (1, -1) + (1,) * (dy.dim() - 2)
        local_dy, local_dy_xhat = dy.sum(dims), (dy * x_hat).sum(dims)
        sum_dy, sum_dy_xhat = all_reduce_sum(torch.cat([local_dy, local_dy_xhat])).chunk(2)
        dx = (weight * invstd).view(shape) * (dy - sum_dy.view(shape) / n - x_hat * sum_dy_xhat.view(shape) / n)
        return dx, local_dy_xhat, local_dy, None


class SyncBatchNorm(BatchNorm):
    """``bnlab.batchnorm.BatchNorm`` whose train-mode statistics are those of the global batch, over every process
    of the default ``torch.distributed`` group; in eval mode, or without a process group, it is that BatchNorm.
    The running statistics are updated with the global batch's statistics (unbiased variance over the global
    count), so they stay equal on every replica."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self.check_input(x)
        y, mean, var, n = SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        n = n.item()
        self.update_running_stats(mean, var * n / (n - 1))
        return y


# --- running functions in several processes ---------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_interface() -> str:
    return "lo0" if sys.platform == "darwin" else "lo"


def _serve(rank: int, world_size: int, port: int, tasks, results, timeout_s: float) -> None:
    """A replica's main loop: join the process group, then run ``(fn, args)`` tasks until ``None`` arrives."""
    torch.set_num_threads(1)  # one core per process
    os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback_interface())
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    except Exception:
        results.put((rank, False, traceback.format_exc()))
        return
    results.put((rank, True, "ready"))
    try:
        while (task := tasks.get()) is not None:
            fn, args = task
            try:
                results.put((rank, True, fn(rank, world_size, *args)))
            except Exception:
                results.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class Replicas:
    """``world_size`` new CPU processes joined into one ``gloo`` process group (``torch.distributed`` initialised in
    each, on a free local port, one thread per process), ready to run functions of this module; a ``with`` block::

        with Replicas(world_size=2) as replicas:
            by_rank = replicas.run(fn, x)          # fn(rank, world_size, x) in every process, results by rank

    ``fn`` must be a module-level function (the processes are started with ``spawn`` and import it). If a process
    raises, ``RuntimeError`` names it and shows its traceback; if the processes take longer than ``timeout`` seconds
    to start or to finish one ``run``, ``TimeoutError`` says so. Either way, and when the block ends, every process
    is stopped: none outlives the block.
    """

    def __init__(self, world_size: int = 2, *, timeout: float = 120.0):
        if not dist.is_available():
            raise RuntimeError("this PyTorch build has no torch.distributed; install one that has it (e.g. from PyPI).")
        if not (isinstance(world_size, int) and not isinstance(world_size, bool) and world_size >= 1):
            raise ValueError(f"world_size must be a positive integer; got {world_size!r}.")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}.")
        self.world_size = world_size
        self.timeout = timeout
        self.processes: list = []
        self.tasks: list = []

    def __enter__(self) -> "Replicas":
        context = mp.get_context("spawn")
        self.results = context.Queue()
        self.tasks = [context.Queue() for _ in range(self.world_size)]
        port = free_port()
        self.processes = [
            context.Process(
                target=_serve, args=(rank, self.world_size, port, self.tasks[rank], self.results, self.timeout),
                daemon=True,
            )
            for rank in range(self.world_size)
        ]
        try:
            for process in self.processes:
                process.start()
            self._collect("starting the processes", self.timeout)
        except BaseException:
            self.close(polite=False)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, fn, *args, timeout: float | None = None) -> list:
        """``fn(rank, world_size, *args)`` in every process; the return values, by rank. ``timeout`` (seconds)
        overrides the replicas' own for this call."""
        if not self.processes:
            raise RuntimeError("the replicas are not running: use them inside `with Replicas(...) as replicas:`.")
        try:
            for tasks in self.tasks:
                tasks.put((fn, args))
            return self._collect(fn.__name__, self.timeout if timeout is None else timeout)
        except BaseException:
            self.close(polite=False)
            raise

    def _collect(self, what: str, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        by_rank: dict[int, object] = {}
        while len(by_rank) < self.world_size:
            try:
                rank, ok, value = self.results.get(timeout=0.2)
            except queue_module.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self.processes) if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"{what}: process {dead[0][0]} of {self.world_size} exited with code {dead[0][1]} before "
                        "answering."
                    ) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{what} did not finish in {self.world_size} processes within {timeout:g} s; they were "
                        "stopped. On a busy machine, pass a larger timeout."
                    ) from None
                continue
            if not ok:
                raise RuntimeError(f"{what} failed in process {rank} of {self.world_size}:\n{value}")
            by_rank[rank] = value
        return [by_rank[rank] for rank in range(self.world_size)]

    def close(self, *, polite: bool = True) -> None:
        """Stop every process: ask each to leave its process group and wait a little (``polite``), then end it."""
        if polite:
            for process, tasks in zip(self.processes, self.tasks):
                if process.is_alive():
                    tasks.put(None)
            for process in self.processes:
                process.join(timeout=5)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes = []


def _run(fn, args: tuple, replicas: Replicas | None, world_size: int, timeout: float) -> list:
    """``replicas.run(fn, *args)``, or the same in fresh replicas started for this one call."""
    if replicas is not None:
        return replicas.run(fn, *args)
    with Replicas(world_size, timeout=timeout) as fresh:
        return fresh.run(fn, *args)


def shard(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Replica ``rank``'s share of a global batch: equal contiguous chunks of the batch dimension."""
    if len(x) % world_size:
        raise ValueError(f"the global batch ({len(x)}) must split evenly over {world_size} replicas.")
    return x.chunk(world_size)[rank]


# --- what the chapter runs in the processes ---------------------------------------------------------------------


def _replica_statistics(rank: int, world_size: int, x: torch.Tensor) -> dict:
    local = shard(x, rank, world_size)
    dims = channel_dims(x.dim())
    bn = SyncBatchNorm(x.shape[1], momentum=1.0)  # momentum 1: the running statistics are the last batch's
    bn(local)
    return {
        "mean": local.mean(dims),
        "var": local.var(dims, correction=0),
        "sync_running_mean": bn.running_mean.clone(),
        "sync_running_var": bn.running_var.clone(),
    }


def replica_statistics(
    x: torch.Tensor, *, replicas: Replicas | None = None, world_size: int = 2, timeout: float = 120.0
) -> dict[str, torch.Tensor]:
    """Split the global batch ``x`` (``(N, C, ...)``) over ``world_size`` processes and return, stacked by rank,
    what each replica's plain BatchNorm would normalise with (``"mean"``, ``"var"``: per channel, over its share),
    and the running statistics of a ``SyncBatchNorm`` with momentum 1 after one step on the shares
    (``"sync_running_mean"``, ``"sync_running_var"``: the global batch's mean and unbiased variance)."""
    results = _run(_replica_statistics, (x,), replicas, world_size, timeout)
    return {key: torch.stack([r[key] for r in results]) for key in results[0]}


def _sync_batchnorm_step(rank: int, world_size: int, x: torch.Tensor, dy: torch.Tensor, state: dict,
                         sync: bool) -> dict:
    bn = SyncBatchNorm(x.shape[1]) if sync else BatchNorm(x.shape[1])
    bn.load_state_dict(state)
    local = shard(x, rank, world_size).clone().requires_grad_(True)
    y = bn(local)
    y.backward(shard(dy, rank, world_size))
    return {
        "y": y.detach(),
        "x_grad": local.grad,
        "weight_grad": bn.weight.grad,
        "bias_grad": bn.bias.grad,
        "running_mean": bn.running_mean.clone(),
        "running_var": bn.running_var.clone(),
    }


def sync_batchnorm_check(
    x: torch.Tensor,
    dy: torch.Tensor,
    bn: nn.Module,
    *,
    sync: bool = True,
    replicas: Replicas | None = None,
    world_size: int = 2,
    timeout: float = 120.0,
) -> dict[str, float]:
    """One train-mode step of a BatchNorm over the global batch ``x`` split across ``world_size`` processes, each
    replica a ``SyncBatchNorm`` (``sync=True``) or a plain from-scratch ``BatchNorm`` (``sync=False``) starting from
    ``bn``'s parameters and buffers; compared with ``bn`` itself (e.g. an ``nn.BatchNorm2d``, in train mode) run
    once on the whole of ``x``, with output gradient ``dy``. ``bn`` is left as it was.

    Returns the largest absolute difference of: the outputs and the input gradients (the replicas' shares put back
    together), the gamma and beta gradients (summed over the replicas, as data-parallel training combines them),
    and every replica's running statistics.
    """
    state = {k: v.detach().clone() for k, v in bn.state_dict().items()}
    results = _run(_sync_batchnorm_step, (x, dy, state, sync), replicas, world_size, timeout)
    reference = {k: v.detach().clone() for k, v in bn.state_dict().items()}
    was_training = bn.training
    whole = x.detach().clone().requires_grad_(True)
    bn.zero_grad(set_to_none=True)
    bn.train()
    y = bn(whole)
    y.backward(dy)
    expected = {
        "y": y.detach(), "x_grad": whole.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
        "running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone(),
    }
    bn.load_state_dict(reference)
    bn.zero_grad(set_to_none=True)
    bn.train(was_training)

    def worst(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a.double() - b.double()).abs().max().item()

    differences = {
        "output": worst(torch.cat([r["y"] for r in results]), expected["y"]),
        "input grad": worst(torch.cat([r["x_grad"] for r in results]), expected["x_grad"]),
        "weight grad": worst(sum(r["weight_grad"] for r in results), expected["weight_grad"]),
        "bias grad": worst(sum(r["bias_grad"] for r in results), expected["bias_grad"]),
    }
    for name in ("running_mean", "running_var"):
        differences[name] = max(worst(r[name], expected[name]) for r in results)
    return differences


def _torch_sync_batchnorm(rank: int, world_size: int, channels: int) -> dict[str, str]:
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.Conv2d(1, channels, 3), nn.BatchNorm2d(channels)))
    x = torch.randn(4, 1, 8, 8)
    outcome = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        try:
            model(x)
            outcome[mode] = ""
        except ValueError as err:
            outcome[mode] = str(err)
    return outcome


def torch_sync_batchnorm_on_cpu(
    *, replicas: Replicas | None = None, world_size: int = 2, timeout: float = 120.0
) -> dict[str, str]:
    """What PyTorch's ``nn.SyncBatchNorm`` does with CPU tensors inside a ``gloo`` process group of ``world_size``
    processes: ``{"train": message, "eval": message}``, the error each mode's forward pass raises (``""``: none)."""
    return _run(_torch_sync_batchnorm, (4,), replicas, world_size, timeout)[0]


def _allreduce_times(rank: int, world_size: int, sizes: tuple[int, ...], repeats: int, rounds: int) -> dict[int, float]:
    times = {}
    for size in sizes:
        t = torch.zeros(size)
        for _ in range(10):  # warm-up
            dist.all_reduce(t)
        best = []
        for _ in range(rounds):
            dist.barrier()
            start = time.perf_counter()
            for _ in range(repeats):
                dist.all_reduce(t)
            best.append((time.perf_counter() - start) / repeats)
        times[size] = statistics.median(best)
    return times


def allreduce_times(
    sizes: tuple[int, ...],
    *,
    repeats: int = 200,
    rounds: int = 5,
    replicas: Replicas | None = None,
    world_size: int = 2,
    timeout: float = 120.0,
) -> dict[int, float]:
    """Seconds one ``all_reduce`` (sum) of a float32 tensor of each size takes across ``world_size`` local ``gloo``
    processes: the median over ``rounds`` of the mean over ``repeats`` back-to-back calls, seen by process 0.
    A measurement of this machine at this moment; nothing else depends on it."""
    if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ValueError(f"sizes must be positive integers (numbers of floats); got {sizes!r}.")
    return _run(_allreduce_times, (tuple(sizes), repeats, rounds), replicas, world_size, timeout)[0]

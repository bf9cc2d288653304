"""bnlab.bench: every named row in the table, ratios and the seeds' floor paired within rounds, and the command."""

import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from bnlab import bench
from bnlab.stats import Spread

TINY = bench.Sizes(
    peak_n=64, standard_steps=2, standard_warmup=1, rate_images=512, rate_epochs=1,
    epochs=1, images=512, val_images=64, batch_size=256, repeats=1, seeds=2, seed_epochs=1,
)


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

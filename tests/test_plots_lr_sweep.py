import math

import matplotlib

matplotlib.use("Agg")

import pytest

from bnlab.plots.lr_sweep import LOSS_CEILING, lr_sweep_explorer, lr_sweep_records

LRS = (0.01, 0.1, 1.0, 10.0)


def sweep(seeds=(1, 2, 3), epochs=3):
    """Records shaped as bnlab.explanations.lr_sweep returns them; the network without BatchNorm diverges at lr 10
    (its loss is not a number), and every curve is recognisable from its values."""
    records = []
    for variant, offset in (("without BatchNorm", 0.0), ("BatchNorm", 5.0)):
        for lr in LRS:
            for seed in seeds:
                losses = tuple(2.0 / (e + lr + seed) for e in range(1, epochs + 1))
                if variant == "without BatchNorm" and lr == 10.0:
                    losses = (3.0, float("nan"), float("nan"))[:epochs]
                accs = tuple(50.0 + offset + 10 * e + seed + lr for e in range(1, epochs + 1))
                records.append({"variant": variant, "lr": lr, "seed": seed, "test_acc": accs[-1],
                                "final_loss": losses[-1], "epoch_loss": losses, "epoch_val_acc": accs})
    return records


def test_records_hold_every_epoch_of_every_run_once():
    records = lr_sweep_records(sweep())
    assert len(records) == 2 * len(LRS) * 3 * 3
    run = [r for r in records if r["variant"] == "BatchNorm" and r["lr"] == 1.0 and r["seed"] == 2]
    source = next(r for r in sweep() if r["variant"] == "BatchNorm" and r["lr"] == 1.0 and r["seed"] == 2)
    assert [r["epoch"] for r in run] == [1, 2, 3]
    assert tuple(r["loss"] for r in run) == source["epoch_loss"]
    assert tuple(r["val_acc"] for r in run) == source["epoch_val_acc"]


def test_records_refuse_what_lr_sweep_did_not_make():
    with pytest.raises(ValueError, match="sweep is empty"):
        lr_sweep_records([])
    with pytest.raises(ValueError, match="epoch_loss"):
        lr_sweep_records([{"variant": "x", "lr": 0.1, "seed": 1, "test_acc": 90.0}])


def test_the_explorer_shows_the_last_epoch_of_the_first_seed_first_and_every_setting_on_request():
    figure = lr_sweep_explorer(sweep(), title="MNIST")
    controls = {c.field: c for c in figure.controls}
    assert controls["epoch"].options == (1, 2, 3) and controls["seed"].highlight
    assert figure.values == {"epoch": 3, "seed": 1}
    shown = figure.shown()
    networks = ("without BatchNorm", "BatchNorm")
    assert {(r["variant"], r["lr"]) for r in shown} == {(v, lr) for v in networks for lr in LRS}
    bn = sorted((r["lr"], r["val_acc"]) for r in shown if r["variant"] == "BatchNorm")
    assert bn == [(lr, 50.0 + 5.0 + 30 + 1 + lr) for lr in LRS]
    assert {r["seed"] for r in figure.shown(others=True)} == {2, 3}  # grey behind the chosen seed
    first = figure.shown({"epoch": 1, "seed": 2})
    assert {r["epoch"] for r in first} == {1} and {r["seed"] for r in first} == {2}
    assert figure.spec["title"]["subtitle"].startswith("MNIST")
    assert figure.page_weight < 1_000_000


def test_a_loss_that_is_not_a_number_is_a_gap_and_the_loss_axis_is_clamped():
    figure = lr_sweep_explorer(sweep())
    diverged = [r for r in figure.shown() if r["variant"] == "without BatchNorm" and r["lr"] == 10.0]
    assert len(diverged) == 1 and "loss" not in diverged[0] and "val_acc" in diverged[0]
    y_scales = [layer["encoding"]["y"]["scale"] for panel in figure.spec["hconcat"] for layer in panel["layer"]]
    loss_scale = next(s for s in y_scales if s.get("type") == "log")
    assert loss_scale["domain"][1] == LOSS_CEILING and loss_scale["clamp"]
    finite = [r["loss"] for r in lr_sweep_records(sweep()) if math.isfinite(r["loss"])]
    assert 0 < loss_scale["domain"][0] < min(finite)

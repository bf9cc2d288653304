"""The learning-rate sweep of the chapter "Why does BatchNorm help?" as an interactive figure.

``bnlab.explanations.lr_sweep`` computes the records (one per network, learning rate and seed, with the run's
per-epoch curves); this module draws them: accuracy and training loss against the learning rate, one line per
network, with the epoch and the seed chosen in the reader's browser (``bnlab.plots.interactive``).
"""

from __future__ import annotations

import math

from .interactive import Control, Explorer, explorer

LABELS = {
    "lr": "learning rate",
    "val_acc": "validation accuracy (%)",
    "loss": "training loss (mean over the epoch)",
    "variant": "network",
    "epoch": "after epoch",
    "seed": "seed",
}
LOSS_CEILING = 10.0  # larger losses (diverging runs) are drawn at the top edge of the loss panel


def lr_sweep_records(sweep: list[dict]) -> list[dict]:
    """Tidy records from ``lr_sweep``'s: one per network, learning rate, seed and epoch, with ``loss`` and
    ``val_acc`` after that epoch (a loss that is not finite stays in the record; the figure leaves a gap there)."""
    if not sweep:
        raise ValueError("sweep is empty: give the records bnlab.explanations.lr_sweep returns.")
    missing = [k for k in ("variant", "lr", "seed", "epoch_loss", "epoch_val_acc") if k not in sweep[0]]
    if missing:
        raise ValueError(f"sweep records need {missing}: give the records bnlab.explanations.lr_sweep returns.")
    return [
        {"variant": r["variant"], "lr": r["lr"], "seed": r["seed"], "epoch": epoch, "loss": loss, "val_acc": acc}
        for r in sweep
        for epoch, (loss, acc) in enumerate(zip(r["epoch_loss"], r["epoch_val_acc"]), start=1)
    ]


def lr_sweep_explorer(sweep: list[dict], *, colors: dict | None = None, title: str = "") -> Explorer:
    """Validation accuracy and training loss against the learning rate (log axes where it helps), one line per
    network; the reader picks the epoch (the last one first) and a seed (the other seeds stay in grey)."""
    records = lr_sweep_records(sweep)
    finite = [r["loss"] for r in records if math.isfinite(r["loss"]) and r["loss"] > 0]
    floor = min(finite, default=0.01) / 1.5
    return explorer(
        records,
        x="lr",
        y=["val_acc", "loss"],
        color="variant",
        controls=[Control("epoch", value=max(r["epoch"] for r in records)), Control("seed", highlight=True)],
        labels=LABELS,
        colors=colors,
        log=["lr", "loss"],
        domains={"loss": (floor, max(LOSS_CEILING, floor * 10)), "val_acc": (0.0, 100.0)},
        title=title,
        caption="Pick the epoch and the seed: at which learning rates does each network still learn, and where "
        "does its loss stop falling (a gap: the loss was not a number)?",
    )

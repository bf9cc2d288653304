"""Run profiles: how big the course's experiments are.

The environment variable ``BNLAB_PROFILE`` picks one:

* ``full`` (the default): the course's configuration, the numbers the book shows.
* ``ci``: a small run for tests and continuous integration: fewer epochs and seeds, and the first 3,000 training
  images (the data set's name then says so). The code paths are the same; only the sizes shrink.

Both read whatever data ``$BNLAB_DATA`` holds: the full MNIST where it is there (``make`` builds it offline from
the official files), else the MNIST-10k subset; ``Dataset.name`` says which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROFILE_ENV = "BNLAB_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Sizes of the course's experiments.

    Attributes:
        name: ``"full"`` or ``"ci"``.
        epochs: epochs per training run.
        seeds: the seeds every multi-seed experiment runs.
        train_samples: training images to keep (``None``: the whole training split).
    """

    name: str
    epochs: int
    seeds: tuple[int, ...]
    train_samples: int | None


PROFILES = {
    "full": Profile("full", epochs=50, seeds=(1, 2, 3, 4, 5), train_samples=None),
    "ci": Profile("ci", epochs=4, seeds=(1, 2, 3), train_samples=3_000),
}


def current_profile() -> Profile:
    """The profile ``$BNLAB_PROFILE`` names, ``full`` when it is unset."""
    name = os.environ.get(PROFILE_ENV, "full").strip().lower() or "full"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a profile; use one of {sorted(PROFILES)}.")
    return PROFILES[name]

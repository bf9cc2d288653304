"""Shared fixtures: the offline MNIST-10k subset, built once per test session from the official t10k files."""

import os
from pathlib import Path

import pytest

from bnlab.data import build_subset, load_mnist

REPO = Path(__file__).resolve().parents[1]
T10K_SOURCE = Path(os.environ.get("MNIST_T10K", REPO.parent / "shared" / "data" / "mnist-t10k"))


@pytest.fixture(scope="session")
def t10k_source() -> Path:
    if not (T10K_SOURCE / "t10k-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the official MNIST t10k files are required in CI and are missing from {T10K_SOURCE}")
        pytest.skip(f"the official MNIST t10k files are not in {T10K_SOURCE} (set MNIST_T10K to their folder)")
    return T10K_SOURCE


@pytest.fixture(scope="session")
def subset_root(t10k_source, tmp_path_factory) -> Path:
    return build_subset(t10k_source, tmp_path_factory.mktemp("mnist-10k"))


@pytest.fixture(scope="session")
def small_data(subset_root):
    """The MNIST-10k subset with 1,000 training images: enough to train in a fraction of a second."""
    return load_mnist(subset_root, train_samples=1_000)

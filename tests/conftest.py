"""Shared fixtures: the official MNIST files, the full MNIST root and the MNIST-10k subset, built once per test
session from the files in ../shared/data (set MNIST_TRAIN and MNIST_T10K to their folders elsewhere)."""

import os
from pathlib import Path

import pytest

from bnlab.data import build_mnist, build_subset, load_mnist

REPO = Path(__file__).resolve().parents[1]
T10K_SOURCE = Path(os.environ.get("MNIST_T10K", REPO.parent / "shared" / "data" / "mnist-t10k"))
TRAIN_SOURCE = Path(os.environ.get("MNIST_TRAIN", REPO.parent / "shared" / "data" / "mnist-train"))


def official_folder(folder: Path, first_file: str, variable: str) -> Path:
    if not (folder / first_file).exists():
        if os.environ.get("CI"):
            pytest.fail(f"the official MNIST file {first_file} is required in CI and is missing from {folder}")
        pytest.skip(f"the official MNIST file {first_file} is not in {folder} (set {variable} to its folder)")
    return folder


@pytest.fixture(scope="session")
def t10k_source() -> Path:
    return official_folder(T10K_SOURCE, "t10k-images-idx3-ubyte.gz", "MNIST_T10K")


@pytest.fixture(scope="session")
def train_source() -> Path:
    return official_folder(TRAIN_SOURCE, "train-images-idx3-ubyte.gz", "MNIST_TRAIN")


@pytest.fixture(scope="session")
def mnist_root(train_source, t10k_source, tmp_path_factory) -> Path:
    """The full MNIST, built offline in torchvision's layout."""
    return build_mnist(train_source, t10k_source, tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def subset_root(t10k_source, tmp_path_factory) -> Path:
    return build_subset(t10k_source, tmp_path_factory.mktemp("mnist-10k"))


@pytest.fixture(scope="session")
def small_data(subset_root):
    """The MNIST-10k subset with 1,000 training images: enough to train in a fraction of a second."""
    return load_mnist(subset_root, train_samples=1_000)


@pytest.fixture
def split(small_data):
    """The training split of ``small_data``."""
    return small_data.train

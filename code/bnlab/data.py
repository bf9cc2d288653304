"""MNIST as tensors on the training device.

The course trains on MNIST through torchvision's own ``MNIST`` class (download on). Where there is no network,
an offline root can be built from the official 10,000-image MNIST test set: the *MNIST-10k subset*, re-split
into train, validation and test. Everything that shows results names the data set it came from.

Where the data lives, in order:

1. the ``root`` argument,
2. the environment variable ``BNLAB_DATA``,
3. ``./data``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

DATA_ENV = "BNLAB_DATA"
DEFAULT_ROOT = "./data"
FULL_NAME = "MNIST"
SUBSET_NAME = "MNIST-10k subset"
SUBSET_MARKER = "bnlab-subset.json"
FULL_VAL_SIZE = 6_000  # the lecture's split: validation = the last 6,000 training images
HUGE_PAGE = 2 << 20  # bytes in one of Linux's transparent huge pages

# The official test-set files, as torchvision lists them in MNIST.resources.
T10K_FILES = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
RAW_FILES = {  # the raw IDX files torchvision reads: name -> (magic number, number of dimensions)
    "train-images-idx3-ubyte": (2051, 3),
    "train-labels-idx1-ubyte": (2049, 1),
    "t10k-images-idx3-ubyte": (2051, 3),
    "t10k-labels-idx1-ubyte": (2049, 1),
}


class DataError(RuntimeError):
    """The data set is missing, corrupt or truncated. The message says what to do."""


@dataclass(frozen=True)
class Split:
    """One split of a data set: ``images`` as float32 ``(N, 1, 28, 28)`` in [0, 1], ``labels`` as int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"Split: {self.images.shape[0]} images but {self.labels.shape[0]} labels; they must match."
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, n: int) -> "Split":
        """The first ``n`` examples."""
        return Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits, and the name to show with any result computed from them."""

    name: str
    train: Split
    val: Split
    test: Split

    def to(self, device) -> "Dataset":
        return Dataset(self.name, self.train.to(device), self.val.to(device), self.test.to(device))

    def describe(self) -> str:
        return f"{self.name}: {len(self.train):,} train / {len(self.val):,} validation / {len(self.test):,} test"

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the name and every tensor: two data sets with the same fingerprint hold the same data."""
        digest = hashlib.sha256(self.name.encode())
        for split in (self.train, self.val, self.test):
            for tensor in (split.images, split.labels):
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$BNLAB_DATA``, else ``./data``."""
    return Path(root or os.environ.get(DATA_ENV) or DEFAULT_ROOT).expanduser()


def load_mnist(
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    train_samples: int | None = None,
) -> Dataset:
    """Load MNIST through ``torchvision.datasets.MNIST`` and split it as the lecture does.

    Validation is the last 6,000 training images (for the MNIST-10k subset, the size its marker file records).
    ``train_samples`` keeps only the first that many training images (a smaller, faster run).
    Pixels are scaled to [0, 1], exactly what ``transforms.ToTensor()`` gives, without per-sample work.
    """
    from torchvision.datasets import MNIST

    root = data_root(root)
    raw = root / "MNIST" / "raw"
    marker = read_subset_marker(root)
    check_raw_files(raw, marker)
    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found" or "Error downloading ..."
        raise DataError(missing_data_message(root, err)) from err
    check_raw_files(raw, marker)  # what a download just wrote, too

    val_size = marker["val_size"] if marker else FULL_VAL_SIZE
    images = to_float(train.data)
    labels = train.targets.long()
    n_train = len(labels) - val_size
    if n_train <= 0:
        raise DataError(f"{raw}: {len(labels)} training images cannot hold a validation split of {val_size}.")
    if train_samples is not None:
        if train_samples <= 0:
            raise ValueError(f"train_samples must be a positive number of images; got {train_samples}.")
        n_keep = min(train_samples, n_train)
    else:
        n_keep = n_train
    return Dataset(
        name=marker["name"] if marker else FULL_NAME,
        train=Split(images[:n_keep], labels[:n_keep]),
        val=Split(images[n_train:], labels[n_train:]),
        test=Split(to_float(test.data), test.targets.long()),
    )


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """``(N, 28, 28)`` uint8 -> ``(N, 1, 28, 28)`` float32 in [0, 1], as ``ToTensor()`` does per image, in memory
    from ``empty_on_huge_pages``."""
    images = empty_on_huge_pages((images_uint8.shape[0], 1, *images_uint8.shape[1:]))
    return images.copy_(images_uint8.unsqueeze(1)).div_(255)


def empty_on_huge_pages(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory Linux backs with 2 MiB pages where it can.

    Training gathers every mini-batch's rows at random from the whole training set. With 4 KiB pages almost every
    row is a TLB miss; with 2 MiB pages (transparent huge pages, which Linux gives to memory marked
    ``MADV_HUGEPAGE`` in its default ``madvise`` mode) few are, and a step on the lecture's MLP runs a few percent
    faster. Where the platform has no ``MADV_HUGEPAGE``, or the tensor is smaller than one such page, this is
    ``torch.empty``.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        memory.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel without transparent huge pages: ordinary pages it is
        pass
    return torch.frombuffer(memory, dtype=dtype).view(shape)  # the tensor keeps the mapping alive


def missing_data_message(root: Path, err: Exception) -> str:
    return (
        f"MNIST is not in {root} and could not be downloaded ({str(err).splitlines()[0]}).\n"
        "What to do, either:\n"
        f"  - connect to the internet and run again (torchvision downloads MNIST into {root}), or\n"
        f"  - copy an MNIST folder there (it must contain MNIST/raw/), or point ${DATA_ENV} at one, or\n"
        "  - build the offline MNIST-10k subset from the official test-set files and use it:\n"
        "      python -m bnlab build-subset --source DIR_WITH_t10k_FILES --root data/mnist-10k\n"
        f"      export {DATA_ENV}=data/mnist-10k"
    )


# --- integrity ---------------------------------------------------------------------------------------------


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def idx_shape(header: bytes, path: Path) -> tuple[int, ...]:
    """The array shape an IDX header declares, after checking its magic number."""
    expected_magic, ndim = RAW_FILES[path.name]
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: {len(header)} bytes, shorter than its own header.")
    magic = int.from_bytes(header[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path} is not an MNIST IDX file (magic number {magic}, expected {expected_magic}).")
    return tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def check_idx_file(path: Path) -> tuple[int, ...]:
    """Check that a raw IDX file holds exactly the bytes its header declares; return its shape."""
    with open(path, "rb") as f:
        header = f.read(16)
    shape = idx_shape(header, path)
    expected = 4 + 4 * len(shape) + math.prod(shape)
    actual = path.stat().st_size
    if actual != expected:
        state = "truncated" if actual < expected else "longer than its header says"
        raise DataError(
            f"{path} is {state}: {actual:,} bytes, expected {expected:,} for shape {shape}. "
            f"Delete {path.parent} and load again to re-download (or rebuild the subset)."
        )
    return shape


def check_raw_files(raw: Path, marker: dict | None) -> None:
    """Check the raw files present in ``raw``: sizes against headers, MD5s where known, matching counts.

    Absent files are fine here (torchvision downloads them); present but damaged ones raise ``DataError``.
    """
    from torchvision.datasets import MNIST

    if marker:
        for name, digest in marker["md5"].items():
            path = raw / name
            if not path.exists():
                raise DataError(f"{path} is missing from the {marker['name']}. Rebuild it: {REBUILD_HINT}")
            if md5(path) != digest:
                raise DataError(f"{path} is corrupt (MD5 differs from the one recorded). Rebuild it: {REBUILD_HINT}")
    for url_name, digest in MNIST.resources:
        gz = raw / os.path.basename(url_name)
        if gz.exists() and md5(gz) != digest:
            raise DataError(f"{gz} is corrupt (MD5 {md5(gz)}, expected {digest}). Delete it and load again.")
    shapes = {name: check_idx_file(raw / name) for name in RAW_FILES if (raw / name).exists()}
    for part in ("train", "t10k"):
        images, labels = shapes.get(f"{part}-images-idx3-ubyte"), shapes.get(f"{part}-labels-idx1-ubyte")
        if images and labels and images[0] != labels[0]:
            raise DataError(f"{raw}: {images[0]} {part} images but {labels[0]} labels; the files do not belong together.")


REBUILD_HINT = "python -m bnlab build-subset --source DIR_WITH_t10k_FILES --root ROOT"


# --- the offline MNIST-10k subset ----------------------------------------------------------------------------


def read_subset_marker(root: Path) -> dict | None:
    path = Path(root) / "MNIST" / SUBSET_MARKER
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}). Rebuild the subset: {REBUILD_HINT}") from err


def read_idx_gz(path: Path) -> torch.Tensor:
    """Read a gzipped IDX file into a uint8 tensor of the shape its header declares."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable gzip file ({err}).") from err
    shape = idx_shape(data[:16], Path(path.name[: -len(".gz")]))
    body = data[4 + 4 * len(shape) :]
    if len(body) != math.prod(shape):
        raise DataError(f"{path} is truncated: its header declares shape {shape}.")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def write_idx(path: Path, array: torch.Tensor) -> None:
    magic = 2051 if array.dim() == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.contiguous().numpy().tobytes())


def build_subset(
    source: str | os.PathLike,
    root: str | os.PathLike,
    *,
    train: int = 8_000,
    val: int = 1_000,
    test: int = 1_000,
    seed: int = 0,
) -> Path:
    """Build a torchvision-layout MNIST root from the official 10k test-set files: the *MNIST-10k subset*.

    The 10,000 images are shuffled once (``seed``) and re-split: the first ``train + val`` go into the training
    file (validation is its last ``val`` images, as in the lecture), the next ``test`` into the test file.
    The source MD5s are checked first; the root is written to a temporary folder and moved into place, so an
    interrupted build never leaves a half-written data set. Returns the root.
    """
    source, root = Path(source), Path(root)
    for name, digest in T10K_FILES.items():
        path = source / name
        if not path.exists():
            raise DataError(f"{path} not found: the source folder must hold the official files {sorted(T10K_FILES)}.")
        if md5(path) != digest:
            raise DataError(f"{path} is corrupt: its MD5 is {md5(path)}, the official file's is {digest}.")
    images = read_idx_gz(source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_gz(source / "t10k-labels-idx1-ubyte.gz")
    if train + val + test > len(labels) or min(train, val, test) <= 0:
        raise ValueError(f"train + val + test must be positive and at most {len(labels)}; got {train}+{val}+{test}.")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    fit, held_out = order[: train + val], order[train + val : train + val + test]

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mnist-", dir=root))
    staging.chmod(0o755)
    try:
        raw = staging / "raw"
        raw.mkdir()
        write_idx(raw / "train-images-idx3-ubyte", images[fit])
        write_idx(raw / "train-labels-idx1-ubyte", labels[fit])
        write_idx(raw / "t10k-images-idx3-ubyte", images[held_out])
        write_idx(raw / "t10k-labels-idx1-ubyte", labels[held_out])
        marker = {
            "name": SUBSET_NAME,
            "description": (
                "The official MNIST test set (10,000 images), shuffled and re-split "
                f"into {train} train / {val} validation / {test} test. Not the full MNIST."
            ),
            "val_size": val,
            "seed": seed,
            "md5": {name: md5(raw / name) for name in RAW_FILES},
        }
        (staging / SUBSET_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        target = root / "MNIST"
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


class BatchLoader:
    """Shuffled mini-batches drawn by index from a split kept whole on one device.

    No worker processes, no per-sample transforms: each batch is one indexing operation. The batch order comes
    from its own CPU generator, so the same ``seed`` gives the same batches on any device.
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = True, drop_last: bool = True, seed: int = 0):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive; got {batch_size}.")
        if drop_last and batch_size > len(split):
            raise ValueError(f"batch_size {batch_size} is larger than the split ({len(split)} examples) with drop_last.")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.split)
        device = self.split.images.device
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(device, non_blocking=True)
        else:
            order = torch.arange(n, device=device)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.split.images[index], self.split.labels[index]

"""MNIST as tensors on the training device.

The course trains on MNIST through torchvision's own ``MNIST`` class (download on). Without a network, two kinds
of offline root are built in torchvision's layout (``ROOT/MNIST/raw/...``), where ``MNIST(ROOT, download=True)``
finds the files and downloads nothing:

* ``build_mnist``: the full MNIST (60,000 training and 10,000 test images) from the official IDX files, checked
  against the official MD5s of their uncompressed content. Results from it are labelled "MNIST".
* ``build_subset``: the *MNIST-10k subset*, the official 10,000-image test set alone, re-split into train,
  validation and test. Results from it are labelled "MNIST-10k subset", never "MNIST".

Everything that shows results names the data set it came from (``Dataset.name``): "MNIST" only for the full
official data; a run on the first few thousand training images says so.

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

# The official files' uncompressed content: name -> (MD5, bytes). torchvision keeps these files in MNIST/raw/.
OFFICIAL_RAW = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 47_040_016),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60_008),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 7_840_016),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10_008),
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

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images[index], labels[index])``, gathered with ``index_select``: the same rows, in about half the time
        of advanced indexing on one CPU thread."""
        return self.images.index_select(0, index), self.labels.index_select(0, index)


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
    ``train_samples`` keeps only the first that many training images (a smaller, faster run); the data set's
    name then says so, e.g. "MNIST (first 3,000 training images)". Pixels are scaled to [0, 1], exactly what
    ``transforms.ToTensor()`` gives, without per-sample work.

    Every raw file is checked before it is used: its size against its own header, and its MD5 against the
    official file's (or, for the MNIST-10k subset, the one its marker records). A missing, truncated or corrupt
    file raises ``DataError`` naming the file and what to do.
    """
    from torchvision.datasets import MNIST

    if train_samples is not None and (isinstance(train_samples, bool) or not isinstance(train_samples, int) or train_samples <= 0):
        raise ValueError(f"train_samples must be a positive number of images or None (all); got {train_samples!r}.")
    root = data_root(root)
    raw = root / "MNIST" / "raw"
    marker = read_subset_marker(root)
    checked = check_raw_files(raw, marker)
    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found" or "Error downloading ..."
        raise DataError(missing_data_message(root, err)) from err
    check_raw_files(raw, marker, skip=checked)  # what a download just wrote

    val_size = marker["val_size"] if marker else FULL_VAL_SIZE
    images = to_float(train.data)
    labels = train.targets.long()
    n_train = len(labels) - val_size
    if n_train <= 0:
        raise DataError(f"{raw}: {len(labels)} training images cannot hold a validation split of {val_size}.")
    n_keep = n_train if train_samples is None else min(train_samples, n_train)
    name = marker["name"] if marker else FULL_NAME
    if n_keep < n_train:
        name = f"{name} (first {n_keep:,} training images)"
    return Dataset(
        name=name,
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
        "  - build the full MNIST offline from the official IDX files and use it:\n"
        "      python -m bnlab build-mnist --train-source DIR_WITH_train_FILES --test-source DIR_WITH_t10k_FILES "
        "--root data/mnist\n"
        f"      export {DATA_ENV}=data/mnist\n"
        "  - or, with the test-set files alone, build the offline MNIST-10k subset (not the full MNIST):\n"
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


def check_raw_files(raw: Path, marker: dict | None, *, skip: frozenset = frozenset()) -> frozenset:
    """Check the raw files present in ``raw`` (except those in ``skip``): sizes against headers, MD5s against the
    official files' (or the subset marker's), matching counts. Returns the names of the files checked.

    Absent files are fine here (torchvision downloads them); present but damaged ones raise ``DataError``.
    """
    from torchvision.datasets import MNIST

    if marker:
        for name, digest in marker["md5"].items():
            path = raw / name
            if not path.exists():
                raise DataError(f"{path} is missing from the {marker['name']}. Rebuild it: {REBUILD_HINT}")
            if name not in skip and md5(path) != digest:
                raise DataError(f"{path} is corrupt (MD5 differs from the one recorded). Rebuild it: {REBUILD_HINT}")
    for url_name, digest in MNIST.resources:
        gz = raw / os.path.basename(url_name)
        if gz.exists() and gz.name not in skip and md5(gz) != digest:
            raise DataError(f"{gz} is corrupt (MD5 {md5(gz)}, expected {digest}). Delete it and load again.")
    present = [name for name in RAW_FILES if (raw / name).exists()]
    shapes = {name: check_idx_file(raw / name) for name in present}
    if not marker:
        for name in present:
            digest = OFFICIAL_RAW[name][0]
            if name not in skip and md5(raw / name) != digest:
                raise DataError(
                    f"{raw / name} is not the official MNIST file (its MD5 differs from {digest}). Delete "
                    f"{raw.parent} and load again to re-download, or rebuild it offline: {BUILD_HINT}"
                )
    for part in ("train", "t10k"):
        images, labels = shapes.get(f"{part}-images-idx3-ubyte"), shapes.get(f"{part}-labels-idx1-ubyte")
        if images and labels and images[0] != labels[0]:
            raise DataError(f"{raw}: {images[0]} {part} images but {labels[0]} labels; the files do not belong together.")
    return frozenset(path.name for path in raw.iterdir()) if raw.is_dir() else frozenset()


REBUILD_HINT = "python -m bnlab build-subset --source DIR_WITH_t10k_FILES --root ROOT"
BUILD_HINT = "python -m bnlab build-mnist --train-source DIR_WITH_train_FILES --test-source DIR_WITH_t10k_FILES --root ROOT"


# --- the full MNIST, offline -----------------------------------------------------------------------------------


def read_official(folder: Path, name: str) -> bytes:
    """The uncompressed content of the official file ``name`` from ``folder``, which holds it gzipped
    (``name.gz``, as distributed) or plain; checked against the official MD5 and size."""
    digest, size = OFFICIAL_RAW[name]
    plain, gz = folder / name, folder / f"{name}.gz"
    if gz.exists():
        try:
            content = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as err:
            raise DataError(f"{gz} is not a readable gzip file ({err}): it is truncated or corrupt. Copy it again.") from err
        source = gz
    elif plain.exists():
        content, source = plain.read_bytes(), plain
    else:
        raise DataError(f"{gz} not found (nor {plain.name}): the folder must hold the official MNIST file {name}.gz.")
    if len(content) != size:
        raise DataError(
            f"{source} holds {len(content):,} bytes uncompressed, the official {name} {size:,}: it is truncated or "
            "not the official file. Copy it again."
        )
    if hashlib.md5(content).hexdigest() != digest:
        raise DataError(f"{source} is corrupt: the MD5 of its content differs from the official {digest}. Copy it again.")
    return content


def build_mnist(train_source: str | os.PathLike, test_source: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Build a torchvision-layout root holding the full MNIST from the official IDX files: the 60,000 training
    images from ``train_source`` and the 10,000 test images from ``test_source`` (each folder holds the ``.gz``
    files as distributed, or the uncompressed files).

    Every file's uncompressed content is checked against the official MD5 and size before anything is written;
    the root is written to a temporary folder and moved into place, so an interrupted build never leaves a
    half-written data set. ``torchvision.datasets.MNIST(root, download=True)`` then finds the files and downloads
    nothing. Returns the root.
    """
    sources = {"train": Path(train_source), "t10k": Path(test_source)}
    contents = {name: read_official(sources[name.split("-")[0]], name) for name in OFFICIAL_RAW}
    return write_root(Path(root), contents, marker=None)


def write_root(root: Path, contents: dict[str, bytes], marker: dict | None) -> Path:
    """Write ``{raw file name: content}`` (and the subset's marker) as ``root/MNIST``, replacing what was there,
    through a temporary folder renamed into place."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mnist-", dir=root))
    staging.chmod(0o755)
    try:
        raw = staging / "raw"
        raw.mkdir()
        for name, content in contents.items():
            (raw / name).write_bytes(content)
        if marker is not None:
            marker = {**marker, "md5": {name: md5(raw / name) for name in contents}}
            (staging / SUBSET_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        target = root / "MNIST"
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


# --- the offline MNIST-10k subset ----------------------------------------------------------------------------


def read_subset_marker(root: Path) -> dict | None:
    path = Path(root) / "MNIST" / SUBSET_MARKER
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}). Rebuild the subset: {REBUILD_HINT}") from err


def parse_idx(content: bytes, name: str) -> torch.Tensor:
    """The uint8 array an IDX file's ``content`` holds, in the shape its header declares."""
    shape = idx_shape(content[:16], Path(name))
    body = content[4 + 4 * len(shape) :]
    if len(body) != math.prod(shape):
        raise DataError(f"{name} is truncated: its header declares shape {shape}.")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def idx_bytes(array: torch.Tensor) -> bytes:
    """A uint8 tensor as the bytes of an IDX file (images: 3 dimensions, labels: 1)."""
    magic = 2051 if array.dim() == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.contiguous().numpy().tobytes()


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
    The source files' content is checked against the official MD5s first; the root is written to a temporary folder and moved into place, so an
    interrupted build never leaves a half-written data set. Returns the root.
    """
    source, root = Path(source), Path(root)
    images = parse_idx(read_official(source, "t10k-images-idx3-ubyte"), "t10k-images-idx3-ubyte")
    labels = parse_idx(read_official(source, "t10k-labels-idx1-ubyte"), "t10k-labels-idx1-ubyte")
    if train + val + test > len(labels) or min(train, val, test) <= 0:
        raise ValueError(f"train + val + test must be positive and at most {len(labels)}; got {train}+{val}+{test}.")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    fit, held_out = order[: train + val], order[train + val : train + val + test]

    marker = {
        "name": SUBSET_NAME,
        "description": (
            "The official MNIST test set (10,000 images), shuffled and re-split "
            f"into {train} train / {val} validation / {test} test. Not the full MNIST."
        ),
        "val_size": val,
        "seed": seed,
    }
    contents = {
        "train-images-idx3-ubyte": idx_bytes(images[fit]),
        "train-labels-idx1-ubyte": idx_bytes(labels[fit]),
        "t10k-images-idx3-ubyte": idx_bytes(images[held_out]),
        "t10k-labels-idx1-ubyte": idx_bytes(labels[held_out]),
    }
    return write_root(root, contents, marker)


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
            yield self.split.batch(index)

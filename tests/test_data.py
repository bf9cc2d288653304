import gzip
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torchvision import transforms
from torchvision.datasets import MNIST

from bnlab.data import (
    DATA_ENV,
    FULL_NAME,
    HUGE_PAGE,
    SUBSET_NAME,
    BatchLoader,
    DataError,
    Split,
    build_mnist,
    build_subset,
    data_root,
    empty_on_huge_pages,
    load_mnist,
    to_float,
)


def test_offline_root_loads_through_torchvisions_own_mnist_class(subset_root):
    train = MNIST(str(subset_root), train=True, download=False)
    test = MNIST(str(subset_root), train=False, download=False)
    assert len(train) == 9_000 and len(test) == 1_000
    image, label = train[0]
    assert image.size == (28, 28) and 0 <= label <= 9


def test_subset_is_named_and_split_as_recorded(subset_root):
    data = load_mnist(subset_root)
    assert data.name == SUBSET_NAME == "MNIST-10k subset"
    assert (len(data.train), len(data.val), len(data.test)) == (8_000, 1_000, 1_000)
    assert "MNIST-10k subset" in data.describe()


def test_subset_uses_every_source_image_once(subset_root, t10k_source):
    data = load_mnist(subset_root)
    with gzip.open(t10k_source / "t10k-labels-idx1-ubyte.gz") as f:
        source_labels = torch.frombuffer(bytearray(f.read()[8:]), dtype=torch.uint8).long()
    ours = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    assert torch.equal(torch.bincount(ours, minlength=10), torch.bincount(source_labels, minlength=10))


def test_validation_is_the_last_images_of_the_training_file(subset_root):
    data = load_mnist(subset_root)
    raw = MNIST(str(subset_root), train=True, download=False)
    assert torch.equal(data.val.labels, raw.targets[-1_000:])
    assert torch.equal(data.train.labels, raw.targets[:8_000])


def test_pixels_match_to_tensor(subset_root):
    data = load_mnist(subset_root)
    raw = MNIST(str(subset_root), train=False, download=False, transform=transforms.ToTensor())
    for i in (0, 17, 999):
        assert torch.equal(data.test.images[i], raw[i][0])
    assert data.train.images.dtype == torch.float32 and data.train.images.shape[1:] == (1, 28, 28)


def test_to_float_scales_like_to_tensor_into_fresh_memory():
    pixels = torch.randint(0, 256, (3_000, 28, 28), dtype=torch.uint8)  # 9.4 MB as float32: on huge pages
    images = to_float(pixels)
    assert images.shape == (3_000, 1, 28, 28) and images.is_contiguous()
    assert torch.equal(images, pixels.unsqueeze(1).float().div_(255))
    assert torch.equal(to_float(pixels[:2]), images[:2])  # under one huge page: ordinary memory


def mapping_flags(address: int) -> list[str]:
    """The kernel's VmFlags for the memory mapping that holds ``address`` (Linux)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        span = line.split()[0]
        if "-" in span and all(c in "0123456789abcdef-" for c in span):
            start, end = (int(a, 16) for a in span.split("-"))
            if start <= address < end:
                return next(row.split()[1:] for row in lines[i + 1 :] if row.startswith("VmFlags:"))
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(
    not (sys.platform == "linux" and Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()),
    reason="needs Linux with transparent huge pages",
)
def test_large_tensors_are_marked_for_huge_pages():
    large = empty_on_huge_pages((HUGE_PAGE // 4 + 1,))
    large.fill_(1.0)
    assert "hg" in mapping_flags(large.data_ptr())  # madvise(MADV_HUGEPAGE) took
    assert large.sum().item() == large.numel()


def test_train_samples_keeps_the_first_images_and_the_full_validation_split(subset_root):
    data = load_mnist(subset_root, train_samples=500)
    assert len(data.train) == 500 and len(data.val) == 1_000
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="train_samples"):
            load_mnist(subset_root, train_samples=bad)


def test_a_training_slice_says_so_in_its_name(subset_root):
    assert load_mnist(subset_root, train_samples=500).name == "MNIST-10k subset (first 500 training images)"
    assert load_mnist(subset_root, train_samples=10**6).name == SUBSET_NAME  # more than there are: all of them


def test_root_comes_from_argument_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv(DATA_ENV)
    assert str(data_root()) == "data"


def test_missing_data_offline_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # a port nothing listens on: no network
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path / "empty")
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "build-subset" in message and DATA_ENV in message


def test_truncated_file_is_reported_not_crashed_on(subset_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(subset_root, root)
    raw = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:100_000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist(root)


def test_truncated_file_without_marker_is_reported_as_truncated(subset_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(subset_root, root)
    (root / "MNIST" / "bnlab-subset.json").unlink()  # no MD5s to compare: the size check must catch it
    raw = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-784])
    with pytest.raises(DataError, match="truncated"):
        load_mnist(root, download=False)


def test_corrupt_byte_is_caught_by_md5(subset_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(subset_root, root)
    raw = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(raw.read_bytes())
    data[-1] = (data[-1] + 1) % 10
    raw.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        load_mnist(root)


def test_build_subset_rejects_a_corrupt_source(t10k_source, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(t10k_source, source)
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip file"):
        build_subset(source, tmp_path / "root")
    assert not (tmp_path / "root" / "MNIST").exists()


def test_build_subset_replaces_an_existing_root_whole(t10k_source, tmp_path):
    build_subset(t10k_source, tmp_path, train=100, val=50, test=50)
    build_subset(t10k_source, tmp_path, train=200, val=50, test=50)
    data = load_mnist(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (200, 50, 50)
    assert [p.name for p in tmp_path.iterdir()] == ["MNIST"]  # no staging folder left behind


def test_batch_loader_visits_every_example_once_per_epoch():
    split = Split(torch.arange(10.0).reshape(10, 1), torch.arange(10))
    loader = BatchLoader(split, 3, shuffle=True, drop_last=False, seed=0)
    seen = torch.cat([yb for _, yb in loader])
    assert len(loader) == 4 and sorted(seen.tolist()) == list(range(10))
    assert len(BatchLoader(split, 3, drop_last=True)) == 3


def test_batch_loader_order_depends_only_on_the_seed():
    split = Split(torch.zeros(100, 1), torch.arange(100))
    first = [yb for _, yb in BatchLoader(split, 10, seed=1)]
    again = [yb for _, yb in BatchLoader(split, 10, seed=1)]
    other = [yb for _, yb in BatchLoader(split, 10, seed=2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_bad_shapes_and_sizes_are_rejected():
    with pytest.raises(ValueError, match="images but"):
        Split(torch.zeros(3, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(Split(torch.zeros(3, 1), torch.zeros(3)), 0)


# --- the full MNIST ------------------------------------------------------------------------------------------------


def test_full_mnist_matches_the_official_facts(mnist_root):
    """The facts ../shared/data/mnist-train/README.md gives to check a loader against."""
    train = MNIST(str(mnist_root), train=True, download=False)
    assert tuple(train.data.shape) == (60_000, 28, 28)
    assert train.targets[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    counts = torch.bincount(train.targets, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    pixels = train.data.double() / 255
    assert round(pixels.mean().item(), 4) == 0.1307 and round(pixels.std().item(), 4) == 0.3081


def test_full_mnist_is_named_mnist_and_split_as_in_the_lecture(mnist_root):
    data = load_mnist(mnist_root)
    assert data.name == FULL_NAME == "MNIST"
    assert (len(data.train), len(data.val), len(data.test)) == (54_000, 6_000, 10_000)
    raw = MNIST(str(mnist_root), train=True, download=False)
    assert torch.equal(data.val.labels, raw.targets[-6_000:])  # validation: the last 6,000 training images
    assert load_mnist(mnist_root, train_samples=3_000).name == "MNIST (first 3,000 training images)"


def test_torchvision_downloads_nothing_from_a_built_root(mnist_root, monkeypatch):
    import torchvision.datasets.mnist

    def no_network(*args, **kwargs):
        raise AssertionError("torchvision tried to download")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_network)
    assert len(MNIST(str(mnist_root), train=True, download=True)) == 60_000
    assert len(MNIST(str(mnist_root), train=False, download=True)) == 10_000


def copy_sources(train_source, t10k_source, tmp_path) -> tuple:
    train, t10k = tmp_path / "train", tmp_path / "t10k"
    shutil.copytree(train_source, train)
    shutil.copytree(t10k_source, t10k)
    return train, t10k


def test_build_mnist_names_a_missing_file(train_source, t10k_source, tmp_path):
    train, t10k = copy_sources(train_source, t10k_source, tmp_path)
    (train / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz not found"):
        build_mnist(train, t10k, tmp_path / "root")
    assert not (tmp_path / "root" / "MNIST").exists()


def test_build_mnist_names_a_truncated_file(train_source, t10k_source, tmp_path):
    train, t10k = copy_sources(train_source, t10k_source, tmp_path)
    gz = t10k / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:2_000])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip file.*Copy it again"):
        build_mnist(train, t10k, tmp_path / "root")


def test_build_mnist_names_a_file_with_wrong_content(train_source, t10k_source, tmp_path):
    train, t10k = copy_sources(train_source, t10k_source, tmp_path)
    gz = train / "train-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(gz.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one label changed: same size, other MD5
    gz.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz is corrupt.*MD5"):
        build_mnist(train, t10k, tmp_path / "root")


def test_build_mnist_accepts_uncompressed_files(train_source, t10k_source, tmp_path):
    t10k = tmp_path / "t10k-plain"
    t10k.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (t10k / name).write_bytes(gzip.decompress((t10k_source / f"{name}.gz").read_bytes()))
    build_mnist(train_source, t10k, tmp_path / "root")
    assert len(MNIST(str(tmp_path / "root"), train=False, download=False)) == 10_000


def test_a_raw_file_that_is_not_the_official_one_is_refused(t10k_source, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    content = bytearray(gzip.decompress((t10k_source / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    content[-1] = (content[-1] + 1) % 10
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(content))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not the official MNIST file.*build-mnist"):
        load_mnist(tmp_path, download=False)


def test_a_batch_holds_the_rows_the_index_names_in_its_order():
    split = Split(torch.rand(10, 1, 28, 28), torch.arange(10))
    index = torch.tensor([7, 2, 2, 9])
    images, labels = split.batch(index)
    assert torch.equal(images, split.images[index]) and torch.equal(labels, torch.tensor([7, 2, 2, 9]))

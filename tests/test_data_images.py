"""MNIST IDX and CIFAR-10 binary parsing and preparation (§4.3), on synthetic files written
here with the formats' magic numbers and record layouts, served from a loopback HTTP server."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
from data_helpers import FileServer, closed_port_url, idx_bytes, tar_bytes

from pipeline_lib.data import images
from pipeline_lib.data.download import DownloadError
from pipeline_lib.data.images import (
    ImageFormatError,
    ImageSplits,
    prepare_images,
    read_cifar_batch,
    read_idx,
)

RNG = np.random.default_rng(0)


def cifar_bytes(images_: np.ndarray, labels: np.ndarray) -> bytes:
    records = np.concatenate([labels[:, None], images_.reshape(len(labels), -1)], axis=1)
    return records.astype(np.uint8).tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_idx_round_trip_and_refusals(tmp_path):
    array = RNG.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    good = tmp_path / "x.gz"
    good.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(good), array)
    raw = gzip.decompress(good.read_bytes())
    cases = {
        "magic": (b"\x01\x02" + raw[2:], "magic number"),
        "type": (raw[:2] + b"\x0d" + raw[3:], "not unsigned bytes"),
        "truncated": (raw[:-100], "truncated"),
        "long": (raw + b"\x00", "longer than its header"),
        "gzip": (good.read_bytes()[:50], "damaged gzip"),
    }
    for name, (content, message) in cases.items():
        bad = tmp_path / f"{name}.idx"
        bad.write_bytes(content)
        with pytest.raises(ImageFormatError, match=message):
            read_idx(bad)


def test_cifar_batch_layout_and_refusals(tmp_path):
    pics = RNG.integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    path = tmp_path / "b.bin"
    path.write_bytes(cifar_bytes(pics, labels))
    got, got_labels = read_cifar_batch(path)
    np.testing.assert_array_equal(got, pics)
    np.testing.assert_array_equal(got_labels, labels)
    # channel-major: the first 1,024 pixel bytes of a record are the red plane, row by row
    assert got[1, 0, 0, 5] == path.read_bytes()[3073 + 1 + 5]
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ImageFormatError, match="not a whole number of 3073-byte records"):
        read_cifar_batch(path)
    path.write_bytes(cifar_bytes(pics, np.array([0, 12, 0, 0, 0], dtype=np.uint8)))
    with pytest.raises(ImageFormatError, match="label 12"):
        read_cifar_batch(path)


@pytest.fixture
def mnist_files():
    """Four synthetic MNIST files, served by name, and their checksums."""
    train = RNG.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    test = RNG.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    content = {
        "train_images": idx_bytes(train),
        "train_labels": idx_bytes(np.arange(30) % 10),
        "test_images": idx_bytes(test),
        "test_labels": idx_bytes(np.arange(8) % 10),
    }
    names = {role: name for role, (name, _) in images.MNIST_FILES.items()}
    served = {names[role]: data for role, data in content.items()}
    return served, train, test


def sums(served: dict[str, bytes]) -> dict[str, str]:
    return {name: md5(data) for name, data in served.items()}


def test_prepare_mnist_over_http(tmp_path, mnist_files):
    served, train, test = mnist_files
    with FileServer(served) as server:
        splits = prepare_images(
            "mnist",
            tmp_path / "raw",
            tmp_path / "mnist",
            url=server.base_url,
            val_size=10,
            md5=sums(served),
        )
    assert splits.image_shape == (1, 28, 28) and splits.sizes == {"train": 20, "val": 10, "test": 8}
    np.testing.assert_array_equal(splits.train[:, 0], train[:20])
    np.testing.assert_array_equal(splits.val[:, 0], train[20:])  # the last images: validation
    np.testing.assert_array_equal(splits.test_labels, np.arange(8) % 10)
    again = ImageSplits.load(tmp_path / "mnist")
    np.testing.assert_array_equal(again.val, splits.val)
    assert again.train.dtype == np.uint8 and again.train_labels.dtype == np.int64
    small = prepare_images(
        "mnist",
        tmp_path / "raw",  # the verified downloads are reused: no server needed now
        tmp_path / "small",
        url=closed_port_url(""),
        val_size=10,
        subset=4,
        md5=sums(served),
    )
    assert small.sizes == {"train": 4, "val": 4, "test": 4}


def test_a_wrong_checksum_is_refused_and_leaves_nothing(tmp_path, mnist_files):
    served, _, _ = mnist_files
    expected = sums(served)
    name = images.MNIST_FILES["test_labels"][0]
    served = {**served, name: idx_bytes(np.zeros(8, dtype=np.uint8))}  # other content
    with FileServer(served) as server, pytest.raises(DownloadError, match="(?i)md5"):
        prepare_images(
            "mnist", tmp_path / "raw", tmp_path / "mnist", url=server.base_url, md5=expected
        )
    assert not (tmp_path / "mnist").exists()
    assert not list((tmp_path / "raw").glob("*.part")) and not (tmp_path / "raw" / name).exists()
    # without overrides the reference checksums apply, which synthetic files fail
    with FileServer(served) as server, pytest.raises(DownloadError, match="(?i)md5"):
        prepare_images("mnist", tmp_path / "raw2", tmp_path / "mnist", url=server.base_url)


def test_a_bad_file_behind_a_good_checksum_is_refused(tmp_path, mnist_files):
    """A file that matches its checksum but does not parse (a truncated IDX) stops the
    preparation with an error naming it, and no prepared directory appears."""
    served, _, _ = mnist_files
    role = "train_images"
    name = images.MNIST_FILES[role][0]
    served = {**served, name: gzip.compress(gzip.decompress(served[name])[:-50])}
    with FileServer(served) as server:
        with pytest.raises(ImageFormatError, match=f"{name}.*truncated"):
            prepare_images(
                "mnist",
                tmp_path / "raw",
                tmp_path / "mnist",
                url=server.base_url,
                md5=sums(served),
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_prepare_cifar10_from_the_binary_archive(tmp_path):
    batches, pics, labels = {}, [], []
    for name in (*images._CIFAR_TRAIN, *images._CIFAR_TEST):
        p = RNG.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
        y = RNG.integers(0, 10, size=4, dtype=np.uint8)
        batches[f"cifar-10-batches-bin/{name}"] = cifar_bytes(p, y)
        pics.append(p)
        labels.append(y)
    archive = tar_bytes(batches)
    with FileServer({"cifar-10-binary.tar.gz": archive}) as server:
        splits = prepare_images(
            "cifar10",
            tmp_path / "raw",
            tmp_path / "cifar",
            url=server.url("cifar-10-binary.tar.gz"),
            val_size=6,
            md5={"cifar-10-binary.tar.gz": md5(archive), "size": len(archive)},
        )
    assert splits.sizes == {"train": 14, "val": 6, "test": 4}
    np.testing.assert_array_equal(splits.train, np.concatenate(pics[:5])[:14])
    np.testing.assert_array_equal(splits.val_labels, np.concatenate(labels[:5])[14:])
    np.testing.assert_array_equal(splits.test, pics[5])
    assert not [p for p in (tmp_path / "raw").iterdir() if p.is_dir()]  # extraction cleaned


def test_unknown_names_and_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown image data set 'svhn'"):
        prepare_images("svhn", tmp_path, tmp_path / "x")
    with pytest.raises(ValueError, match="subset"):
        prepare_images("mnist", tmp_path, tmp_path / "x", subset=0)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        ImageSplits.load(tmp_path)

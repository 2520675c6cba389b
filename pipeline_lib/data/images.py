"""MNIST and CIFAR-10 for the image flows of Sparse Flows §4.3 (Table 3, Fig. 1 and 8).

The files are the ones every reference loader reads, fetched with :func:`~pipeline_lib.data.
download.fetch` (mirror directory or URL, retries, resume, atomic, checksummed) and parsed
here, without torchvision:

- **MNIST**: the four gzip-compressed IDX files. IDX is a big-endian header — two zero bytes,
  a type code (``0x08``: unsigned bytes), the number of dimensions — then one 32-bit size per
  dimension and the raw values (:func:`read_idx`).
- **CIFAR-10**: the *binary* version (``cifar-10-binary.tar.gz``), whose batches are records of
  one label byte and 3,072 pixel bytes (1,024 red, green, blue, row-major 32×32;
  :func:`read_cifar_batch`). The Python version of the archive holds pickles, which are never
  read: unpickling a download can execute code.

A prepared data set is an :class:`ImageSplits`: uint8 images ``(N, C, H, W)`` with int64
labels for train / validation / test, stored as ``.npy`` files with ``meta.json`` written last
(the same atomic layout as :class:`~pipeline_lib.data.DataSplits`). Dequantization, flips and
the logit transform are applied to batches at training time, not stored.

Validation split: FFJORD's ``train_cnf.py`` trains on the whole training set and validates on
the test set. Here the last ``val_size`` training images (MNIST 10,000, CIFAR-10 5,000; a
sixth of a training set smaller than twice that) are held out for validation, so that Algorithm 1's per-round validation never sees the test set
(a deliberate difference). ``subset`` keeps the first n images of each split, for small runs.

Example::

    splits = prepare_images("mnist", "resources/downloads", "results/data/mnist",
                            mirror="mirrors/mnist", subset=2000)
    splits.train.shape    # (2000, 1, 28, 28), uint8
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_lib.data.download import extract_archive, fetch
from pipeline_lib.data.splits import SPLIT_NAMES, read_saved, save_array, write_meta

__all__ = [
    "CIFAR10_ARCHIVE",
    "IMAGE_DATASETS",
    "MNIST_FILES",
    "ImageFormatError",
    "ImageSplits",
    "prepare_images",
    "read_cifar_batch",
    "read_idx",
]

IMAGE_DATASETS: tuple[str, ...] = ("mnist", "cifar10")
"""Names accepted by :func:`prepare_images`."""

#: torchvision's first MNIST mirror; each file is checked against its MD5.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: The four MNIST files by role: (file name, MD5 every reference loader checks).
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}


@dataclass(frozen=True)
class _Archive:
    url: str
    md5: str
    size: int


#: The binary CIFAR-10 archive (never the Python version's pickles).
CIFAR10_ARCHIVE = _Archive(
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    size=170_052_171,
)
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = ("test_batch.bin",)
_CIFAR_RECORD = 1 + 3 * 32 * 32

#: Validation images held out of the end of the training set.
VAL_SIZE = {"mnist": 10_000, "cifar10": 5_000}

_FORMAT = "sparseflows.ImageSplits"
_FORMAT_VERSION = 1


class ImageFormatError(ValueError):
    """A downloaded image file is not what its format says; the message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(
            f"{path}: {problem}. Delete the file and prepare the data set again (it is "
            "downloaded anew, or copied from the mirror)."
        )


def read_idx(path: str | Path) -> np.ndarray:
    """The array of an IDX file (gzip-compressed or plain) of unsigned bytes.

    Raises:
        ImageFormatError: a wrong magic number, a type other than unsigned bytes, or a file
            shorter or longer than its header says (truncated, or not IDX).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ImageFormatError(path, f"is a damaged gzip file ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ImageFormatError(path, f"has magic number {raw[:4].hex()!r}, not an IDX file's")
    if raw[2] != 0x08:
        raise ImageFormatError(path, f"holds IDX type 0x{raw[2]:02x}, not unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ImageFormatError(path, "is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        how = "truncated" if len(raw) < expected else "longer than its header says"
        raise ImageFormatError(
            path, f"is {how} ({len(raw)} bytes for shape {shape}, expected {expected})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` and labels ``(N,)`` (uint8) of one CIFAR-10 binary batch.

    Raises:
        ImageFormatError: a size that is not a whole number of 3,073-byte records, or a label
            outside 0..9.
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ImageFormatError(
            path, f"has {raw.size} bytes, not a whole number of {_CIFAR_RECORD}-byte records"
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise ImageFormatError(path, f"has label {int(labels.max())}; CIFAR-10 labels are 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


@dataclass
class ImageSplits:
    """Train / validation / test images of one data set: uint8 ``(N, C, H, W)`` arrays and
    int64 labels."""

    FORMAT = _FORMAT

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray
    val_labels: np.ndarray
    test_labels: np.ndarray

    def __post_init__(self) -> None:
        for split in SPLIT_NAMES:
            images, labels = getattr(self, split), getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(
                    f"ImageSplits.{split} must be uint8 (N, C, H, W), got {images.dtype} "
                    f"{images.shape}"
                )
            if labels.shape != (len(images),):
                raise ValueError(
                    f"ImageSplits.{split}_labels must have shape ({len(images)},), got "
                    f"{labels.shape}"
                )
            setattr(self, f"{split}_labels", labels.astype(np.int64))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(int(s) for s in self.train.shape[1:])  # type: ignore[return-value]

    @property
    def dim(self) -> tuple[int, int, int]:
        """The shape of one example, as :attr:`DataSplits.dim` is a vector's length."""
        return self.image_shape

    @property
    def sizes(self) -> dict[str, int]:
        return {split: len(getattr(self, split)) for split in SPLIT_NAMES}

    def save(self, directory: str | Path) -> None:
        """One ``.npy`` per array, each written atomically, and ``meta.json`` last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys = [k for split in SPLIT_NAMES for k in (split, f"{split}_labels")]
        arrays = {k: save_array(directory, k, getattr(self, k)) for k in keys}
        write_meta(
            directory,
            {
                "format": _FORMAT,
                "version": _FORMAT_VERSION,
                "name": self.name,
                "image_shape": list(self.image_shape),
                "sizes": self.sizes,
                "arrays": arrays,
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> ImageSplits:
        """Read splits written by :meth:`save`.

        Raises:
            FileNotFoundError: no ``meta.json`` (never prepared, or interrupted).
            ValueError: the files disagree with ``meta.json``.
        """
        meta, values = read_saved(
            Path(directory), _FORMAT, _FORMAT_VERSION, "pipeline_lib.data.images.prepare_images"
        )
        return cls(name=meta["name"], **values)


def _split(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    val_size: int | None,
    subset: int | None,
) -> ImageSplits:
    images, labels = train
    if val_size is None:  # the reference split; a small (synthetic) set holds out a sixth
        val_size = VAL_SIZE[name] if len(images) >= 2 * VAL_SIZE[name] else len(images) // 6
    if not 0 < val_size < len(images):
        raise ValueError(f"val_size must be in 1..{len(images) - 1}, got {val_size}")
    cut = len(images) - val_size

    def first(a: np.ndarray) -> np.ndarray:
        return a if subset is None else a[:subset]

    return ImageSplits(
        name=name,
        train=first(images[:cut]),
        val=first(images[cut:]),
        test=first(test[0]),
        train_labels=first(labels[:cut]),
        val_labels=first(labels[cut:]),
        test_labels=first(test[1]),
    )


def _mnist(
    raw_dir: Path, url: str, mirror, val_size: int | None, subset: int | None, md5: dict | None
) -> ImageSplits:
    arrays = {}
    for role, (filename, reference) in MNIST_FILES.items():
        expected = (md5 or {}).get(filename, reference)
        path = fetch(
            url.rstrip("/") + "/" + filename, raw_dir / filename, md5=expected, mirror=mirror
        )
        arrays[role] = read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ImageFormatError(
                raw_dir / MNIST_FILES[f"{split}_images"][0],
                f"holds images {images.shape} for labels {labels.shape}",
            )
        if labels.size and labels.max() > 9:
            raise ImageFormatError(
                raw_dir / MNIST_FILES[f"{split}_labels"][0],
                f"has label {int(labels.max())}; MNIST labels are 0..9",
            )
    train = (arrays["train_images"][:, None], arrays["train_labels"])
    test = (arrays["test_images"][:, None], arrays["test_labels"])
    return _split("mnist", train, test, val_size, subset)


def _cifar10(
    raw_dir: Path, url: str, mirror, val_size: int | None, subset: int | None, md5: dict | None
) -> ImageSplits:
    md5 = md5 or {}
    archive = fetch(
        url,
        raw_dir / "cifar-10-binary.tar.gz",
        md5=md5.get("cifar-10-binary.tar.gz", CIFAR10_ARCHIVE.md5),
        size=md5.get("size", CIFAR10_ARCHIVE.size),
        mirror=mirror,
    )
    with tempfile.TemporaryDirectory(dir=raw_dir) as tmp:
        root = extract_archive(archive, Path(tmp) / "cifar")
        found = {p.name: p for p in root.rglob("*.bin")}
        missing = [n for n in (*_CIFAR_TRAIN, *_CIFAR_TEST) if n not in found]
        if missing:
            raise ImageFormatError(archive, f"lacks the batches {missing}")

        def batches(names):
            parts = [read_cifar_batch(found[n]) for n in names]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        train, test = batches(_CIFAR_TRAIN), batches(_CIFAR_TEST)
    return _split("cifar10", train, test, val_size, subset)


def prepare_images(
    name: str,
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    url: str | None = None,
    mirror: str | Path | None = None,
    val_size: int | None = None,
    subset: int | None = None,
    md5: dict[str, str] | None = None,
) -> ImageSplits:
    """Download (or copy from ``mirror``), verify, parse and store MNIST or CIFAR-10.

    Arguments:
        name: ``mnist`` or ``cifar10``.
        raw_dir: where the downloaded files are kept.
        out_dir: the prepared :class:`ImageSplits` (written to a temporary directory beside
            it and renamed into place, so it is complete or absent).
        url: the MNIST base URL or the CIFAR-10 archive URL (default: the reference ones).
        mirror: a local directory or base URL tried first (``fetch``).
        val_size: training images held out for validation (default :data:`VAL_SIZE`, or a
            sixth of a training set smaller than twice that).
        subset: keep the first ``subset`` images of each split.
        md5: expected MD5 by file name, for files other than the reference ones (and, for
            CIFAR-10, ``"size"``: the archive's size); by default :data:`MNIST_FILES` and
            :data:`CIFAR10_ARCHIVE`. Every download is checked.

    Raises:
        ValueError: an unknown name or bad sizes. ImageFormatError: a file that does not
        parse. :class:`~pipeline_lib.data.DownloadError`: a download or checksum failure.
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}; one of {list(IMAGE_DATASETS)}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of images, got {subset}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    build = {"mnist": _mnist, "cifar10": _cifar10}[name]
    default_url = MNIST_URL if name == "mnist" else CIFAR10_ARCHIVE.url
    splits = build(raw_dir, url or default_url, mirror, val_size, subset, md5)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        splits.save(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return splits

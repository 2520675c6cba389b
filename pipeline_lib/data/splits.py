"""Train/validation/test splits of a density-estimation data set, and their on-disk form.

Every data set of the pipeline (Sparse Flows §4.1 toy sets, §4.2 MAF tabular sets) is handed
to training and evaluation as one :class:`DataSplits`: three float32 ``(N, d)`` tensors, optional
int64 mode labels (toy data with modes), and the standardization that was applied (so plots
and mode metrics can map back to raw coordinates, ``raw = x * std + mean``).

On disk a :class:`DataSplits` is a directory with one ``.npy`` file per array and a
``meta.json`` that lists them. Every file is written to a temporary name in the same directory
and moved into place with :func:`os.replace`, and ``meta.json`` is written last: a directory
either has a complete ``meta.json`` naming complete arrays, or :meth:`DataSplits.load` refuses it.

Example::

    splits = DataSplits(train=x_tr, val=x_va, test=x_te, name="gaussians")
    splits.save("results/data/gaussians")
    again = DataSplits.load("results/data/gaussians")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_lib.io import UnreadableFileError, atomic_write

__all__ = ["DataSplits", "SPLIT_NAMES"]

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
"""The three splits, in the order used everywhere (files, sizes, labels)."""

_FORMAT = "sparseflows.DataSplits"
_FORMAT_VERSION = 1
_META_FILE = "meta.json"


def _load_array(path: Path) -> np.ndarray:
    """One array of a splits directory (no pickles); unreadable raises UnreadableFileError."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UnreadableFileError(
            path,
            f"is unreadable (truncated? {err})",
            f"delete {path.parent} and rerun the same command; the data set will be prepared again",
        ) from None


def save_array(directory: Path, key: str, array: np.ndarray) -> str:
    """Write ``<key>.npy`` into ``directory`` atomically; return its file name."""
    filename = f"{key}.npy"
    atomic_write(directory / filename, lambda f: np.save(f, array))
    return filename


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` atomically: the last file of a saved splits directory."""
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / _META_FILE, lambda f: f.write(text.encode("utf-8")))


def read_saved(
    directory: Path, fmt: str, version: int, how_to_prepare: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``meta.json`` of a saved splits directory of format ``fmt`` and ``version``, and the
    arrays it lists, with each split's length checked against the sizes it records
    (``how_to_prepare`` names what writes such a directory, for the error messages).

    Raises:
        FileNotFoundError: ``directory`` has no ``meta.json`` or misses a listed array.
        ValueError: ``meta.json`` is not such a description, or an array does not match the
            sizes it records.
    """
    meta_path = directory / _META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"No {_META_FILE} in {directory}: the data set was not prepared there (no saved "
            f"{fmt} directory), or writing it was interrupted. Prepare the data set again "
            f"({how_to_prepare})."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{meta_path} is not valid JSON ({err}); delete the directory "
            "and prepare the data set again."
        ) from err
    if meta.get("format") != fmt or meta.get("version") != version:
        raise ValueError(
            f"{meta_path} describes format {meta.get('format')!r} version "
            f"{meta.get('version')!r}, expected {fmt!r} version {version}; "
            "prepare the data set again with this version of the pipeline."
        )
    arrays: dict[str, np.ndarray] = {}
    for key, filename in meta["arrays"].items():
        path = directory / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is listed in {meta_path} but missing; prepare the data set again."
            )
        arrays[key] = _load_array(path)
    for split in SPLIT_NAMES:
        if split not in arrays:
            raise ValueError(f"{meta_path} lists no {split!r} array; prepare it again.")
        expected = meta["sizes"][split]
        if arrays[split].shape[0] != expected:
            raise ValueError(
                f"{directory / meta['arrays'][split]} has {arrays[split].shape[0]} rows but "
                f"{meta_path} records {expected}; the files are inconsistent, prepare the "
                "data set again."
            )
    return meta, arrays


def _writable(array: np.ndarray) -> np.ndarray:
    """A contiguous, writable array (torch cannot share read-only numpy memory)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def _as_data(value: Any, field_name: str) -> torch.Tensor:
    """Coerce a split to a float32 (N, d) tensor, or say what is wrong with it."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(_writable(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"DataSplits.{field_name} must be a torch.Tensor or numpy array of shape (N, d), "
            f"got {type(value).__name__}."
        )
    if value.ndim != 2:
        raise ValueError(
            f"DataSplits.{field_name} must be 2-D (N, d), got shape {tuple(value.shape)}; "
            "reshape flat data to (N, d) before building the splits."
        )
    if not value.is_floating_point():
        raise TypeError(
            f"DataSplits.{field_name} must hold floating-point data, got {value.dtype}."
        )
    return value.to(torch.float32)


def _as_labels(value: Any, field_name: str, n_rows: int) -> torch.Tensor | None:
    """Coerce mode labels to an int64 (N,) tensor matching its split, or None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(_writable(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"DataSplits.{field_name} must be a tensor of integer mode labels or None, "
            f"got {type(value).__name__}."
        )
    if value.is_floating_point() or value.is_complex():
        raise TypeError(f"DataSplits.{field_name} must hold integers, got {value.dtype}.")
    if value.shape != (n_rows,):
        raise ValueError(
            f"DataSplits.{field_name} must have shape ({n_rows},) to match its split, "
            f"got {tuple(value.shape)}."
        )
    return value.to(torch.int64)


def _as_stat(value: Any, field_name: str, dim: int) -> float | torch.Tensor:
    """Keep a scalar statistic as float and a per-column one as a float64 (d,) tensor."""
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(device="cpu", dtype=torch.float64).clone()
    else:
        tensor = torch.from_numpy(np.array(value, dtype=np.float64))
    if tensor.ndim == 0:
        return float(tensor)
    if tensor.shape != (dim,):
        raise ValueError(
            f"DataSplits.{field_name} must be a scalar or have shape ({dim},) (one value per "
            f"column), got {tuple(tensor.shape)}."
        )
    return tensor


@dataclass
class DataSplits:
    """Train/validation/test data of one data set, with the standardization applied to it.

    Arguments:
        train, val, test: float32 tensors of shape ``(N, d)`` (numpy arrays are converted).
        train_labels, val_labels, test_labels: int64 mode labels ``(N,)`` where the data has
            modes (toy mixtures: mode index, spiral arm, ring), else ``None``.
        mean, std: the standardization actually applied, ``x = (raw - mean) / std``: a float
            (toy data: one scalar over all coordinates) or a ``(d,)`` tensor (tabular data:
            per column). ``0.0`` and ``1.0`` when the data was used as is.
        name: data set name, e.g. ``"gaussians"`` or ``"power"``.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    mean: float | torch.Tensor = 0.0
    std: float | torch.Tensor = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        for split in SPLIT_NAMES:
            setattr(self, split, _as_data(getattr(self, split), split))
        dims = {split: getattr(self, split).shape[1] for split in SPLIT_NAMES}
        if len(set(dims.values())) != 1:
            raise ValueError(
                f"DataSplits: all splits must have the same number of columns, got {dims}."
            )
        for split in SPLIT_NAMES:
            field_name = f"{split}_labels"
            rows = getattr(self, split).shape[0]
            setattr(self, field_name, _as_labels(getattr(self, field_name), field_name, rows))
        self.mean = _as_stat(self.mean, "mean", self.dim)
        self.std = _as_stat(self.std, "std", self.dim)

    @property
    def dim(self) -> int:
        """Number of data dimensions ``d``."""
        return int(self.train.shape[1])

    @property
    def sizes(self) -> dict[str, int]:
        """Number of rows per split, e.g. ``{"train": 16380, "val": 8190, "test": 8190}``."""
        return {split: int(getattr(self, split).shape[0]) for split in SPLIT_NAMES}

    @property
    def has_labels(self) -> bool:
        """Whether mode labels are present (for all three splits)."""
        return all(getattr(self, f"{split}_labels") is not None for split in SPLIT_NAMES)

    def unstandardize(self, x: torch.Tensor) -> torch.Tensor:
        """Map standardized points back to raw data coordinates: ``x * std + mean``."""
        std = self.std if isinstance(self.std, float) else self.std.to(x)
        mean = self.mean if isinstance(self.mean, float) else self.mean.to(x)
        return x * std + mean

    def save(self, directory: str | Path) -> None:
        """Write the splits to ``directory`` (created if needed).

        One ``.npy`` per array (``train.npy``, ``train_labels.npy``, ..., and ``mean.npy`` /
        ``std.npy`` for per-column statistics) plus ``meta.json``, each written atomically;
        ``meta.json`` goes last, so a directory with a ``meta.json`` is always complete.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, str] = {}
        for key in (*SPLIT_NAMES, *(f"{s}_labels" for s in SPLIT_NAMES)):
            value = getattr(self, key)
            if value is None:
                continue
            arrays[key] = save_array(directory, key, value.detach().cpu().numpy())
        stats: dict[str, Any] = {}
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, float):
                stats[key] = value
            else:
                stats[key] = {"file": save_array(directory, key, value.detach().cpu().numpy())}
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "name": self.name,
            "dim": self.dim,
            "sizes": self.sizes,
            "arrays": arrays,
            **stats,
        }
        write_meta(directory, meta)

    @classmethod
    def load(cls, directory: str | Path) -> DataSplits:
        """Read splits written by :meth:`save`.

        Raises:
            FileNotFoundError: ``directory`` has no ``meta.json`` or misses a listed array.
            ValueError: ``meta.json`` is not a DataSplits description, or an array does not
                match the sizes it records.
        """
        directory = Path(directory)
        meta, arrays = read_saved(
            directory,
            _FORMAT,
            _FORMAT_VERSION,
            "pipeline_lib.data.prepare_tabular or DataSplits.save",
        )
        values: dict[str, Any] = {k: torch.from_numpy(v) for k, v in arrays.items()}
        for key in ("mean", "std"):
            stat = meta.get(key, 0.0 if key == "mean" else 1.0)
            if isinstance(stat, dict):
                values[key] = torch.from_numpy(_load_array(directory / stat["file"]))
            else:
                values[key] = float(stat)
        return cls(name=meta.get("name", ""), **values)

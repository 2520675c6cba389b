"""Data sets of Sparse Flows (Liebenwein et al., NeurIPS 2021): toy 2-D, MAF tabular and image sets.

One entry point, :func:`load_dataset`, returns a :class:`DataSplits` (train/val/test float32
tensors, optional mode labels, the standardization applied) for

* the toy sets of §4.1 and FFJORD's 2-D sets (:data:`TOY_DATASETS`), generated on the fly from
  a seed (:mod:`pipeline_lib.data.toy`), and
* the five tabular benchmarks of §4.2 (:data:`TABULAR_DATASETS`), read from preprocessed files
  under a data root (:mod:`pipeline_lib.data.tabular`, prepared with :func:`prepare_tabular`,
  which uses :func:`fetch` and :func:`extract_archive` from :mod:`pipeline_lib.data.download`).

MNIST and CIFAR-10 for the image flows of §4.3 are prepared by :func:`prepare_images`
(:mod:`pipeline_lib.data.images`: IDX and CIFAR binary parsers) as uint8
:class:`ImageSplits`.

Example::

    splits = load_dataset("gaussians", seed=1)
    splits = load_dataset("power", root="resources/data")   # after prepare_tabular("power", …)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_lib.data.download import (
    ArchiveError,
    DownloadError,
    ensure_extracted,
    extract_archive,
    fetch,
)
from pipeline_lib.data.images import IMAGE_DATASETS, ImageSplits, prepare_images
from pipeline_lib.data.splits import DataSplits
from pipeline_lib.data.tabular import (
    MAF_ARCHIVE_URL,
    TABULAR_DATASETS,
    load_tabular,
    prepare_tabular,
    preprocess_tabular,
)
from pipeline_lib.data.toy import TOY_DATASETS, generate_toy, toy_modes

__all__ = [
    "ALL_DATASETS",
    "load_splits",
    "ArchiveError",
    "DataSplits",
    "DownloadError",
    "IMAGE_DATASETS",
    "ImageSplits",
    "MAF_ARCHIVE_URL",
    "TABULAR_DATASETS",
    "TOY_DATASETS",
    "ensure_extracted",
    "extract_archive",
    "fetch",
    "generate_toy",
    "load_dataset",
    "prepare_images",
    "prepare_tabular",
    "preprocess_tabular",
    "toy_modes",
]

ALL_DATASETS: tuple[str, ...] = TOY_DATASETS + TABULAR_DATASETS
"""Every name :func:`load_dataset` accepts."""


_TOY_OPTIONS = frozenset({"n_per_mode", "n_samples", "noise"})
_TABULAR_OPTIONS = frozenset(
    {
        "download",
        "url",
        "mirror",
        "sha256",
        "md5",
        "max_extract_bytes",
        "force",
        "retries",
        "timeout",
    }
)


def load_splits(directory: str | Path) -> DataSplits | ImageSplits:
    """A prepared data directory: :class:`ImageSplits` where its ``meta.json`` says so, else
    :class:`DataSplits`."""
    import json

    meta = Path(directory) / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("format") == ImageSplits.FORMAT:
        return ImageSplits.load(directory)
    return DataSplits.load(directory)


def _check_options(name: str, kwargs: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"load_dataset({name!r}) got unsupported option(s) {unknown}; "
            f"{name} accepts {', '.join(sorted(allowed))}."
        )


def load_dataset(
    name: str, root: str | Path | None = None, seed: int = 0, **kwargs: Any
) -> DataSplits:
    """Load a data set by name (case-insensitive).

    Arguments:
        name: a toy set (:data:`TOY_DATASETS`) or a tabular set (:data:`TABULAR_DATASETS`).
        root: data directory for tabular sets (preprocessed splits in ``root/<name>/``);
            ignored for toy sets.
        seed: random seed of toy sets. Tabular splits are fixed by the MAF preprocessing and
            do not depend on it.
        kwargs: toy sets: ``n_per_mode``, ``n_samples``, ``noise`` (see :func:`generate_toy`);
            tabular sets: ``download=True`` to prepare missing splits, plus ``url``,
            ``mirror``, ``sha256`` for :func:`prepare_tabular`.

    Raises:
        ValueError: unknown name (the message lists the valid ones), or a tabular set
            without ``root``.
        FileNotFoundError: a tabular set that has not been prepared under ``root``.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key in TOY_DATASETS:
        _check_options(key, kwargs, _TOY_OPTIONS)
        return generate_toy(key, seed=seed, **kwargs)
    if key in TABULAR_DATASETS:
        _check_options(key, kwargs, _TABULAR_OPTIONS)
        return load_tabular(key, root, **kwargs)
    raise ValueError(
        f"Unknown data set {name!r}. Valid names: toy {', '.join(TOY_DATASETS)}; "
        f"tabular {', '.join(TABULAR_DATASETS)}."
    )

"""The five tabular density-estimation benchmarks of MAF (Papamakarios et al. 2017).

Sparse Flows §4.2 (Table 2, Tables S4–S8) evaluates on POWER, GAS, HEPMASS, MINIBOONE and
BSDS300, "prepared based on the instructions given by Papamakarios et al. (2017) and Grathwohl
et al. (2019)": the raw files of the MAF data archive (Zenodo record 1161203, ``data.tar.gz``,
the archive FFJORD's README points to), preprocessed exactly as the MAF code
(``datasets/{power,gas,hepmass,miniboone,bsds300}.py``, and FFJORD's copy of it) does:

``power`` (6 dims)
    ``power/data.npy`` (2,049,280 × 8): rows shuffled with ``RandomState(42)``; columns 3
    (global intensity) and 1 (global reactive power) deleted; uniform noise from the same
    generator, drawn in this order, added: ``0.01·U`` to voltage, ``0.001·U`` to global active
    power, ``U`` to each of the three sub-meterings, none to the time column; last 10 % test,
    last 10 % of the rest validation; standardized per column with the mean and (population)
    standard deviation of training and validation rows together.
``gas`` (8 dims)
    ``gas/ethylene_CO.pickle`` (pandas DataFrame, 1,052,065 rows; read by
    :func:`read_dataframe_pickle`, which refuses anything but a DataFrame's own classes): columns ``Meth``, ``Eth``,
    ``Time`` dropped; then, while any column has a correlation above 0.98 with another one,
    the first such column is dropped *by name* (a repeated name drops every column carrying
    it, as ``DataFrame.drop`` does); standardized with the mean and (sample, ``ddof=1``)
    standard deviation of *all* rows; then split: last 10 % test, last 10 % of the rest
    validation.
``hepmass`` (21 dims)
    ``hepmass/1000_train.csv`` and ``1000_test.csv``: rows of the signal class (first column
    == 1) kept and the label column dropped; the test file's last column dropped as well (it
    has one column more than the training file); standardized with the training rows' mean and
    sample std; features whose *smallest* value occurs more than 5 times among the training
    rows dropped (the reference's "too many re-occurring values" rule: it sorts the value counts
    by value and takes the first); last 10 % of the training rows validation.
``miniboone`` (43 dims)
    ``miniboone/data.npy`` (already cleaned, 36,488 rows): last 10 % test, last 10 % of the
    rest validation, standardized with the mean and population std of training and validation
    rows together.
``bsds300`` (63 dims)
    ``BSDS300/BSDS300.hdf5`` datasets ``train``, ``validation``, ``test`` used as they are.

All fractions are computed as ``int(0.1 * n)``, like the reference, which gives the published
split sizes (:data:`PAPER_SPLIT_SIZES`). The splits are fixed by the reference, so there is no
seed. Outputs are float32 and are saved with :meth:`DataSplits.save`, whose ``mean``/``std``
hold the per-column standardization that was applied.

Directory layout under a data ``root`` used by :func:`prepare_tabular`::

    root/downloads/data.tar.gz     the archive (kept, so extraction can be redone)
    root/maf/data/<dataset>/...    the extracted raw files
    root/<name>/                   preprocessed splits (train.npy, val.npy, test.npy, meta.json)

Example::

    splits = prepare_tabular("miniboone", "resources/data", mirror="mirrors/maf")
    splits.dim   # 43
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pipeline_lib.data.download import (
    DEFAULT_MAX_EXTRACT_BYTES,
    ensure_extracted,
    fetch,
    url_basename,
)
from pipeline_lib.data.splits import DataSplits
from pipeline_lib.io import exclusive_lock

__all__ = [
    "GAS_CORRELATION_THRESHOLD",
    "HEPMASS_MAX_REPEATS",
    "HOLDOUT_FRACTION",
    "MAF_ARCHIVE_MD5",
    "MAF_ARCHIVE_SHA256",
    "MAF_ARCHIVE_URL",
    "PAPER_SPLIT_SIZES",
    "POWER_SHUFFLE_SEED",
    "RAW_FILES",
    "TABULAR_DATASETS",
    "TABULAR_DIMS",
    "drop_correlated_columns",
    "holdout_size",
    "load_tabular",
    "maf_split_sizes",
    "prepare_tabular",
    "preprocess_tabular",
    "read_dataframe_pickle",
    "repetitive_features",
]

logger = logging.getLogger(__name__)

MAF_ARCHIVE_URL = "https://zenodo.org/record/1161203/files/data.tar.gz"
"""The MAF data archive (Papamakarios et al. 2017) on Zenodo, as linked from FFJORD's README."""

MAF_ARCHIVE_MD5 = "9b9c9b0375315ad270eba4ce80c093ab"
"""MD5 of the archive, as Zenodo publishes it and public MAF loaders verify it."""

MAF_ARCHIVE_SHA256: str | None = None
"""SHA-256 of the archive: Zenodo publishes only MD5, so ``None`` unless a caller passes one."""

TABULAR_DATASETS: tuple[str, ...] = ("power", "gas", "hepmass", "miniboone", "bsds300")
"""Names accepted by :func:`preprocess_tabular` / :func:`prepare_tabular`."""

TABULAR_DIMS: dict[str, int] = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}
"""Dimension of each data set after preprocessing of the real data."""

PAPER_SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "power": (1_659_917, 184_435, 204_928),
    "gas": (852_174, 94_685, 105_206),
    "hepmass": (315_123, 35_013, 174_987),
    "miniboone": (29_556, 3_284, 3_648),
    "bsds300": (1_000_000, 50_000, 250_000),
}
"""(train, validation, test) sizes of the real data after preprocessing."""

RAW_FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
"""Raw files of each data set, relative to the archive's ``data`` directory."""

HOLDOUT_FRACTION = 0.1
"""Fraction held out for testing and then, of the rest, for validation (MAF reference)."""

POWER_SHUFFLE_SEED = 42
"""Seed of the ``numpy.random.RandomState`` that shuffles POWER and draws its noise."""

GAS_CORRELATION_THRESHOLD = 0.98
"""GAS columns correlated above this with another column are dropped."""

HEPMASS_MAX_REPEATS = 5
"""HEPMASS features whose smallest value occurs more often than this are dropped."""

_POWER_RAW_COLUMNS = 8
_RAW_SUBDIR = "maf"
_DOWNLOAD_SUBDIR = "downloads"


def _canonical(name: str) -> str:
    key = name.strip().lower()
    if key not in TABULAR_DATASETS:
        raise ValueError(
            f"Unknown tabular data set {name!r}; valid names are: {', '.join(TABULAR_DATASETS)}."
        )
    return key


def holdout_size(n: int, fraction: float = HOLDOUT_FRACTION) -> int:
    """Rows held out from ``n``: ``int(fraction * n)``, computed as the MAF reference does."""
    return int(fraction * n)


def maf_split_sizes(name: str, n_rows: int, n_test_rows: int | None = None) -> tuple[int, int, int]:
    """(train, validation, test) sizes the MAF preprocessing produces from ``n_rows`` raw rows.

    Arguments:
        name: ``power``, ``gas`` or ``miniboone`` (test = last 10 %, validation = last 10 %
            of the rest), or ``hepmass`` (``n_rows`` = signal rows of the training file,
            validation = last 10 % of them; ``n_test_rows`` = signal rows of the test file).

    Example::

        maf_split_sizes("power", 2_049_280)   # (1659917, 184435, 204928)
    """
    key = _canonical(name)
    if key == "bsds300":
        raise ValueError("BSDS300 comes with its own train/validation/test splits in the HDF5.")
    if key == "hepmass":
        if n_test_rows is None:
            raise ValueError(
                "hepmass: pass n_test_rows, the number of signal rows of the test file."
            )
        n_val = holdout_size(n_rows)
        return n_rows - n_val, n_val, n_test_rows
    n_test = holdout_size(n_rows)
    rest = n_rows - n_test
    n_val = holdout_size(rest)
    return rest - n_val, n_val, n_test


def _checked_sizes(name: str, n_rows: int, n_test_rows: int | None = None) -> tuple[int, int, int]:
    """:func:`maf_split_sizes`, refusing inputs too small to hold anything out."""
    sizes = maf_split_sizes(name, n_rows, n_test_rows)
    if min(sizes) < 1:
        raise ValueError(
            f"{name}: {n_rows} rows give splits of sizes {sizes}; every split needs at least "
            "one row. The raw file is truncated or not the expected one: re-extract or "
            "re-download the archive."
        )
    return sizes


def drop_correlated_columns(
    frame: pd.DataFrame, threshold: float = GAS_CORRELATION_THRESHOLD
) -> pd.DataFrame:
    """Drop columns correlated above ``threshold`` with another column, one at a time (GAS).

    As the MAF reference: count, per column, the columns it correlates with above
    ``threshold`` (itself included); while any count exceeds 1, drop the *first* such column
    **by name** and recompute. With repeated column names every column of that name is dropped.
    """
    while True:
        counts = (frame.corr() > threshold).to_numpy().sum(axis=1)
        over = np.flatnonzero(counts > 1)
        if over.size == 0:
            return frame
        name = frame.columns[over[0]]
        logger.info("gas: dropping column %r (correlation > %s)", name, threshold)
        frame = frame.drop(columns=name)


def repetitive_features(data: np.ndarray, max_repeats: int = HEPMASS_MAX_REPEATS) -> list[int]:
    """Indices of columns whose smallest value occurs more than ``max_repeats`` times (HEPMASS).

    This is what the MAF reference computes under the name ``max_count``: it sorts each
    feature's value counts by value and takes the first, i.e. the count of the minimum.
    """
    if np.isnan(data).any():
        bad = np.flatnonzero(np.isnan(data).any(axis=0)).tolist()
        raise ValueError(
            f"hepmass: standardized training features {bad} contain NaN (a constant column has "
            "zero standard deviation); the CSV files are not the expected MAF ones."
        )
    minima = data.min(axis=0)
    counts = (data == minima).sum(axis=0)
    return [int(j) for j in np.flatnonzero(counts > max_repeats)]


def _standardize_inplace(data: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    data -= mean
    data /= std


def _load_power(data_dir: Path) -> DataSplits:
    data = np.load(data_dir / RAW_FILES["power"][0])
    if data.ndim != 2 or data.shape[1] != _POWER_RAW_COLUMNS:
        raise ValueError(
            f"power: expected a (N, {_POWER_RAW_COLUMNS}) array in {RAW_FILES['power'][0]}, got "
            f"shape {data.shape}; the file is not the MAF one."
        )
    rng = np.random.RandomState(POWER_SHUFFLE_SEED)
    rng.shuffle(data)
    n = data.shape[0]
    # np.delete(…, 3) then np.delete(…, 1) in the reference: global intensity, reactive power.
    data = np.delete(data, [1, 3], axis=1).astype(np.float64, copy=False)
    # Columns now: active power, voltage, sub-metering 1-3, time. Noise drawn in the
    # reference's order (voltage, active power, sub-meterings); none for time.
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    data[:, 0:1] += gap_noise
    data[:, 1:2] += voltage_noise
    del voltage_noise, gap_noise
    data[:, 2:5] += rng.rand(n, 3)
    n_train, n_val, _ = _checked_sizes("power", n)
    train_val = data[: n_train + n_val]
    mean, std = train_val.mean(axis=0), train_val.std(axis=0)
    _standardize_inplace(data, mean, std)
    return _splits_from_rows("power", data.astype(np.float32), n_train, n_val, mean, std)


def _splits_from_rows(
    name: str, data: np.ndarray, n_train: int, n_val: int, mean: np.ndarray, std: np.ndarray
) -> DataSplits:
    return DataSplits(
        train=data[:n_train],
        val=data[n_train : n_train + n_val],
        test=data[n_train + n_val :],
        mean=mean,
        std=std,
        name=name,
    )


#: The only globals a DataFrame pickle may name (checked before and after pandas' own renaming
#: of old module paths): the frame, its block manager and blocks, its indexes, NumPy's array
#: reconstruction, and the builtins pickle protocols use for slices and bytes. These are what a
#: frame of float columns with string labels in an object index needs (the MAF archive's, and
#: ``DataFrame.to_pickle`` of such a frame today). Anything else (``os.system``,
#: ``builtins.eval``, pyarrow's buffer reconstruction, ...) is refused.
_PICKLE_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        *((b, n) for b in ("builtins", "__builtin__") for n in ("slice", "bytearray")),
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(
            (f"numpy.{core}.{mod}", name)
            for core in ("core", "_core")
            for mod, name in (
                ("multiarray", "_reconstruct"),
                ("multiarray", "scalar"),
                ("numeric", "_frombuffer"),
            )
        ),
        *(("pandas", n) for n in ("DataFrame", "Index", "RangeIndex")),
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.internals", "BlockManager"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.blocks", "new_block"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
    }
)


def read_dataframe_pickle(path: str | Path) -> pd.DataFrame:
    """Read a pickled DataFrame without running code from it.

    :func:`pandas.read_pickle` runs whatever a pickle names, so a crafted file in a downloaded
    archive could execute code. This unpickler resolves old pandas module paths the way
    pandas does (``pandas.compat.pickle_compat``) and then allows only the classes and
    functions of :data:`_PICKLE_ALLOWED`; it also refuses to set attributes on a class (a
    pickle's BUILD of a class object would patch it for the whole process). Anything else
    raises :class:`pickle.UnpicklingError` naming the global and the file.
    """
    from pandas.compat.pickle_compat import Unpickler as PandasUnpickler
    from pandas.compat.pickle_compat import _class_locations_map

    path = Path(path)
    fix = (
        "refusing to load it (the file is not the MAF one, or was tampered with). Delete the "
        "extracted archive and get data.tar.gz again from a trusted source (its MD5 is checked)."
    )

    class _Restricted(PandasUnpickler):
        dispatch = PandasUnpickler.dispatch.copy()

        def find_class(self, module: str, name: str):
            key = (module, name)
            if key not in _PICKLE_ALLOWED and _class_locations_map.get(key) not in _PICKLE_ALLOWED:
                raise pickle.UnpicklingError(
                    f"{path} names {module}.{name}, which a DataFrame pickle does not need: {fix}"
                )
            return super().find_class(module, name)

        def load_build(self) -> None:
            if isinstance(self.stack[-2], type):
                raise pickle.UnpicklingError(
                    f"{path} sets attributes of the class {self.stack[-2].__name__}: {fix}"
                )
            super().load_build()

        dispatch[pickle.BUILD[0]] = load_build

    with open(path, "rb") as handle:
        frame = _Restricted(handle, encoding="latin1").load()
    if not isinstance(frame, pd.DataFrame):
        raise pickle.UnpicklingError(f"{path} holds a {type(frame).__name__}, not a DataFrame")
    return frame


def _load_gas(data_dir: Path) -> DataSplits:
    frame = read_dataframe_pickle(data_dir / RAW_FILES["gas"][0])
    missing = [c for c in ("Meth", "Eth", "Time") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"gas: {RAW_FILES['gas'][0]} has no column(s) {missing}; columns are "
            f"{list(frame.columns)}. The file is not the MAF one."
        )
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    frame = drop_correlated_columns(frame)
    mean, std = frame.mean().to_numpy(), frame.std().to_numpy()
    data = frame.to_numpy(dtype=np.float64, copy=True)
    del frame
    _standardize_inplace(data, mean, std)
    n_train, n_val, _ = _checked_sizes("gas", len(data))
    return _splits_from_rows("gas", data.astype(np.float32), n_train, n_val, mean, std)


def _load_hepmass(data_dir: Path) -> DataSplits:
    train_path, test_path = (data_dir / f for f in RAW_FILES["hepmass"])
    train = pd.read_csv(train_path, index_col=False)
    test = pd.read_csv(test_path, index_col=False)
    # Signal class only (first column is the label), label dropped.
    train = train[train[train.columns[0]] == 1].drop(columns=train.columns[0])
    test = test[test[test.columns[0]] == 1].drop(columns=test.columns[0])
    # The test file carries one column more than the training file; the reference drops it.
    test = test.drop(columns=test.columns[-1])
    if list(test.columns) != list(train.columns):
        raise ValueError(
            "hepmass: after dropping the label (and the test file's extra last column) the "
            f"columns differ: train {list(train.columns)} vs test {list(test.columns)}. The CSV "
            "files are not the MAF ones (1000_train.csv / 1000_test.csv)."
        )
    mean, std = train.mean().to_numpy(), train.std().to_numpy()
    train_x = train.to_numpy(dtype=np.float64, copy=True)
    test_x = test.to_numpy(dtype=np.float64, copy=True)
    del train, test
    _standardize_inplace(train_x, mean, std)
    _standardize_inplace(test_x, mean, std)
    drop = repetitive_features(train_x)
    keep = np.array([j for j in range(train_x.shape[1]) if j not in drop], dtype=np.int64)
    logger.info("hepmass: dropping repetitive features %s", drop)
    train_x, test_x = train_x[:, keep], test_x[:, keep]
    n_train, n_val, _ = _checked_sizes("hepmass", len(train_x), len(test_x))
    train_x = train_x.astype(np.float32)
    return DataSplits(
        train=train_x[:n_train],
        val=train_x[n_train:],
        test=test_x.astype(np.float32),
        mean=mean[keep],
        std=std[keep],
        name="hepmass",
    )


def _load_miniboone(data_dir: Path) -> DataSplits:
    data = np.load(data_dir / RAW_FILES["miniboone"][0]).astype(np.float64, copy=False)
    if data.ndim != 2:
        raise ValueError(f"miniboone: expected a 2-D array, got shape {data.shape}.")
    n_train, n_val, _ = _checked_sizes("miniboone", len(data))
    train_val = data[: n_train + n_val]
    mean, std = train_val.mean(axis=0), train_val.std(axis=0)
    data = (data - mean) / std
    return _splits_from_rows("miniboone", data.astype(np.float32), n_train, n_val, mean, std)


def _load_bsds300(data_dir: Path) -> DataSplits:
    path = data_dir / RAW_FILES["bsds300"][0]
    with h5py.File(path, "r") as handle:
        missing = [k for k in ("train", "validation", "test") if k not in handle]
        if missing:
            raise ValueError(
                f"bsds300: {path.name} has no dataset(s) {missing}; it holds {list(handle)}. "
                "The file is not the MAF one."
            )
        # Converted to float32 while reading, without a float64 copy in memory.
        train, val, test = (
            handle[k].astype(np.float32)[()] for k in ("train", "validation", "test")
        )
    return DataSplits(train=train, val=val, test=test, name="bsds300")


_LOADERS = {
    "power": _load_power,
    "gas": _load_gas,
    "hepmass": _load_hepmass,
    "miniboone": _load_miniboone,
    "bsds300": _load_bsds300,
}


def _find_data_dir(name: str, raw_dir: Path) -> Path:
    """The directory holding ``<dataset>/...`` raw files: ``raw_dir`` or ``raw_dir/data``."""
    for candidate in (raw_dir / "data", raw_dir):
        if all((candidate / f).is_file() for f in RAW_FILES[name]):
            return candidate
    expected = ", ".join(str(raw_dir / "data" / f) for f in RAW_FILES[name])
    raise FileNotFoundError(
        f"{name}: raw file(s) not found; expected {expected} (or the same without 'data/'). "
        "Run prepare_tabular() to download and extract the MAF archive, or point raw_dir at "
        "the extracted archive."
    )


def preprocess_tabular(name: str, raw_dir: str | Path, out_dir: str | Path) -> DataSplits:
    """Preprocess one MAF data set from its raw files and save the splits.

    Arguments:
        name: one of :data:`TABULAR_DATASETS` (case-insensitive).
        raw_dir: the extracted archive (holding ``data/``) or its ``data`` directory.
        out_dir: where the float32 splits are written with :meth:`DataSplits.save`
            (atomically, ``meta.json`` last).

    Returns:
        The :class:`DataSplits` that were saved.
    """
    key = _canonical(name)
    data_dir = _find_data_dir(key, Path(raw_dir))
    logger.info("preprocessing %s from %s", key, data_dir)
    splits = _LOADERS[key](data_dir)
    sizes = tuple(splits.sizes.values())
    if splits.dim != TABULAR_DIMS[key]:
        logger.warning(
            "%s: got %d dimensions, the real data gives %d (expected for synthetic test data, "
            "a problem otherwise)",
            key,
            splits.dim,
            TABULAR_DIMS[key],
        )
    elif sizes == PAPER_SPLIT_SIZES[key]:
        logger.info("%s: split sizes %s match the published ones", key, sizes)
    splits.save(out_dir)
    logger.info("saved %s splits %s (dim %d) to %s", key, sizes, splits.dim, out_dir)
    return splits


def prepare_tabular(
    name: str,
    root: str | Path,
    url: str = MAF_ARCHIVE_URL,
    mirror: str | Path | None = None,
    sha256: str | None = MAF_ARCHIVE_SHA256,
    *,
    md5: str | None = MAF_ARCHIVE_MD5,
    max_extract_bytes: int | None = DEFAULT_MAX_EXTRACT_BYTES,
    force: bool = False,
    retries: int = 3,
    timeout: float = 60,
) -> DataSplits:
    """Download (once), extract (once) and preprocess one MAF data set under ``root``.

    Steps, each skipped when its result already exists: :func:`fetch` the archive to
    ``root/downloads/``, :func:`extract_archive` it to ``root/maf/``, and
    :func:`preprocess_tabular` into ``root/<name>/``. Download and extraction hold lock files
    so that concurrent jobs preparing different data sets share one download and extraction.

    Arguments:
        name: one of :data:`TABULAR_DATASETS`.
        root: data directory.
        url: archive URL (default :data:`MAF_ARCHIVE_URL`).
        mirror: local directory or base URL holding ``data.tar.gz``, tried first.
        sha256: expected SHA-256 of the archive, or None.
        md5: expected MD5 of the archive (default: the published one), or None.
        max_extract_bytes: refuse an archive whose members add up to more than this.
        force: preprocess again even if ``root/<name>/meta.json`` exists.
        retries, timeout: passed to :func:`fetch`.

    Returns:
        The preprocessed :class:`DataSplits`.
    """
    key = _canonical(name)
    root = Path(root)
    out_dir = root / key
    if not force and (out_dir / "meta.json").is_file():
        logger.info("%s already prepared in %s", key, out_dir)
        return DataSplits.load(out_dir)
    raw_dir = root / _RAW_SUBDIR
    if not raw_dir.is_dir():
        archive = root / _DOWNLOAD_SUBDIR / url_basename(url)
        with exclusive_lock(archive.with_name(f".{archive.name}.lock")):
            fetch(
                url,
                archive,
                sha256=sha256,
                md5=md5,
                mirror=mirror,
                retries=retries,
                timeout=timeout,
            )
        ensure_extracted(archive, raw_dir, max_extract_bytes)
    return preprocess_tabular(key, raw_dir, out_dir)


def load_tabular(
    name: str, root: str | Path | None, *, download: bool = False, **prepare_kwargs: object
) -> DataSplits:
    """Load preprocessed splits from ``root/<name>``, preparing them first if asked.

    Arguments:
        name: one of :data:`TABULAR_DATASETS`.
        root: data directory used by :func:`prepare_tabular`.
        download: if the splits are missing, run :func:`prepare_tabular` (downloads the
            archive unless it is already under ``root``); otherwise raise.
        prepare_kwargs: passed to :func:`prepare_tabular` (``url``, ``mirror``, ``sha256``).
    """
    key = _canonical(name)
    if root is None:
        raise ValueError(
            f"{key} is a tabular data set: pass root=, the data directory holding the "
            f"preprocessed splits in <root>/{key}/ (see prepare_tabular)."
        )
    out_dir = Path(root) / key
    if (out_dir / "meta.json").is_file():
        return DataSplits.load(out_dir)
    if download:
        return prepare_tabular(key, root, **prepare_kwargs)  # type: ignore[arg-type]
    raise FileNotFoundError(
        f"No preprocessed {key} data in {out_dir}. Run "
        f"pipeline_lib.data.prepare_tabular({key!r}, {os.fspath(root)!r}) (downloads the MAF "
        "archive, about 1 GB, unless a mirror is given), or call load_dataset(..., "
        "download=True)."
    )

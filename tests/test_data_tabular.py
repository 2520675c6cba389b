"""MAF tabular data (Sparse Flows §4.2): split arithmetic, preprocessing rules, and the full
download → extract → preprocess path against synthetic raw files served on loopback."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from data_helpers import (
    GAS_COLUMNS,
    HEPMASS_DISCRETE,
    FileServer,
    MafRawSizes,
    closed_port_url,
    make_maf_tree,
    pack_tar_gz,
)

from pipeline_lib.data import DataSplits, load_dataset
from pipeline_lib.data.tabular import (
    PAPER_SPLIT_SIZES,
    TABULAR_DATASETS,
    TABULAR_DIMS,
    drop_correlated_columns,
    holdout_size,
    maf_split_sizes,
    prepare_tabular,
    preprocess_tabular,
    repetitive_features,
)

SIZES = MafRawSizes()


# -- split arithmetic, without any data ---------------------------------------------------------


def test_split_sizes_reproduce_the_published_sizes() -> None:
    assert maf_split_sizes("power", 2_049_280) == PAPER_SPLIT_SIZES["power"]
    assert maf_split_sizes("gas", 1_052_065) == PAPER_SPLIT_SIZES["gas"]
    assert maf_split_sizes("miniboone", 36_488) == PAPER_SPLIT_SIZES["miniboone"]
    assert maf_split_sizes("HEPMASS", 350_136, 174_987) == PAPER_SPLIT_SIZES["hepmass"]
    with pytest.raises(ValueError, match="own train/validation/test"):
        maf_split_sizes("bsds300", 10)
    with pytest.raises(ValueError, match="n_test_rows"):
        maf_split_sizes("hepmass", 100)


def test_holdout_uses_the_reference_arithmetic() -> None:
    for n in (0, 9, 10, 11, 99, 1001, 36_488, 2_049_280):
        assert holdout_size(n) == int(0.1 * n)


# -- preprocessing rules ------------------------------------------------------------------------


def test_correlated_columns_dropped_first_of_pair_by_name() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(500)
    frame = pd.DataFrame(
        {"a": a, "b": a + 0.01 * rng.standard_normal(500), "c": rng.standard_normal(500)}
    )
    assert list(drop_correlated_columns(frame).columns) == ["b", "c"]
    # A repeated name drops every column carrying it (as DataFrame.drop does).
    dup = pd.DataFrame(np.column_stack([a, a * 2.0, rng.standard_normal(500), a + 1.0]))
    dup.columns = ["s", "t", "s", "u"]
    assert list(drop_correlated_columns(dup).columns) == ["u"]


def test_repetitive_features_count_the_smallest_value() -> None:
    data = np.zeros((20, 3))
    data[:, 0] = np.arange(20.0)  # all distinct: kept
    data[:, 1] = np.r_[np.zeros(6), np.arange(1.0, 15.0)]  # minimum 6 times: dropped
    data[:, 2] = np.r_[-1.0, np.full(19, 7.0)]  # a value repeats, the minimum is unique: kept
    assert repetitive_features(data) == [1]
    with pytest.raises(ValueError, match="NaN"):
        repetitive_features(np.full((4, 2), np.nan))


# -- full path against a loopback server ------------------------------------------------------


@pytest.fixture(scope="module")
def maf(tmp_path_factory):
    """Synthetic MAF archive served on loopback, all five data sets prepared from it."""
    base = tmp_path_factory.mktemp("maf")
    data_dir = make_maf_tree(base / "src", SIZES)
    archive = pack_tar_gz(data_dir, base / "data.tar.gz")
    root = base / "root"
    with FileServer({"data.tar.gz": archive.read_bytes()}) as server:
        url = server.url("data.tar.gz")
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        splits = {n: prepare_tabular(n, root, url=url, md5=md5) for n in TABULAR_DATASETS}
        yield {
            "splits": splits,
            "raw": data_dir,
            "root": root,
            "server": server,
            "url": url,
            "archive": archive,
            "md5": md5,
        }


def test_archive_downloaded_and_extracted_once(maf) -> None:
    assert maf["server"].requests == [("data.tar.gz", None)]
    root = maf["root"]
    assert (root / "downloads" / "data.tar.gz").read_bytes() == maf["archive"].read_bytes()
    assert (root / "maf" / "data" / "power" / "data.npy").is_file()
    # Prepared again: read from disk, no request.
    again = prepare_tabular("power", root, url=maf["url"])
    assert torch.equal(again.train, maf["splits"]["power"].train)
    assert len(maf["server"].requests) == 1


@pytest.mark.parametrize("name", TABULAR_DATASETS)
def test_outputs_have_documented_dims_and_split_sizes(maf, name: str) -> None:
    s = maf["splits"][name]
    assert s.dim == TABULAR_DIMS[name] and s.name == name
    expected = {
        "power": maf_split_sizes("power", SIZES.power),
        "gas": maf_split_sizes("gas", SIZES.gas),
        "hepmass": maf_split_sizes("hepmass", SIZES.hepmass_train // 2, SIZES.hepmass_test // 2),
        "miniboone": maf_split_sizes("miniboone", SIZES.miniboone),
        "bsds300": (SIZES.bsds_train, SIZES.bsds_val, SIZES.bsds_test),
    }[name]
    assert tuple(s.sizes.values()) == expected
    for key in ("train", "val", "test"):
        tensor = getattr(s, key)
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
    saved = DataSplits.load(maf["root"] / name)
    assert torch.equal(saved.test, s.test)
    assert torch.equal(load_dataset(name.upper(), root=maf["root"]).val, s.val)


def _expected_power(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """POWER as documented for MAF, spelled out independently of the module under test."""
    gen = np.random.RandomState(42)
    rows = raw.copy()
    gen.shuffle(rows)
    kept = rows[:, [0, 2, 4, 5, 6, 7]]  # without reactive power (1) and intensity (3)
    count = len(kept)
    jitter = np.zeros_like(kept)
    jitter[:, 1] = 0.01 * gen.rand(count, 1)[:, 0]  # voltage, drawn first
    jitter[:, 0] = 0.001 * gen.rand(count, 1)[:, 0]  # active power
    jitter[:, 2:5] = gen.rand(count, 3)  # sub-meterings; time gets none
    noisy = kept + jitter
    n_test = int(0.1 * count)
    n_val = int(0.1 * (count - n_test))
    n_train = count - n_test - n_val
    fit = np.vstack([noisy[:n_train], noisy[n_train : n_train + n_val]])
    z = (noisy - fit.mean(axis=0)) / fit.std(axis=0)
    return z[:n_train], z[n_train : n_train + n_val], z[n_train + n_val :]


def test_power_follows_the_reference_steps(maf) -> None:
    s = maf["splits"]["power"]
    raw = np.load(maf["raw"] / "power" / "data.npy")
    for got, want in zip((s.train, s.val, s.test), _expected_power(raw), strict=True):
        assert np.array_equal(got.numpy(), want.astype(np.float32))
    train_val = torch.cat([s.train, s.val]).double()
    assert torch.allclose(train_val.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(train_val.std(0, unbiased=False), torch.ones(6, dtype=torch.float64))


def test_gas_drops_correlated_sensors_and_standardizes_all_rows(maf) -> None:
    s = maf["splits"]["gas"]
    frame = pd.read_pickle(maf["raw"] / "gas" / "ethylene_CO.pickle")
    assert list(frame.columns) == GAS_COLUMNS
    # TGS2602 and TGS2600 are dropped by name (all four columns each); positions 4-7, 12-15 stay.
    kept = frame.to_numpy()[:, [3 + p for p in (4, 5, 6, 7, 12, 13, 14, 15)]]
    want = (kept - kept.mean(axis=0)) / kept.std(axis=0, ddof=1)
    got = torch.cat([s.train, s.val, s.test]).numpy()  # split from the tail, in file order
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(s.std.numpy(), kept.std(axis=0, ddof=1))


def test_hepmass_keeps_signal_rows_and_drops_repetitive_features(maf) -> None:
    s = maf["splits"]["hepmass"]
    train = pd.read_csv(maf["raw"] / "hepmass" / "1000_train.csv")
    test = pd.read_csv(maf["raw"] / "hepmass" / "1000_test.csv")
    assert train.columns[0] == "# label" and len(test.columns) == len(train.columns) + 1
    kept = [f"f{i}" for i in range(27) if i not in HEPMASS_DISCRETE]
    assert len(kept) == 21  # f0 (minimum 5 times) and f1 (repeats above the minimum) are kept
    x = train[train["# label"] == 1][kept].to_numpy()
    mu, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
    assert np.allclose(torch.cat([s.train, s.val]).numpy(), (x - mu) / sd, atol=1e-6)
    t = test[test["# label"] == 1][kept].to_numpy()
    assert np.allclose(s.test.numpy(), (t - mu) / sd, atol=1e-6)


def test_miniboone_standardized_with_train_and_validation(maf) -> None:
    s = maf["splits"]["miniboone"]
    raw = np.load(maf["raw"] / "miniboone" / "data.npy")
    n_train, n_val, _ = maf_split_sizes("miniboone", len(raw))
    both = raw[: n_train + n_val]
    want = (raw - both.mean(axis=0)) / both.std(axis=0)
    assert np.allclose(torch.cat([s.train, s.val, s.test]).numpy(), want, atol=1e-6)


def test_bsds300_uses_the_files_own_splits(maf) -> None:
    s = maf["splits"]["bsds300"]
    with h5py.File(maf["raw"] / "BSDS300" / "BSDS300.hdf5", "r") as handle:
        for key, split in (("train", s.train), ("validation", s.val), ("test", s.test)):
            assert np.array_equal(split.numpy(), handle[key][()].astype(np.float32))
    assert s.mean == 0.0 and s.std == 1.0


def test_prepare_from_mirror_directory_without_network(tmp_path, maf) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "data.tar.gz").write_bytes(maf["archive"].read_bytes())
    s = load_dataset(
        "miniboone",
        root=tmp_path / "root",
        download=True,
        url=closed_port_url("data.tar.gz"),
        mirror=mirror,
        md5=maf["md5"],
    )
    assert torch.equal(s.train, maf["splits"]["miniboone"].train)


def test_preprocess_errors_name_the_missing_or_wrong_files(tmp_path, maf) -> None:
    with pytest.raises(FileNotFoundError, match="power/data.npy"):
        preprocess_tabular("power", tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="valid names"):
        preprocess_tabular("cifar", maf["raw"], tmp_path / "out")
    (tmp_path / "hepmass").mkdir()
    train = pd.DataFrame({"# label": [1.0, 1.0], "f0": [0.1, 0.2]})
    train.to_csv(tmp_path / "hepmass" / "1000_train.csv", index=False)
    train.to_csv(tmp_path / "hepmass" / "1000_test.csv", index=False)  # no extra column
    with pytest.raises(ValueError, match="columns differ"):
        preprocess_tabular("hepmass", tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()

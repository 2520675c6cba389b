"""DataSplits: validation, atomic save/load, and the load_dataset entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_lib.data import (
    ALL_DATASETS,
    TABULAR_DATASETS,
    TOY_DATASETS,
    DataSplits,
    load_dataset,
)
from pipeline_lib.io import atomic_write


def _splits(labels: bool = True, per_column: bool = False) -> DataSplits:
    gen = torch.Generator().manual_seed(0)
    x = [torch.randn(n, 3, generator=gen) for n in (20, 10, 8)]
    y = [torch.randint(0, 4, (n,), generator=gen) for n in (20, 10, 8)] if labels else [None] * 3
    stats = (
        (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.5, 2.5]))
        if per_column
        else (
            0.25,
            2.0,
        )
    )
    return DataSplits(*x, *y, mean=stats[0], std=stats[1], name="demo")


def test_fields_are_coerced_and_dim_reported() -> None:
    s = DataSplits(
        train=np.zeros((4, 2)),
        val=np.zeros((2, 2)),
        test=np.zeros((2, 2)),
        train_labels=np.array([0, 1, 0, 1], dtype=np.int32),
        val_labels=np.array([0, 1]),
        test_labels=np.array([1, 1]),
    )
    assert s.train.dtype == torch.float32 and s.train_labels.dtype == torch.int64
    assert s.dim == 2 and s.sizes == {"train": 4, "val": 2, "test": 2}
    assert s.has_labels and s.mean == 0.0 and s.std == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"val": torch.zeros(2, 3)}, ValueError, "same number of columns"),
        ({"train": torch.zeros(4)}, ValueError, "must be 2-D"),
        ({"train": torch.zeros(4, 2, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"train_labels": torch.zeros(3, dtype=torch.int64)}, ValueError, r"shape \(4,\)"),
        ({"train_labels": torch.zeros(4)}, TypeError, "integers"),
        ({"mean": torch.zeros(3)}, ValueError, "one value per column"),
    ],
)
def test_invalid_fields_are_explained(kwargs: dict, error: type, match: str) -> None:
    base = {"train": torch.zeros(4, 2), "val": torch.zeros(2, 2), "test": torch.zeros(2, 2)}
    with pytest.raises(error, match=match):
        DataSplits(**{**base, **kwargs})


@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("labels", [False, True])
def test_save_load_roundtrip(tmp_path, labels: bool, per_column: bool) -> None:
    s = _splits(labels=labels, per_column=per_column)
    s.save(tmp_path / "out")
    t = DataSplits.load(tmp_path / "out")
    assert t.name == "demo" and t.dim == 3 and t.sizes == s.sizes
    for key in ("train", "val", "test"):
        assert torch.equal(getattr(t, key), getattr(s, key))
        a, b = getattr(t, f"{key}_labels"), getattr(s, f"{key}_labels")
        assert (a is None and b is None) or torch.equal(a, b)
    if per_column:
        assert torch.equal(t.mean, s.mean) and torch.equal(t.std, s.std)
    else:
        assert t.mean == 0.25 and t.std == 2.0
    files = {p.name for p in (tmp_path / "out").iterdir()}
    expected = {"train.npy", "val.npy", "test.npy", "meta.json"}
    if labels:
        expected |= {"train_labels.npy", "val_labels.npy", "test_labels.npy"}
    if per_column:
        expected |= {"mean.npy", "std.npy"}
    assert files == expected  # nothing temporary left behind
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["sizes"] == {"train": 20, "val": 10, "test": 8}


def test_unstandardize_inverts_the_standardization() -> None:
    s = _splits(per_column=True)
    raw = s.unstandardize(s.train)
    assert torch.allclose(raw, s.train * s.std.float() + s.mean.float())


def test_load_refuses_incomplete_directories(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="meta.json"):
        DataSplits.load(tmp_path)
    _splits().save(tmp_path / "a")
    (tmp_path / "a" / "val.npy").unlink()
    with pytest.raises(FileNotFoundError, match="val.npy"):
        DataSplits.load(tmp_path / "a")
    _splits().save(tmp_path / "b")
    np.save(tmp_path / "b" / "test.npy", np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="rows"):
        DataSplits.load(tmp_path / "b")


def test_atomic_write_keeps_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def failing(handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("disk trouble")

    with pytest.raises(RuntimeError, match="disk trouble"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_dataset_name_lists() -> None:
    assert "gaussians" in TOY_DATASETS and "gaussianspiral" in TOY_DATASETS
    assert TABULAR_DATASETS == ("power", "gas", "hepmass", "miniboone", "bsds300")
    assert set(ALL_DATASETS) == set(TOY_DATASETS) | set(TABULAR_DATASETS)


def test_load_dataset_dispatches_and_rejects_unknown_names(tmp_path) -> None:
    s = load_dataset("Gaussians", seed=3, n_per_mode=10)
    assert s.name == "gaussians" and s.sizes["train"] == 60
    with pytest.raises(ValueError, match="Valid names.*gaussians.*power") as info:
        load_dataset("mnist-toy")
    assert "miniboone" in str(info.value)
    with pytest.raises(TypeError, match="unsupported option.*download"):
        load_dataset("gaussians", download=True)
    with pytest.raises(ValueError, match="root="):
        load_dataset("power")
    with pytest.raises(FileNotFoundError, match="prepare_tabular"):
        load_dataset("power", root=tmp_path)

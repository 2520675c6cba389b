"""Fixtures shared by the test modules: a tiny 2-D flow and toy data splits.

The factories behind them are the plain functions of ``flow_helpers.py`` (for tests that need
other sizes or seeds). Tests that start Snakemake, SLURM or a long training carry the ``slow``
marker: ``pytest -m "not slow"`` is the quick loop, ``pytest`` runs everything.
"""

from __future__ import annotations

import pytest
from flow_helpers import make_flow, toy_data

from pipeline_lib.data import DataSplits


@pytest.fixture
def tiny_flow():
    """A fresh seeded 2-D concatsquash flow (16, 16) with the exact trace and RK4 at 0.25."""
    return make_flow()


@pytest.fixture
def toy_splits() -> DataSplits:
    """Four Gaussian clusters: 256 training, 64 validation and 64 test points."""
    return DataSplits(train=toy_data(256, 0), val=toy_data(64, 1), test=toy_data(64, 2))

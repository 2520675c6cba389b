"""The published numbers of the papers, kept as data in ``config/published`` with their source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["published_sparse_flow"]


def published_sparse_flow(published_dir: str | Path, dataset: str) -> pd.DataFrame | None:
    """Sparse Flow NLL per prune ratio for ``dataset`` (Tables S4–S10), or None if unpublished.

    Columns: ``prune_ratio``, ``params``, ``unstructured``, ``structured`` (nats for tabular,
    bits/dim for images).
    """
    for name, prefix in (("tabular_sparse_flow.csv", "nll_"), ("images_sparse_flow.csv", "bpd_")):
        path = Path(published_dir) / name
        if not path.exists():
            continue
        df = pd.read_csv(path, comment="#")
        df = df[df["dataset"] == dataset]
        if len(df):
            return df.rename(
                columns={
                    f"{prefix}unstructured": "unstructured",
                    f"{prefix}structured": "structured",
                }
            )[["prune_ratio", "params", "unstructured", "structured"]].reset_index(drop=True)
    return None

"""Where every file of a study lives: the one place that spells out the results layout.

The Snakemake rules take their output patterns from a :class:`Layout` (with wildcards), the
input functions and the reporting take concrete paths from the same templates, and nothing
parses a path back: a metrics file or snapshot names its checkpoint inside
(``experiment``, ``seed``, ``method``, ``round``). ``results/README.md`` describes the tree::

    <root>/manifest.json                          the study (pipeline_lib.manifest)
    <root>/data/<data id>/                        train / val / test splits
    <root>/<experiment>/seed<k>/round000/         dense warm start (round 0 of every method)
    <root>/<experiment>/seed<k>/<method>/round<r>/ pruned round r = 1..R
        model.pt, round.json, metrics/{nll.json, samples.json, snapshot.npz, hessian.json,
                                       robustness.json, boundary.npz}
    <root>/<experiment>/summary.parquet, <root>/summary.parquet
    <root>/tables/, <root>/figures/, <root>/logs/, <root>/benchmarks/

Example::

    layout = Layout("results")
    layout.checkpoint_dir("gaussians", "structured", 0, 3)
    # 'results/gaussians/seed0/structured/round003'
    layout.pruned("model.pt")   # the prune rule's output pattern, with wildcards
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline_lib.manifest import MANIFEST_NAME

__all__ = ["CHECKPOINT_PATH", "METRIC_FILES", "TRAIN_STATE", "Layout", "restore_dates"]

#: The in-flight training state in a round's directory: not a workflow output; it survives a
#: killed job so that the rerun resumes, and is removed when the round is done.
TRAIN_STATE = "train_state.pt"

#: A checkpoint directory below ``seed<k>/`` (the ``{path}`` wildcard of the evaluate rules):
#: the dense warm start or a pruned round.
CHECKPOINT_PATH = "round000|(unstructured|structured)/round[0-9]{3}"

#: The files each metric's evaluation job writes into a round's ``metrics/``.
METRIC_FILES = {
    "nll": {"nll": "nll.json"},
    "samples": {"samples": "samples.json", "snapshot": "snapshot.npz"},
    "hessian": {"hessian": "hessian.json"},
    "robustness": {"robustness": "robustness.json", "boundary": "boundary.npz"},
}


@dataclass(frozen=True)
class Layout:
    """The results tree under ``root``. Methods without arguments return Snakemake patterns
    (``{experiment}``, ``{seed}``, ``{method}``, ``{round}``, ``{path}`` wildcards); the others
    concrete paths."""

    root: str

    # -- concrete paths --------------------------------------------------------------------

    def data_dir(self, data_id: str) -> str:
        return f"{self.root}/data/{data_id}"

    def checkpoint_dir(self, experiment: str, method: str | None, seed: int, r: int) -> str:
        """One checkpoint's directory; round 0 is the dense warm start shared by the methods."""
        base = f"{self.root}/{experiment}/seed{seed}"
        return f"{base}/round000" if r == 0 else f"{base}/{method}/round{r:03d}"

    def metric_files(self, checkpoint_dir: str, metric: str) -> dict[str, str]:
        """The files one metric's job writes for one checkpoint."""
        return {k: f"{checkpoint_dir}/metrics/{n}" for k, n in METRIC_FILES[metric].items()}

    def experiment_summary(self, experiment: str) -> str:
        return f"{self.root}/{experiment}/summary.parquet"

    @property
    def summary(self) -> str:
        return f"{self.root}/summary.parquet"

    def table(self, name: str, ext: str = "md") -> str:
        return f"{self.root}/tables/{name}.{ext}"

    def figure(self, name: str, ext: str = "png") -> str:
        return f"{self.root}/figures/{name}.{ext}"

    def log(self, name: str) -> str:
        return f"{self.root}/logs/{name}.log"

    def benchmark(self, name: str) -> str:
        return f"{self.root}/benchmarks/{name}.tsv"

    # -- Snakemake patterns ----------------------------------------------------------------

    def dense(self, name: str) -> str:
        """A file of the dense round (``train_dense``'s outputs)."""
        return f"{self.root}/{{experiment}}/seed{{seed}}/round000/{name}"

    def pruned(self, name: str) -> str:
        """A file of a pruned round (``prune_round``'s outputs)."""
        return f"{self.root}/{{experiment}}/seed{{seed}}/{{method}}/round{{round}}/{name}"

    def checkpoint(self, name: str) -> str:
        """A file of any checkpoint (the evaluate rules; ``{path}``: :data:`CHECKPOINT_PATH`)."""
        return f"{self.root}/{{experiment}}/seed{{seed}}/{{path}}/{name}"

    def metric(self, metric: str) -> dict[str, str]:
        """The output patterns of one metric's evaluation rule."""
        return {k: self.checkpoint(f"metrics/{n}") for k, n in METRIC_FILES[metric].items()}


def _rank(rel: Path) -> int | None:
    """Where a file of the results tree comes in the workflow's order (None: the in-flight
    training state, which no rule reads). Rounds are ordered by their number: round r reads round r − 1 of its chain,
    and the metrics of a round read its model and record."""
    parts = rel.parts
    if rel.name == TRAIN_STATE:
        return None
    if parts[0] in ("data", MANIFEST_NAME):
        return 0
    # logs and benchmark files count as outputs of their jobs (Snakemake takes the oldest of
    # a job's outputs, logs included): newest of all, they never make an output look stale
    if parts[0] in ("tables", "figures", "logs", "benchmarks"):
        return _LAST + 2
    if rel.name == "summary.parquet":
        return _LAST if len(parts) == 2 else _LAST + 1
    rounds = [p for p in parts if p.startswith("round") and p[5:].isdigit()]
    if not rounds:
        return None
    r = int(rounds[0][5:])
    return 2 * r + (2 if "metrics" in parts else 1)


_LAST = 10_000
_STEP_NS = 1_000_000  # 1 ms between ranks: all dates within the 20 s before the call


def restore_dates(root: str | Path) -> int:
    """Date the files of one study's results tree in the order the workflow makes them, and
    return how many were dated.

    A results tree copied without its file dates (a ``git clone`` of the studies kept in the
    repository) has arbitrary ones, and under Snakemake's ``mtime`` rerun trigger (on by
    default) a job whose input is newer than its output reruns. Afterwards the data and
    manifest are oldest, then round 0, 1, … of every chain (model and record, then their
    metrics), then the summaries, tables and figures, all within the 20 s before the call (so
    inputs made earlier outside the tree, such as extracted archives, stay older); every kept
    output is up to date and only missing ones are made. Run
    ``python -m pipeline_lib.layout restore-dates <results dir>`` before continuing a study.

    Raises:
        ValueError: ``root`` is not a study's results directory (it has no ``manifest.json``)
            or holds no file to date. Nested studies (a directory below ``root`` with its own
            manifest) are left alone: date each on its own.
    """
    import os
    import time

    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        raise ValueError(
            f"{root} is not a study's results directory (no {MANIFEST_NAME}); give the "
            "directory a configuration's 'results' names, e.g. results/paper/gaussians"
        )
    nested = {m.parent for m in root.rglob(MANIFEST_NAME) if m.parent != root}
    base = time.time_ns() - (_LAST + 3) * _STEP_NS
    dated = 0
    for path in sorted(root.rglob("*")):
        if any(n == path or n in path.parents for n in nested):
            continue
        rank = _rank(path.relative_to(root))
        if rank is None:
            continue
        stamp = base + rank * _STEP_NS
        os.utime(path, ns=(stamp, stamp))
        dated += 1
    if not dated:
        raise ValueError(f"{root} holds no results to date")
    return dated


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline_lib.layout restore-dates <results dir>``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline_lib.layout")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser(
        "restore-dates", help="date a copied study's files in the workflow's order"
    )
    cmd.add_argument("results", help="a study's results directory, e.g. results/paper/gaussians")
    args = parser.parse_args(argv)
    print(f"dated {restore_dates(args.results)} files under {args.results}")


if __name__ == "__main__":
    main()

"""One results directory, one study: the manifest of the experiments a directory holds.

``<results>/manifest.json`` lists every experiment whose outputs the directory holds, with the
hash of its settings (:attr:`~pipeline_lib.experiment.Experiment.config_hash`) and the configuration
files that last planned it. The summary, tables and figures of a directory are built from the
experiments of the configuration that runs, so a second configuration writing into the same
directory would leave a summary without the first one's rows. :func:`register_study`, called
when the workflow plans a run, refuses that before any job starts: the running configuration
must hold every experiment the manifest lists (it may add new ones, and it may change their
settings, which retrains them). An experiment whose directory was deleted by hand leaves the
manifest quietly: that is how a study drops an experiment. A directory written before
manifests existed counts every ``<results>/<name>/seed<k>/`` as an experiment it holds.

Example::

    register_study("results", {"gaussians": "3f2a…"}, ["config/config.yaml"])
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline_lib.io import exclusive_lock, read_json, write_json

__all__ = ["MANIFEST_NAME", "register_study"]

MANIFEST_NAME = "manifest.json"


def _shown(configfile: str | Path) -> str:
    """A configuration file as the manifest records it: relative to the working directory
    where it lies below it (Snakemake passes absolute paths), so that a results directory
    kept in a repository names no path of the machine that ran it."""
    path = Path(configfile)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _subdirs(path: Path) -> list[Path]:
    return [d for d in path.iterdir() if d.is_dir()] if path.is_dir() else []


def register_study(
    results: str | Path,
    experiments: Mapping[str, str],
    configfiles: Sequence[str | Path] = (),
    *,
    write: bool = True,
) -> dict:
    """Check that ``results`` holds no experiment outside ``experiments`` (name -> settings
    hash), then record them in its manifest and create their directories (unless ``write`` is
    false: the workflow checks when it plans, and writes when the run starts).

    Returns:
        The manifest as written (or as it would be written).

    Raises:
        ValueError: the directory holds experiments of another configuration; the message
            names them and the ways out.
    """
    results = Path(results)
    path = results / MANIFEST_NAME
    fix = f"delete {path} if the directory should be taken over by this configuration"
    lock = results / f".{MANIFEST_NAME}.lock"
    with exclusive_lock(lock) if write else contextlib.nullcontext():
        if path.exists():
            known = read_json(path, fix=fix).get("experiments", {})
        else:  # a directory from before manifests: its experiments are the ones with seed runs
            known = {d.name for d in _subdirs(results) if any(d.glob("seed[0-9]*"))}
        others = sorted(n for n in known if n not in experiments and (results / n).is_dir())
        if others:
            listed = ", ".join(others)
            raise ValueError(
                f"{results} holds the experiment(s) {listed} of another configuration "
                f"({path}), which this configuration does not define, so its summary would "
                f"leave them out. Use another 'results' directory, add {listed} to this "
                f"configuration, or, to drop them from this directory, delete "
                f"{results}/<experiment>/ for each of them"
            )
        manifest = {
            "experiments": {
                name: {"config_hash": digest, "configfiles": [_shown(c) for c in configfiles]}
                for name, digest in sorted(experiments.items())
            },
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if write and experiments:
            for name in experiments:  # claimed at once, before their first job starts
                (results / name).mkdir(parents=True, exist_ok=True)
            write_json(path, manifest)
    return manifest

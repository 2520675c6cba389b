"""Files of a run, written atomically and read back only when they check out.

Every file the pipeline writes goes through :func:`atomic_write`: a temporary file in the same
directory, flushed and synced, then moved into place with :func:`os.replace`, so a killed job
never leaves a half-written file under its real name.

What the pipeline reads back is checked, and every failure is one :class:`UnreadableFileError`
that names the file and the fix:

- torch checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`) carry a SHA-256 of
  their content (every tensor's dtype, shape and bytes, and every other value); a truncated or
  garbled file, or one written without the digest, is refused. They are loaded with
  ``torch.load(..., weights_only=True)``.
- JSON records written with ``signed=True`` carry the SHA-256 of their canonical JSON
  (``content_sha256``); :func:`read_json` with ``signed=True`` refuses an edited record.
- parquet and npz files are wrapped the same way when unreadable.

Example::

    save_checkpoint("run/model.pt", {"model": flow.state_dict()}, flow)
    state = load_checkpoint("run/model.pt")   # UnreadableFileError if it does not check out
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "DIGEST_KEY",
    "UnreadableFileError",
    "atomic_write",
    "content_digest",
    "exclusive_lock",
    "load_checkpoint",
    "load_npz",
    "metrics_fix",
    "read_json",
    "read_parquet",
    "round_fix",
    "save_checkpoint",
    "write_json",
    "write_npz",
    "write_parquet",
]

DIGEST_KEY = "content_sha256"
"""Key under which checkpoints and signed JSON records store the digest of their content."""

_DEFAULT_FIX = "delete it and rerun the same command; it will be regenerated"


class UnreadableFileError(RuntimeError):
    """A file of a run is missing, truncated, garbled or edited; the message names the file,
    what is wrong and what to do."""

    def __init__(self, path: str | Path, problem: str, fix: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix or _DEFAULT_FIX
        super().__init__(f"{self.path} {problem}: {self.fix}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that it never exists half-written.

    ``write`` receives a binary file object opened on a temporary file in the same directory
    as ``path``; once it returns, the data is flushed and synced and the temporary file is
    moved onto ``path`` with :func:`os.replace` (atomic on POSIX and Windows). If ``write``
    raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (POSIX ``flock``; no-op where unavailable), so
    that concurrent jobs or planners take turns."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def round_fix(path: str | Path) -> str:
    """What to do when a file of a finished round (``model.pt``, ``round.json``) is damaged."""
    return (
        f"delete {Path(path).parent} and rerun the same command; that round and every later "
        "round of its chain will be trained again"
    )


def metrics_fix(path: str | Path) -> str:
    """What to do when a metrics file of a round is damaged."""
    return "delete it and rerun the same command; the checkpoint will be evaluated again"


# -- digests -----------------------------------------------------------------------------------


def _feed(h: Any, value: Any) -> None:
    """Feed a nested structure (dicts, lists, tensors, scalars) into a hash, unambiguously."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            h.update(f"K{key!r}".encode())
            _feed(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item)
    elif isinstance(value, float):
        h.update(f"F{value!r}".encode())  # repr round-trips floats exactly (nan, inf included)
    else:
        h.update(f"V{type(value).__name__}:{value!r}".encode())


def content_digest(value: Any) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every key and
    every other value, in a fixed order (so equal content gives an equal digest)."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _json_digest(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- JSON --------------------------------------------------------------------------------------


def write_json(path: str | Path, payload: Any, *, signed: bool = False) -> Path:
    """Write JSON atomically; ``signed=True`` adds the digest of the content (a dict)."""
    if signed:
        payload = {k: v for k, v in payload.items() if k != DIGEST_KEY}
        payload[DIGEST_KEY] = _json_digest(payload)
    text = json.dumps(payload, indent=2, allow_nan=True) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def read_json(path: str | Path, *, signed: bool = False, fix: str | None = None) -> Any:
    """Read JSON; ``signed=True`` requires the digest written by :func:`write_json` and checks
    it (the returned dict leaves it out). Failures raise :class:`UnreadableFileError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UnreadableFileError(path, "is missing", fix) from None
    except OSError as err:
        raise UnreadableFileError(path, f"cannot be read ({err})", fix) from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise UnreadableFileError(path, f"is not valid JSON (truncated? {err})", fix) from None
    if not signed:
        return payload
    if not isinstance(payload, dict) or DIGEST_KEY not in payload:
        raise UnreadableFileError(
            path, f"has no {DIGEST_KEY} (written by an older version, or edited)", fix
        )
    stored = payload.pop(DIGEST_KEY)
    if _json_digest(payload) != stored:
        raise UnreadableFileError(
            path, "does not match its recorded digest (edited by hand or garbled)", fix
        )
    return payload


# -- torch checkpoints -------------------------------------------------------------------------


def save_checkpoint(path: str | Path, state: dict) -> str:
    """Write a torch checkpoint atomically with the digest of its content, and return the
    digest (the training module's ``save_checkpoint`` refuses non-finite weights first)."""
    import torch

    state = {k: v for k, v in state.items() if k != DIGEST_KEY}
    digest = state[DIGEST_KEY] = content_digest(state)
    atomic_write(path, lambda fh: torch.save(state, fh))
    return digest


def load_checkpoint(path: str | Path, *, fix: str | None = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU (``weights_only=True``;
    callers move it to their device, so a checkpoint saved on a GPU loads anywhere) and verify
    its digest (returned under :data:`DIGEST_KEY`); a missing, truncated, garbled or unsigned
    file raises :class:`UnreadableFileError` naming it and ``fix``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "is missing", fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises OSError, RuntimeError, UnpicklingError, ...
        raise UnreadableFileError(
            path, f"is unreadable (truncated? {type(err).__name__}: {err})", fix
        ) from None
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        raise UnreadableFileError(path, f"has no {DIGEST_KEY} (written by an older version)", fix)
    stored = state.pop(DIGEST_KEY)
    if content_digest(state) != stored:
        raise UnreadableFileError(
            path, "does not match its recorded digest (garbled or edited)", fix
        )
    state[DIGEST_KEY] = stored
    return state


# -- tables and arrays -------------------------------------------------------------------------


def write_parquet(df: Any, path: str | Path) -> Path:
    """Write a DataFrame to parquet atomically."""
    return atomic_write(path, lambda fh: df.to_parquet(fh, index=False))


def read_parquet(path: str | Path, *, fix: str | None = None) -> Any:
    """Read a parquet file; an unreadable one raises :class:`UnreadableFileError`."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "is missing", fix)
    try:
        return pd.read_parquet(path)
    except Exception as err:
        raise UnreadableFileError(
            path, f"is unreadable (truncated? {type(err).__name__}: {err})", fix
        ) from None


def write_npz(path: str | Path, arrays: dict[str, Any]) -> Path:
    """Write numpy arrays (compressed ``.npz``) atomically; :func:`load_npz` reads them."""
    import numpy as np

    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def load_npz(path: str | Path, *, fix: str | None = None) -> dict:
    """Read every array of an ``.npz`` file (no pickles); unreadable raises
    :class:`UnreadableFileError`."""
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UnreadableFileError(path, "is missing", fix) from None
    except Exception as err:
        raise UnreadableFileError(
            path, f"is unreadable (truncated? {type(err).__name__}: {err})", fix
        ) from None

"""Fetch, verify and safely extract data archives.

The tabular benchmarks of Sparse Flows §4.2 come as one archive of the MAF data (Papamakarios
et al. 2017), about a gigabyte. :func:`fetch` downloads such a file so that an interrupted run
never leaves a half-written file in place: it streams into ``<dest>.part``, resumes that file
with an HTTP ``Range`` request after a dropped connection (and starts over when a server ignores
the range), retries with exponential backoff, verifies size and SHA-256 when given, and only
then moves the file onto ``dest`` with :func:`os.replace`. A *mirror* (local directory or base
URL) is tried first, which is how machines without internet access get the data.

:func:`extract_archive` unpacks tar (plain, gzip, bzip2, xz) and zip archives into a
temporary directory beside the destination and renames it into place, after refusing members
that could write outside it (absolute paths, ``..`` components, links leaving the tree, device
files) and reporting truncated or corrupt archives as such.

Example::

    archive = fetch(MAF_ARCHIVE_URL, Path("resources/downloads/data.tar.gz"),
                    mirror="mirrors/maf")
    root = extract_archive(archive, Path("resources/maf"))
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from pipeline_lib.io import exclusive_lock

__all__ = [
    "ArchiveError",
    "DEFAULT_MAX_EXTRACT_BYTES",
    "DownloadError",
    "ensure_extracted",
    "extract_archive",
    "fetch",
    "file_digest",
    "file_sha256",
    "url_basename",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None], None]
"""Called as ``progress(bytes_done, bytes_total_or_None)`` while a file is transferred."""

_CHUNK = 1 << 20
_LOG_EVERY_S = 10.0
_USER_AGENT = "sparseflows-fetch/1"
_RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A file could not be fetched from any source; the message says why and what to do."""


class ArchiveError(RuntimeError):
    """An archive is truncated, corrupt, of an unknown format, or has unsafe members."""


class _SourceFailed(Exception):
    """One source failed for good (after its retries); the next source may still work."""


class _Interrupted(Exception):
    """A transfer stopped early; retrying (resuming) may help."""


def url_basename(url: str) -> str:
    """The file name at the end of a URL's path, e.g. ``data.tar.gz`` (query ignored)."""
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if not name:
        raise ValueError(f"Cannot tell a file name from URL {url!r}; it must end in a file name.")
    return name


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    return file_digest(path, "sha256")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, size: int | None, sha256: str | None, md5: str | None = None) -> str | None:
    """Return what is wrong with a downloaded file, or None if it passes the given checks."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"expected {size} bytes, got {actual}"
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        digest = file_digest(path, algorithm)
        if digest.lower() != expected.lower():
            return (
                f"{algorithm} mismatch: expected {expected.lower()}, got {digest} (the file is "
                "corrupt, or it changed at the source; if the change is intended, update the "
                "expected checksum)"
            )
    return None


def _is_url(text: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text))


class _Meter:
    """Progress accounting: callback on every chunk, a log line every few seconds."""

    def __init__(self, label: str, done: int, total: int | None, progress: ProgressCallback | None):
        self.label, self.done, self.total, self.progress = label, done, total, progress
        self.start_done, self.start = done, time.monotonic()
        self.last_log = self.start

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)
        now = time.monotonic()
        if now - self.last_log >= _LOG_EVERY_S:
            self.last_log = now
            self.log()

    def log(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.done - self.start_done) / elapsed / 1e6
        if self.total:
            logger.info(
                "%s: %.1f/%.1f MB (%.0f%%) at %.2f MB/s",
                self.label,
                self.done / 1e6,
                self.total / 1e6,
                100.0 * self.done / self.total,
                rate,
            )
        else:
            logger.info("%s: %.1f MB at %.2f MB/s", self.label, self.done / 1e6, rate)


def _copy_local(source: Path, part: Path, progress: ProgressCallback | None) -> None:
    total = source.stat().st_size
    meter = _Meter(f"copy {source.name}", 0, total, progress)
    with open(source, "rb") as src, open(part, "wb") as dst:
        for block in iter(lambda: src.read(_CHUNK), b""):
            dst.write(block)
            meter.add(len(block))
    meter.log()


def _content_range(header: str | None) -> tuple[int, int | None] | None:
    """Parse ``bytes start-end/total`` into (start, total or None)."""
    if not header:
        return None
    match = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", header)
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _transfer_once(url: str, part: Path, timeout: float, progress: ProgressCallback | None) -> None:
    """One HTTP(S)/file request: resume ``part`` if it has bytes, else (re)start it.

    Raises :class:`_Interrupted` when the body ends early; network errors propagate.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with contextlib.closing(urllib.request.urlopen(request, timeout=timeout)) as response:
        status = getattr(response, "status", None) or 200
        length_header = response.headers.get("Content-Length") if response.headers else None
        remaining = int(length_header) if length_header and length_header.isdigit() else None
        mode = "wb"
        total = remaining
        if offset and status == 206:
            parsed = _content_range(response.headers.get("Content-Range"))
            if parsed is None or parsed[0] != offset:
                logger.warning(
                    "%s: server answered the resume request with an unexpected range (%s); "
                    "starting over",
                    url,
                    response.headers.get("Content-Range"),
                )
                part.unlink(missing_ok=True)
                raise _Interrupted("unexpected Content-Range on resume")
            mode = "ab"
            total = parsed[1]
            logger.info("%s: resuming at byte %d", url, offset)
        elif offset:
            logger.info("%s: server ignored the range request; starting over from byte 0", url)
            offset = 0
        received = 0
        meter = _Meter(f"fetch {url_basename(url)}", offset, total, progress)
        with open(part, mode) as handle:
            while True:
                try:
                    block = response.read(_CHUNK)
                except http.client.IncompleteRead as err:
                    handle.write(err.partial)
                    received += len(err.partial)
                    raise _Interrupted(
                        f"connection closed after {offset + received} bytes"
                        + (f" of {total}" if total else "")
                    ) from err
                if not block:
                    break
                handle.write(block)
                received += len(block)
                meter.add(len(block))
        meter.log()
        if remaining is not None and received < remaining:
            raise _Interrupted(
                f"connection closed after {offset + received} bytes of {offset + remaining}"
            )


def _download(
    url: str,
    part: Path,
    *,
    retries: int,
    timeout: float,
    backoff: float,
    progress: ProgressCallback | None,
) -> None:
    """Download ``url`` into ``part``, resuming and retrying; raise _SourceFailed at the end."""
    attempt = 0
    while True:
        try:
            _transfer_once(url, part, timeout, progress)
            return
        except urllib.error.HTTPError as err:
            if err.code == 416 and part.exists():
                # Range not satisfiable: the partial file does not fit this resource.
                part.unlink()
                reason = "HTTP 416 on resume (stale partial file discarded)"
            elif err.code in _RETRYABLE_HTTP:
                reason = f"HTTP {err.code} {err.reason}"
            else:
                raise _SourceFailed(f"HTTP {err.code} {err.reason}") from err
        except _Interrupted as err:
            reason = str(err)
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ) as err:
            reason = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if url.startswith("file:"):
                raise _SourceFailed(f"cannot read local file ({reason})") from err
        except OSError as err:
            if url.startswith("file:"):
                raise _SourceFailed(f"cannot read local file ({err})") from err
            reason = f"{type(err).__name__}: {err}"
        attempt += 1
        if attempt > retries:
            raise _SourceFailed(f"gave up after {attempt} attempt(s); last error: {reason}")
        delay = backoff * 2 ** (attempt - 1)
        logger.warning("%s: %s; retry %d/%d in %.1f s", url, reason, attempt, retries, delay)
        time.sleep(delay)


def fetch(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    md5: str | None = None,
    retries: int = 3,
    timeout: float = 60,
    mirror: str | Path | None = None,
    progress: ProgressCallback | None = None,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming, retrying and verifying.

    The data streams into ``dest.with_suffix(dest.suffix + ".part")``; after a dropped
    connection the next attempt asks for the rest with ``Range: bytes=<n>-`` and appends it
    (if the server answers with the whole file instead, the partial file is restarted).
    When the transfer is complete, ``size`` and ``sha256`` are checked if given and the file is
    moved onto ``dest`` with :func:`os.replace`. If ``dest`` already exists and passes the
    checks, nothing is downloaded.

    Arguments:
        url: ``http://``, ``https://`` or ``file://`` URL.
        dest: destination file; its directory is created.
        sha256: expected hex SHA-256 digest, or None to skip the check.
        size: expected size in bytes, or None.
        md5: expected hex MD5 digest, or None (for sources that publish only MD5, such as
            Zenodo; checked beside ``sha256`` when both are given).
        retries: further attempts per source after the first one fails.
        timeout: socket timeout in seconds per request.
        mirror: tried before ``url``: a local directory holding a file with the URL's
            basename (copied), or a base URL (``<mirror>/<basename>`` downloaded).
        progress: optional callback ``progress(bytes_done, bytes_total_or_None)``.
        backoff: seconds before the first retry; doubled for every further retry.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: no source delivered a complete, verified file. The ``.part`` file is
            removed and ``dest`` is not created; the message names the URL, what failed and
            how to fix it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    if dest.exists():
        problem = _verify(dest, size, sha256, md5)
        if problem is None:
            logger.info("%s already present; not downloading %s", dest, url)
            return dest
        logger.warning("%s exists but fails its check (%s); downloading again", dest, problem)

    name = url_basename(url)
    sources: list[tuple[str, str | Path]] = []
    if mirror is not None:
        mirror_text = str(mirror)
        if _is_url(mirror_text):
            sources.append(("url", mirror_text.rstrip("/") + "/" + urllib.parse.quote(name)))
        else:
            sources.append(("dir", Path(mirror)))
    sources.append(("url", url))

    failures: list[str] = []
    for kind, location in sources:
        label = f"mirror directory {location}" if kind == "dir" else str(location)
        try:
            if kind == "dir":
                candidate = Path(location) / name
                if not candidate.is_file():
                    raise _SourceFailed(f"no file {name!r} there")
                logger.info("copying %s from mirror %s", name, location)
                _copy_local(candidate, part, progress)
                problem = _verify(part, size, sha256, md5)
            else:
                # A .part left by an earlier, killed run is resumed; if the result then fails
                # its check, the download is repeated once from scratch.
                stale = part.exists() and part.stat().st_size > 0
                logger.info("downloading %s to %s", location, dest)
                options = {"retries": retries, "timeout": timeout, "backoff": backoff}
                _download(str(location), part, progress=progress, **options)
                problem = _verify(part, size, sha256, md5)
                if problem is not None and stale:
                    logger.warning(
                        "%s: file resumed from an earlier run fails its check (%s); "
                        "downloading it again from the start",
                        location,
                        problem,
                    )
                    part.unlink()
                    _download(str(location), part, progress=progress, **options)
                    problem = _verify(part, size, sha256, md5)
            if problem is not None:
                raise _SourceFailed(problem)
            os.replace(part, dest)
            logger.info("saved %s (%d bytes)", dest, dest.stat().st_size)
            return dest
        except _SourceFailed as err:
            failures.append(f"{label}: {err}")
            logger.warning("could not fetch %s from %s: %s", name, label, err)
        finally:
            part.unlink(missing_ok=True)  # moved onto dest on success; removed otherwise

    detail = "\n".join(f"  - {line}" for line in failures)
    raise DownloadError(
        f"Could not download {url} to {dest}:\n{detail}\n"
        "Fix: check the network connection (proxy, firewall) and that the URL is still valid, "
        f"or configure a mirror: a local directory holding {name!r} or a base URL serving it "
        "(the mirror= argument, or the data configuration)."
    )


# -- archives ----------------------------------------------------------------------------------

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _unsafe(archive: Path, member: str, reason: str) -> ArchiveError:
    return ArchiveError(
        f"Refusing to extract {archive}: member {member!r} {reason}. The archive is unsafe or "
        "corrupt; delete it and get it again from a trusted source or mirror."
    )


def _corrupt(archive: Path, err: BaseException) -> ArchiveError:
    return ArchiveError(
        f"{archive} is truncated or corrupt ({type(err).__name__}: {err}). Delete it and "
        "download it again (an interrupted copy is the usual cause); if that keeps failing, "
        "verify its checksum or use a mirror."
    )


def _check_name(archive: Path, name: str) -> None:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(archive, name, "has an absolute path")
    if ".." in re.split(r"[/\\]+", name):
        raise _unsafe(archive, name, "has a '..' path component")


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    _check_name(archive, name)
    if member.ischr() or member.isblk() or member.isfifo():
        raise _unsafe(archive, name, "is a device file or FIFO")
    if member.issym():
        target = member.linkname
        if target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target):
            raise _unsafe(archive, name, f"is a symlink to the absolute path {target!r}")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            raise _unsafe(archive, name, f"is a symlink pointing outside the archive ({target!r})")
    elif member.islnk():
        target = posixpath.normpath(member.linkname)
        if target.startswith("/") or target == ".." or target.startswith("../"):
            raise _unsafe(
                archive, name, f"is a hard link pointing outside the archive ({member.linkname!r})"
            )
    elif not (member.isfile() or member.isdir()):
        raise _unsafe(archive, name, f"has an unsupported type ({member.type!r})")


# Python < 3.11.4 (and < 3.10.12) has no extraction filters; our own checks still apply there.
_FILTER_ERROR: type[Exception] = getattr(tarfile, "FilterError", ArchiveError)

_CORRUPTION_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.ReadError,
    tarfile.CompressionError,
    tarfile.HeaderError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    zipfile.BadZipFile,
)


DEFAULT_MAX_EXTRACT_BYTES = 16 * 1024**3
"""Largest total size of an archive's members that :func:`extract_archive` unpacks (16 GiB)."""


def _check_total(archive: Path, total: int, max_bytes: int | None) -> None:
    """Refuse an archive whose members add up to more than ``max_bytes`` (a decompression
    bomb, or the wrong file), before anything is written."""
    if max_bytes is not None and total > max_bytes:
        raise ArchiveError(
            f"Refusing to extract {archive}: its members add up to {total:,} bytes, more than "
            f"the limit of {max_bytes:,} (data.max_extract_bytes). The archive is not the "
            "expected one (or a decompression bomb); get it again from a trusted source, or "
            "raise the limit if it is genuine."
        )


def _extract_tar(archive: Path, target: Path, max_bytes: int | None) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            if not members:
                raise ArchiveError(f"{archive} is an empty archive; download it again.")
            for member in members:
                _check_tar_member(archive, member)
            # a tar member is written with exactly the size its header declares
            _check_total(archive, sum(m.size for m in members if m.isfile()), max_bytes)
            # The end-of-archive marker (zero blocks) must follow the last member; a tar cut at a
            # member boundary otherwise reads as a shorter, seemingly valid archive.
            tar.fileobj.seek(tar.offset)
            if len(tar.fileobj.read(tarfile.BLOCKSIZE)) < tarfile.BLOCKSIZE:
                raise _corrupt(archive, EOFError("no end-of-archive marker after the last member"))
            # Read to the end of the stream so that gzip/bz2/xz verify their checksums (a tar
            # reader stops at the end marker and would never see a corrupt trailer).
            while tar.fileobj.read(_CHUNK):
                pass
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, members=members, **kwargs)
    except ArchiveError:
        raise
    except _FILTER_ERROR as err:
        member = err.tarinfo.name if getattr(err, "tarinfo", None) is not None else "?"
        raise _unsafe(archive, member, f"was refused by the tar data filter ({err})") from err
    except _CORRUPTION_ERRORS as err:
        raise _corrupt(archive, err) from err


def _extract_zip(archive: Path, target: Path, max_bytes: int | None) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if not infos:
                raise ArchiveError(f"{archive} is an empty archive; download it again.")
            for info in infos:
                _check_name(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _unsafe(archive, info.filename, "is a symlink (not supported in zip)")
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                    raise _unsafe(archive, info.filename, "is a device file or FIFO")
            # zipfile reads no more than a member's declared size (and checks its CRC)
            _check_total(archive, sum(i.file_size for i in infos), max_bytes)
            bad = zf.testzip()
            if bad is not None:
                raise _corrupt(archive, zipfile.BadZipFile(f"CRC check failed for {bad!r}"))
            zf.extractall(target)
    except ArchiveError:
        raise
    except _CORRUPTION_ERRORS as err:
        raise _corrupt(archive, err) from err


def _archive_kind(archive: Path) -> str:
    lower = archive.name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(_TAR_SUFFIXES):
        return "tar"
    with open(archive, "rb") as handle:
        magic = handle.read(4)
    return "zip" if magic.startswith(b"PK") else "tar"


def extract_archive(
    archive: str | Path, dest_dir: str | Path, max_bytes: int | None = DEFAULT_MAX_EXTRACT_BYTES
) -> Path:
    """Safely extract a tar (``.tar``, ``.tar.gz``/``.tgz``, bz2, xz) or zip archive.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    symlinks or hard links that point outside the tree, and device files/FIFOs are refused.
    The archive is unpacked into a temporary directory beside ``dest_dir`` (Python's
    ``filter="data"`` on top of these checks where available) which is then renamed to
    ``dest_dir``; on any failure it is removed, so ``dest_dir`` is either complete or absent.

    Arguments:
        archive: the archive file.
        dest_dir: directory to create; it must not exist yet (an empty one is replaced).
        max_bytes: refuse, before writing anything, an archive whose members add up to more
            than this many bytes (None: no limit).

    Returns:
        ``dest_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: ``archive`` does not exist.
        FileExistsError: ``dest_dir`` exists and is not empty.
        ArchiveError: the archive is truncated/corrupt or has an unsafe member; the message
            names the member or the error.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise FileNotFoundError(f"Archive {archive} does not exist; download it first.")
    if dest_dir.exists():
        if dest_dir.is_dir() and not any(dest_dir.iterdir()):
            dest_dir.rmdir()
        else:
            raise FileExistsError(
                f"{dest_dir} already exists; remove it to extract {archive} again."
            )
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".extracting", dir=dest_dir.parent)
    )
    try:
        logger.info("extracting %s to %s", archive, dest_dir)
        if _archive_kind(archive) == "zip":
            _extract_zip(archive, tmp, max_bytes)
        else:
            _extract_tar(archive, tmp, max_bytes)
        os.replace(tmp, dest_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest_dir


def ensure_extracted(
    archive: str | Path, dest_dir: str | Path, max_bytes: int | None = DEFAULT_MAX_EXTRACT_BYTES
) -> Path:
    """Extract ``archive`` to ``dest_dir`` unless that was done already; safe to call concurrently.

    :func:`extract_archive` renames a complete extraction into place, so an existing
    ``dest_dir`` is complete. Concurrent callers (e.g. one job per data set) serialize on a lock
    file beside ``dest_dir``; the first extracts, the others find the result.

    Returns:
        ``dest_dir`` as a :class:`~pathlib.Path`.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if dest_dir.is_dir():
        return dest_dir
    with exclusive_lock(dest_dir.with_name(f".{dest_dir.name}.lock")):
        if not dest_dir.is_dir():
            extract_archive(archive, dest_dir, max_bytes)
    return dest_dir

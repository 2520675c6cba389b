"""fetch (resume, retry, verify, mirrors) and extract_archive (safety, corruption), on loopback."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from data_helpers import FileServer, closed_port_url, tar_bytes

from pipeline_lib.data.download import (
    ArchiveError,
    DownloadError,
    ensure_extracted,
    extract_archive,
    fetch,
)

PAYLOAD = os.urandom(1_500_000)
FAST = {"backoff": 0.01, "timeout": 5}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_clean(dest: Path) -> None:
    assert not dest.exists()
    assert not dest.with_suffix(dest.suffix + ".part").exists()


# -- fetch -----------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_reports_progress(tmp_path) -> None:
    seen: list[tuple[int, int | None]] = []
    with FileServer({"f.bin": PAYLOAD}) as server:
        dest = fetch(
            server.url("f.bin"),
            tmp_path / "sub" / "f.bin",
            sha256=_sha(PAYLOAD),
            size=len(PAYLOAD),
            progress=lambda done, total: seen.append((done, total)),
            **FAST,
        )
    assert dest.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]


def test_resume_after_mid_file_disconnect_is_byte_identical(tmp_path) -> None:
    cut = 600_000
    with FileServer({"f.bin": PAYLOAD}, cut_first_at=cut) as server:
        dest = fetch(server.url("f.bin"), tmp_path / "f.bin", sha256=_sha(PAYLOAD), **FAST)
        requests = server.requests
    assert dest.read_bytes() == PAYLOAD
    assert requests == [("f.bin", None), ("f.bin", f"bytes={cut}-")]
    assert not (tmp_path / "f.bin.part").exists()


def test_restart_when_server_ignores_range(tmp_path) -> None:
    with FileServer({"f.bin": PAYLOAD}, cut_first_at=400_000, honor_range=False) as server:
        dest = fetch(server.url("f.bin"), tmp_path / "f.bin", size=len(PAYLOAD), **FAST)
        assert len(server.requests) == 2
    assert dest.read_bytes() == PAYLOAD


def test_partial_file_from_a_killed_run_is_resumed_or_redone(tmp_path) -> None:
    dest = tmp_path / "f.bin"
    part = tmp_path / "f.bin.part"
    part.write_bytes(PAYLOAD[:500_000])
    with FileServer({"f.bin": PAYLOAD}) as server:
        fetch(server.url("f.bin"), dest, sha256=_sha(PAYLOAD), **FAST)
        assert server.requests == [("f.bin", "bytes=500000-")]
    assert dest.read_bytes() == PAYLOAD
    # A stale partial file of other content fails the checksum and is downloaded again.
    dest.unlink()
    part.write_bytes(b"garbage" * 1000)
    with FileServer({"f.bin": PAYLOAD}) as server:
        fetch(server.url("f.bin"), dest, sha256=_sha(PAYLOAD), **FAST)
        assert server.requests == [("f.bin", "bytes=7000-"), ("f.bin", None)]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_retries_transient_http_errors(tmp_path) -> None:
    with FileServer({"f.bin": PAYLOAD}, fail_first=2) as server:
        dest = fetch(server.url("f.bin"), tmp_path / "f.bin", retries=3, **FAST)
        assert len(server.requests) == 3
    assert dest.read_bytes() == PAYLOAD


def test_sha256_mismatch_is_explained_and_leaves_nothing(tmp_path) -> None:
    dest = tmp_path / "f.bin"
    with FileServer({"f.bin": PAYLOAD}) as server:
        url = server.url("f.bin")
        with pytest.raises(DownloadError) as info:
            fetch(url, dest, sha256="0" * 64, **FAST)
    message = str(info.value)
    assert url in message and "sha256 mismatch" in message and "mirror" in message
    _assert_clean(dest)


def test_size_mismatch_is_explained(tmp_path) -> None:
    dest = tmp_path / "f.bin"
    with FileServer({"f.bin": PAYLOAD}) as server:
        with pytest.raises(DownloadError, match=f"expected 1234 bytes, got {len(PAYLOAD)}"):
            fetch(server.url("f.bin"), dest, size=1234, **FAST)
    _assert_clean(dest)


def test_missing_file_fails_without_retrying(tmp_path) -> None:
    dest = tmp_path / "f.bin"
    with FileServer({}) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(server.url("f.bin"), dest, retries=3, **FAST)
        assert len(server.requests) == 1
    _assert_clean(dest)


def test_unreachable_host_gives_up_with_advice(tmp_path) -> None:
    dest = tmp_path / "data.tar.gz"
    url = closed_port_url()
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, retries=1, **FAST)
    message = str(info.value)
    assert url in message and "gave up after 2 attempt" in message
    assert "network" in message and "mirror" in message
    _assert_clean(dest)


def test_mirror_directory_used_when_network_unreachable(tmp_path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "data.tar.gz").write_bytes(PAYLOAD)
    dest = fetch(
        closed_port_url("data.tar.gz"),
        tmp_path / "out" / "data.tar.gz",
        mirror=mirror,
        sha256=_sha(PAYLOAD),
        **FAST,
    )
    assert dest.read_bytes() == PAYLOAD


def test_mirror_directory_without_the_file_falls_back_to_url(tmp_path) -> None:
    (tmp_path / "mirror").mkdir()
    with FileServer({"f.bin": PAYLOAD}) as server:
        dest = fetch(server.url("f.bin"), tmp_path / "f.bin", mirror=tmp_path / "mirror", **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_mirror_url_is_tried_first(tmp_path) -> None:
    with FileServer({"data.tar.gz": PAYLOAD}) as mirror:
        dest = fetch(
            closed_port_url("data.tar.gz"),
            tmp_path / "data.tar.gz",
            mirror=mirror.base_url + "/",
            **FAST,
        )
        assert mirror.requests == [("data.tar.gz", None)]
    assert dest.read_bytes() == PAYLOAD


def test_file_url(tmp_path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    dest = fetch(source.as_uri(), tmp_path / "copy.bin", sha256=_sha(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="cannot read local file"):
        fetch((tmp_path / "nope.bin").as_uri(), tmp_path / "nope.bin", **FAST)
    _assert_clean(tmp_path / "nope.bin")


def test_existing_valid_file_is_not_downloaded_again(tmp_path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    with FileServer({"f.bin": b"other"}) as server:
        fetch(server.url("f.bin"), dest, sha256=_sha(PAYLOAD), **FAST)
        assert server.requests == []
        # A file failing its check is replaced.
        fetch(server.url("f.bin"), dest, sha256=_sha(b"other"), **FAST)
    assert dest.read_bytes() == b"other"


# -- extract_archive -------------------------------------------------------------------------


def _raw_tar(path: Path, infos: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in infos:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _only(parent: Path, *names: str) -> None:
    """The extraction left nothing in ``parent`` besides ``names``."""
    assert sorted(p.name for p in parent.iterdir()) == sorted(names)


def test_extracts_tar_gz_in_place(tmp_path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes({"data/x.txt": b"x" * 100, "data/sub/y.bin": b"y"}))
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "data" / "x.txt").read_bytes() == b"x" * 100
    assert (out / "data" / "sub" / "y.bin").read_bytes() == b"y"
    _only(tmp_path, "a.tar.gz", "out")


def test_extracts_zip_and_keeps_internal_symlinks_in_tar(tmp_path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/z.txt", "zip content")
    assert (extract_archive(archive, tmp_path / "z") / "data" / "z.txt").read_text() == (
        "zip content"
    )
    tar_path = _raw_tar(
        tmp_path / "l.tar.gz",
        [(_member("d/file"), b"abc"), (_member("d/link", tarfile.SYMTYPE, "file"), None)],
    )
    out = extract_archive(tar_path, tmp_path / "l")
    assert (out / "d" / "link").is_symlink() and (out / "d" / "link").read_bytes() == b"abc"


def test_truncated_archive_is_refused_cleanly(tmp_path) -> None:
    data = tar_bytes({"data/big.bin": os.urandom(300_000), "data/small": b"s"})
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_archive(archive, tmp_path / "out")
    _only(tmp_path, "a.tar.gz")


def test_plain_tar_cut_at_a_member_boundary_is_refused(tmp_path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("a", "b"):
            info = tarfile.TarInfo(name)
            info.size = 512
            tar.addfile(info, io.BytesIO(b"z" * 512))
    archive = tmp_path / "a.tar"
    archive.write_bytes(buffer.getvalue()[:1024])  # first member only, no end marker
    with pytest.raises(ArchiveError, match="end-of-archive"):
        extract_archive(archive, tmp_path / "out")
    _only(tmp_path, "a.tar")


def test_corrupted_gzip_is_refused_cleanly(tmp_path) -> None:
    data = bytearray(tar_bytes({"data/text.txt": b"abcdefgh" * 40_000}))
    for i in range(200, 260):
        data[i] ^= 0x5A
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_archive(archive, tmp_path / "out")
    _only(tmp_path, "a.tar.gz")


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (_member("../evil"), "'..' path component"),
        (_member("data/../../evil"), "'..' path component"),
        (_member("/tmp/evil"), "absolute path"),
        (_member("data/link", tarfile.SYMTYPE, "../../outside"), "symlink pointing outside"),
        (_member("data/link", tarfile.SYMTYPE, "/etc/passwd"), "symlink to the absolute path"),
        (_member("data/hard", tarfile.LNKTYPE, "../outside"), "hard link pointing outside"),
        (_member("data/dev", tarfile.CHRTYPE), "device file"),
        (_member("data/fifo", tarfile.FIFOTYPE), "device file or FIFO"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, member: tarfile.TarInfo, match: str) -> None:
    content = b"evil" if member.type == tarfile.REGTYPE else None
    archive = _raw_tar(
        tmp_path / "a.tar.gz", [(_member("data/ok.txt"), b"fine"), (member, content)]
    )
    with pytest.raises(ArchiveError, match=match) as info:
        extract_archive(archive, tmp_path / "out")
    assert member.name in str(info.value)
    _only(tmp_path, "a.tar.gz")  # not even the harmless member was written


def test_unsafe_zip_members_are_refused(tmp_path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/ok.txt", "fine")
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(ArchiveError, match="'..' path component"):
        extract_archive(archive, tmp_path / "out")
    _only(tmp_path, "a.zip")


def test_existing_destination_is_not_overwritten(tmp_path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes({"x": b"1"}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="download it first"):
        extract_archive(tmp_path / "missing.tar.gz", tmp_path / "other")


def test_ensure_extracted_runs_once_under_concurrency(tmp_path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes({f"data/f{i}": os.urandom(50_000) for i in range(20)}))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_extracted(archive, tmp_path / "raw"), range(4)))
    assert all(r == tmp_path / "raw" for r in results)
    assert len(list((tmp_path / "raw" / "data").iterdir())) == 20
    _only(tmp_path, "a.tar.gz", "raw", ".raw.lock")
    archive.unlink()  # already extracted: the archive is not needed again
    assert ensure_extracted(archive, tmp_path / "raw") == tmp_path / "raw"

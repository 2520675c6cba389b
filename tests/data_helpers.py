"""Test helpers for pipeline_lib.data: a loopback HTTP file server and synthetic MAF raw files.

Nothing here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import http.server
import io
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

__all__ = [
    "FileServer",
    "GAS_COLUMNS",
    "HEPMASS_DISCRETE",
    "MafRawSizes",
    "closed_port_url",
    "make_maf_tree",
    "pack_tar_gz",
    "tar_bytes",
]


@dataclass
class _ServerState:
    files: dict[str, bytes]
    honor_range: bool = True
    cut_first_at: int | None = None
    fail_first: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    state: _ServerState  # set on a per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        state = self.state
        name = self.path.lstrip("/").split("?", 1)[0]
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((name, range_header))
            fail = state.fail_first > 0
            if fail:
                state.fail_first -= 1
            cut = state.cut_first_at
            state.cut_first_at = None
        if fail:
            self.send_error(503, "try again")
            return
        if name not in state.files:
            self.send_error(404, "no such file")
            return
        data = state.files[name]
        start = 0
        if range_header and state.honor_range:
            start = int(range_header.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if cut is not None:
            # Send part of the body, then drop the connection mid-file.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)


class FileServer:
    """Serve in-memory files from ``http://127.0.0.1:<port>/<name>`` in a background thread.

    Arguments:
        files: name -> content.
        honor_range: answer ``Range`` requests with 206; if False, always send the whole file.
        cut_first_at: drop the connection after this many body bytes on the first request.
        fail_first: answer the first ``n`` requests with HTTP 503.
    """

    def __init__(
        self,
        files: dict[str, bytes],
        *,
        honor_range: bool = True,
        cut_first_at: int | None = None,
        fail_first: int = 0,
    ) -> None:
        self.state = _ServerState(dict(files), honor_range, cut_first_at, fail_first)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        """``(name, Range header or None)`` for every request received."""
        return list(self.state.requests)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def closed_port_url(name: str = "data.tar.gz") -> str:
    """A loopback URL on a port nobody listens on (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def pack_tar_gz(src: Path, archive: Path, arcname: str = "data") -> Path:
    """Pack directory ``src`` into ``archive`` (gzip) under the top-level name ``arcname``."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return archive


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A gzip tar with regular files ``name -> content``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


# -- synthetic MAF raw data in the layout of the MAF archive ------------------------------------

# The gas pickle of the MAF archive: time, the two concentrations, 16 sensors named by type in
# the order of the UCI description (TGS2602 ×2, 2600 ×2, 2610 ×2, 2620 ×2, then again).
_SENSOR_TYPES = ["TGS2602", "TGS2600", "TGS2610", "TGS2620"]
GAS_SENSORS = [t for _ in range(2) for t in _SENSOR_TYPES for _ in range(2)]
GAS_COLUMNS = ["Time", "Meth", "Eth", *GAS_SENSORS]

# HEPMASS features (of f0..f26) that take few discrete values (jet count, b-tags, ...); the
# synthetic data makes exactly these six repetitive, leaving 21 features as in the real data.
HEPMASS_DISCRETE = (5, 9, 13, 17, 21, 3)


@dataclass(frozen=True)
class MafRawSizes:
    power: int = 2000
    gas: int = 1500
    hepmass_train: int = 800
    hepmass_test: int = 300
    miniboone: int = 600
    bsds_train: int = 300
    bsds_val: int = 40
    bsds_test: int = 80


def _gas_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    sensors = rng.standard_normal((n, 16))
    # Positions 0 and 1 (both "TGS2602") nearly equal: corr > 0.98, so the name TGS2602 is
    # dropped; then positions 2 and 3 ("TGS2600") likewise. 8 sensors remain.
    sensors[:, 1] = sensors[:, 0] + 0.01 * rng.standard_normal(n)
    sensors[:, 3] = sensors[:, 2] + 0.01 * rng.standard_normal(n)
    sensors = sensors * rng.uniform(1.0, 5.0, 16) + rng.uniform(-3.0, 3.0, 16)
    time_col = np.arange(n, dtype=np.float64) * 0.01
    meth = rng.choice([0.0, 50.0, 100.0], size=n)
    eth = rng.choice([0.0, 10.0, 20.0], size=n)
    columns = np.column_stack([time_col, meth, eth, sensors])
    # labels of Python strings in an object index, as in the MAF archive's pickle (pandas 3
    # would otherwise store them as a pyarrow-backed string index)
    return pd.DataFrame(columns, columns=pd.Index(GAS_COLUMNS, dtype=object))


def _hepmass_frame(rng: np.random.Generator, n: int, test: bool) -> pd.DataFrame:
    features = rng.standard_normal((n, 27))
    for k in HEPMASS_DISCRETE:
        features[:, k] = rng.integers(0, 3, size=n)
    labels = np.zeros(n)
    labels[::2] = 1.0  # even rows are the signal (positive) class
    # f0: continuous, but its smallest value occurs in exactly 5 positive rows: kept (the rule
    # is "more than 5").
    features[0:10:2, 0] = features[:, 0].min() - 1.0
    # f1: a non-minimal value repeats often, the minimum is unique: kept (the rule looks at
    # the count of the smallest value only).
    features[10:110:2, 1] = 0.5
    features[0, 1] = features[:, 1].min() - 1.0
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(27)])
    frame.insert(0, "# label", labels)
    if test:
        frame["mass"] = 1000.0  # the test file has one more column than the training file
    return frame


def make_maf_tree(root: Path, sizes: MafRawSizes = MafRawSizes(), seed: int = 0) -> Path:
    """Write small raw files in the layout of the MAF archive under ``root/data``.

    Returns the ``data`` directory.
    """
    rng = np.random.default_rng(seed)
    data = root / "data"
    for sub in ("power", "gas", "hepmass", "miniboone", "BSDS300"):
        (data / sub).mkdir(parents=True, exist_ok=True)

    power = np.column_stack(
        [
            rng.gamma(2.0, 0.5, sizes.power),  # global active power
            rng.gamma(1.0, 0.1, sizes.power),  # global reactive power
            rng.normal(240.0, 3.0, sizes.power),  # voltage
            rng.gamma(2.0, 2.0, sizes.power),  # global intensity
            rng.integers(0, 40, sizes.power).astype(float),  # sub-metering 1..3
            rng.integers(0, 40, sizes.power).astype(float),
            rng.integers(0, 20, sizes.power).astype(float),
            rng.integers(0, 1440, sizes.power).astype(float),  # time of day (minutes)
        ]
    )
    np.save(data / "power" / "data.npy", power)

    _gas_frame(rng, sizes.gas).to_pickle(data / "gas" / "ethylene_CO.pickle")

    _hepmass_frame(rng, sizes.hepmass_train, test=False).to_csv(
        data / "hepmass" / "1000_train.csv", index=False
    )
    _hepmass_frame(rng, sizes.hepmass_test, test=True).to_csv(
        data / "hepmass" / "1000_test.csv", index=False
    )

    miniboone = rng.standard_normal((sizes.miniboone, 43)) * rng.uniform(0.5, 4.0, 43) + 2.0
    np.save(data / "miniboone" / "data.npy", miniboone)

    with h5py.File(data / "BSDS300" / "BSDS300.hdf5", "w") as handle:
        for key, n in (
            ("train", sizes.bsds_train),
            ("validation", sizes.bsds_val),
            ("test", sizes.bsds_test),
        ):
            handle.create_dataset(key, data=rng.uniform(-0.5, 0.5, (n, 63)))
    return data


# -- synthetic image files in the formats of MNIST and CIFAR-10 ----------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """A gzip IDX file of unsigned bytes: 0, 0, type 0x08, ndim, big-endian sizes, values."""
    import gzip
    import struct

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_mnist_mirror(
    directory: Path, n_train: int = 60, n_test: int = 12, size: int = 8, seed: int = 0
) -> dict[str, str]:
    """The four MNIST files (reference names) with synthetic ``size``×``size`` images (a
    bright square on a dark ground, placed at random) in ``directory``; returns their MD5s
    by file name, for ``data.image_md5``."""
    import hashlib

    rng = np.random.default_rng(seed)

    def images(n: int) -> np.ndarray:
        out = rng.integers(0, 30, size=(n, size, size))
        for image in out:
            r, c = rng.integers(0, size - 2, size=2)
            image[r : r + 3, c : c + 3] = rng.integers(180, 256)
        return out

    content = {
        "train-images-idx3-ubyte.gz": idx_bytes(images(n_train)),
        "train-labels-idx1-ubyte.gz": idx_bytes(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx_bytes(images(n_test)),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(np.arange(n_test) % 10),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in content.items():
        (directory / name).write_bytes(data)
    return {name: hashlib.md5(data).hexdigest() for name, data in content.items()}

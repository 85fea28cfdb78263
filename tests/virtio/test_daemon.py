"""``cafs virtiofs`` as a process: its socket, its signals, and a front end that misbehaves."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from tests.daemon import socket_path
from tests.mount.conftest import ingest
from tests.process import CAFS, cafs, store_env
from tests.virtio import frontend as fe
from tests.virtio.daemon import running_virtiofs
from tests.virtio.frontend import FrontEnd
from tests.virtio.test_backend import LOOKUP, OPEN, init, lookup, read


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("virtiofs-store")
    tree = base / "tree"
    tree.mkdir()
    (tree / "hello").write_bytes(b"Hello World!")
    (tree / "data").write_bytes(bytes(range(256)) * 400)
    home = base / "home"
    return home, ingest(tree, home)


def connect(path: Path) -> FrontEnd:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return FrontEnd(sock)


def test_a_front_end_is_served_and_its_going_away_ends_the_daemon(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    home, digest = store
    path = Path(socket_path(tmp_path))
    with running_virtiofs(home, path, "castore", "virtiofs", digest) as daemon:
        front = connect(path)
        front.handshake()
        # Garbage: the daemon logs it and goes on.
        front.sock.sendall(fe.HEADER.pack(fe.GET_FEATURES, 3, 4) + b"junk")
        assert front.ack(123) != 0
        for index in range(2):
            front.setup_ring(index)
        init(front)
        nodeid, size = lookup(front, b"data")
        assert size == 256 * 400
        error, reply = front.fuse(OPEN, nodeid, struct.pack("<II", 0, 0))
        assert error == 0
        fh = struct.unpack_from("<Q", reply)[0]
        assert read(front, nodeid, fh, 1000, 5000) == (bytes(range(256)) * 400)[1000:6000]
        error, reply = front.fuse(LOOKUP, 1, b"nothing\0")
        assert error == 0 and struct.unpack_from("<Q", reply)[0] == 0  # a negative entry
        front.close()
        assert daemon.wait() == 0, daemon.log_text()
        assert not path.exists()
        log = daemon.log_text()
        assert "protocol version 3" in log and "request 123 is not supported" in log


def test_sigterm_before_any_front_end_exits_0_and_removes_the_socket(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    home, digest = store
    path = Path(socket_path(tmp_path))
    with running_virtiofs(home, path, "castore", "virtiofs", digest) as daemon:
        assert path.is_socket()
        assert daemon.stop(signal.SIGTERM) == 0
        assert not path.exists()


def test_sigint_while_serving_exits_0(store: tuple[Path, str], tmp_path: Path) -> None:
    home, digest = store
    path = Path(socket_path(tmp_path))
    with running_virtiofs(home, path, "castore", "virtiofs", digest) as daemon:
        front = connect(path)
        front.start()
        init(front)
        assert daemon.stop(signal.SIGINT) == 0
        front.close()


def test_a_busy_or_impossible_socket_path_is_a_one_line_error(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    home, digest = store
    path = Path(socket_path(tmp_path))
    with running_virtiofs(home, path, "castore", "virtiofs", digest):
        busy = cafs("castore", "virtiofs", digest, str(path), home=home, check=False)
        assert busy.returncode == 1
        assert busy.stderr.strip().splitlines() == [
            f"error: cannot listen on {path}: another server is listening there"
        ]
    missing = tmp_path / "no" / "such" / "dir.sock"
    bad = cafs("castore", "virtiofs", digest, str(missing), home=home, check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"error: cannot listen on {missing}: No such file or directory"
    ]


def test_store_mode_serves_store_paths_by_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tree = tmp_path / "hello-tree"
    tree.mkdir()
    (tree / "greeting").write_bytes(b"hi there\n")
    store_path = cafs("import", str(tree), home=home).stdout.strip()
    name = store_path.rsplit("/", 1)[1].encode()
    path = Path(socket_path(tmp_path))
    with running_virtiofs(home, path, "virtiofs") as daemon:
        front = connect(path)
        front.start()
        init(front)
        directory, _ = lookup(front, name)
        assert lookup(front, b"greeting", directory)[1] == 9
        front.close()
        assert daemon.wait() == 0


def test_an_unknown_digest_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CAFS, "castore", "virtiofs", "b3:" + "A" * 43 + "=", str(tmp_path / "s.sock")],
        env=store_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3  # not found
    assert result.stderr.strip().startswith("error: directory b3:")
    assert not (tmp_path / "s.sock").exists()


def test_virtiofs_serves_its_request_metrics(store: tuple[Path, str], tmp_path: Path) -> None:
    from tests.http.bridge import free_port
    from tests.mount.test_metrics import scrape

    home, digest = store
    path = Path(socket_path(tmp_path))
    port = free_port()
    metrics = ("--metrics-listen-address", f"127.0.0.1:{port}")
    with running_virtiofs(home, path, "castore", "virtiofs", *metrics, digest) as daemon:
        front = connect(path)
        front.start()
        init(front)
        lookup(front, b"hello")
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        front.close()
        assert daemon.wait() == 0
    assert samples['cafs_fuse_requests_total{opcode="INIT"}'] == 1
    assert samples['cafs_fuse_requests_total{opcode="LOOKUP"}'] == 1

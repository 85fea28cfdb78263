"""Deadlines and retries of the gRPC clients, against a real daemon that stalls or goes away.

A stopped daemon (SIGSTOP) answers nothing: every call must fail within its
URL's ``deadline`` instead of hanging, and work again once it continues. A
daemon that restarts within the retry window is waited for; one that stays
away costs later callers one attempt each, not a window each.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cafs.castore.blobs.grpc import GrpcBlobService
from cafs.castore.digest import Digest
from cafs.errors import InvalidAddressError, RemoteError
from cafs.rpc.channel import DEFAULT_DEADLINE, RETRY_WINDOW, parse_channel_url
from tests.daemon import Daemon, file_services, socket_path, spawn_daemon
from tests.mount.conftest import expect_errno, mounted
from tests.process import cafs

DEADLINE = 1.5
SLACK = 2.0
"""Seconds beyond the deadline a failure may take (process scheduling on a busy machine)."""


def test_deadline_option_of_grpc_urls() -> None:
    assert parse_channel_url("grpc+unix:///s").deadline == DEFAULT_DEADLINE
    assert parse_channel_url("grpc+unix:///s?deadline=2.5").deadline == 2.5
    address = parse_channel_url("grpc+http://127.0.0.1:8000?wait-connect=1&deadline=30")
    assert address.deadline == 30 and address.wait_connect
    for bad in ("0", "-1", "soon", "", "1e9"):
        with pytest.raises(InvalidAddressError, match="deadline must be"):
            parse_channel_url(f"grpc+unix:///s?deadline={bad}")
    with pytest.raises(InvalidAddressError, match="only wait-connect and deadline"):
        parse_channel_url("grpc+unix:///s?timeout=3")


@pytest.fixture
def listen(tmp_path: Path) -> str:
    return socket_path(tmp_path)


@pytest.fixture
def daemon(tmp_path: Path, listen: str) -> Iterator[Daemon]:
    started = spawn_daemon(tmp_path / "daemon", listen, *file_services(tmp_path))
    try:
        yield started
    finally:
        if started.process.poll() is None:
            os.kill(started.process.pid, signal.SIGCONT)  # a stopped daemon cannot stop
        started.terminate()


def put_blob(daemon: Daemon, tmp_path: Path, data: bytes) -> Digest:
    source = tmp_path / "blob"
    source.write_bytes(data)
    line = cafs(
        "castore",
        "ingest",
        str(source),
        "--blob-service-addr",
        daemon.url,
        "--directory-service-addr",
        daemon.url,
        home=tmp_path / "client",
    ).stdout
    return Digest.parse(line.split()[2])


async def test_a_stopped_daemon_fails_calls_within_the_deadline(
    daemon: Daemon, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = put_blob(daemon, tmp_path, data)
    blobs = GrpcBlobService(parse_channel_url(f"{daemon.url}?deadline={DEADLINE}"))
    try:
        assert await blobs.read_all(digest) == data
        os.kill(daemon.process.pid, signal.SIGSTOP)
        for call in (blobs.has, blobs.read_all, blobs.chunks):
            started = time.monotonic()
            with pytest.raises(RemoteError) as caught:
                await call(digest)
            assert caught.value.code == "DEADLINE_EXCEEDED", caught.value
            assert DEADLINE * 0.8 <= time.monotonic() - started < DEADLINE + SLACK
        os.kill(daemon.process.pid, signal.SIGCONT)
        assert await blobs.read_all(digest) == data  # recovered, nothing to do
    finally:
        await blobs.close()


async def test_a_restart_within_the_retry_window_is_waited_for(
    daemon: Daemon, tmp_path: Path, listen: str
) -> None:
    data = b"survives a restart"
    digest = put_blob(daemon, tmp_path, data)
    blobs = GrpcBlobService(parse_channel_url(daemon.url))
    try:
        assert await blobs.read_all(digest) == data
        daemon.kill()
        restarted: list[Daemon] = []

        def restart() -> None:
            time.sleep(0.8)
            restarted.append(
                spawn_daemon(
                    tmp_path / "daemon",
                    daemon.args[daemon.args.index("--listen-address") + 1],
                    *file_services(tmp_path),
                )
            )

        thread = threading.Thread(target=restart)
        thread.start()
        try:
            started = time.monotonic()
            assert await blobs.read_all(digest) == data
            assert time.monotonic() - started < RETRY_WINDOW + SLACK
        finally:
            thread.join()
            for again in restarted:
                again.terminate()
        # Gone for good: one window, then every later call fails at once.
        started = time.monotonic()
        with pytest.raises(RemoteError, match="UNAVAILABLE"):
            await blobs.has(digest)
        assert time.monotonic() - started >= RETRY_WINDOW * 0.8
        started = time.monotonic()
        with pytest.raises(RemoteError, match="UNAVAILABLE"):
            await blobs.has(digest)
        assert time.monotonic() - started < 1.0
    finally:
        await blobs.close()


def test_a_mount_over_a_stopped_daemon_gives_eio_and_recovers(
    daemon: Daemon, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "early").write_bytes(b"read before the stop")
    (tree / "late").write_bytes(os.urandom(2 * 1024 * 1024))
    url = f"{daemon.url}?deadline={DEADLINE}"
    flags = ("--blob-service-addr", url, "--directory-service-addr", url)
    line = cafs("castore", "ingest", str(tree), *flags, home=tmp_path / "client").stdout
    digest = line.split()[2]
    with mounted(digest, tmp_path / "mnt", tmp_path / "home", *flags) as m:
        assert (m.path / "early").read_bytes() == b"read before the stop"
        os.kill(daemon.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        expect_errno(errno.EIO, (m.path / "late").read_bytes)
        assert time.monotonic() - started < 2 * DEADLINE + SLACK
        assert m.process.poll() is None  # the mount stays up
        assert (m.path / "early").read_bytes() == b"read before the stop"  # page cache
        os.kill(daemon.process.pid, signal.SIGCONT)
        assert (m.path / "late").read_bytes() == (tree / "late").read_bytes()

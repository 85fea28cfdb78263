"""A 1 GiB blob through the daemon's Put and Read, in bounded memory on both sides.

The daemon stores in an ``objectstore+file`` backend (a memory backend holds
the blob in RAM by design). Its peak resident set (``VmHWM``) must stay far
below the blob's size, and so must the growth of this test process, which
sends random data made one MiB at a time and hashes what comes back as it
arrives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import pytest

from cafs.gen.tvix.castore.v1 import rpc_blobstore_pb2
from cafs.gen.tvix.castore.v1.rpc_blobstore_pb2_grpc import BlobServiceStub
from cafs.rpc.channel import parse_channel_url
from tests.daemon import running_daemon, socket_path

MiB = 1 << 20
GiB = 1 << 30
PIECE = MiB
TVIX_MAX_MESSAGE = 4 * MiB
MAX_CHUNK = 512 * 1024
"""FastCDC's largest chunk at the default 256 KiB average."""
DAEMON_PEAK_LIMIT = 400 * MiB
CLIENT_GROWTH_LIMIT = 200 * MiB
TIMEOUT = 600.0

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads peak memory from /proc"
)


def memory(pid: int | str, field: str) -> int:
    """A ``Vm*`` line of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_own_peak() -> None:
    """Start this process's VmHWM afresh (earlier tests may have peaked higher)."""
    # If this fails, VmHWM may overstate this test's growth, never understate it.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@pytest.mark.slow
def test_one_gib_blob_streams_in_bounded_memory(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    try:
        with running_daemon(
            tmp_path / "home",
            socket_path(tmp_path),
            "--blob-service-addr",
            f"objectstore+file://{objects}",
            "--directory-service-addr",
            "memory://",
            "--path-info-service-addr",
            "memory://",
        ) as daemon:
            pid = daemon.process.pid
            target = parse_channel_url(daemon.url).target
            with grpc.insecure_channel(target) as channel:
                blobs = BlobServiceStub(channel)
                reset_own_peak()
                client_start = memory("self", "VmRSS")

                sent = blake3.blake3()

                def pieces() -> Iterator[rpc_blobstore_pb2.BlobChunk]:
                    for _ in range(GiB // PIECE):
                        data = os.urandom(PIECE)
                        sent.update(data)
                        yield rpc_blobstore_pb2.BlobChunk(data=data)

                digest = blobs.Put(pieces(), timeout=TIMEOUT).digest
                assert digest == sent.digest()
                daemon_peak_put = memory(pid, "VmHWM")

                stat = blobs.Stat(rpc_blobstore_pb2.StatBlobRequest(digest=digest))
                assert sum(c.size for c in stat.chunks) == GiB
                assert len(stat.chunks) >= GiB // MAX_CHUNK
                assert max(c.size for c in stat.chunks) <= MAX_CHUNK

                received = blake3.blake3()
                total = biggest = 0
                request = rpc_blobstore_pb2.ReadBlobRequest(digest=digest)
                for message in blobs.Read(request, timeout=TIMEOUT):
                    received.update(message.data)
                    total += len(message.data)
                    biggest = max(biggest, len(message.data))
                assert total == GiB
                assert received.digest() == digest
                assert biggest <= TVIX_MAX_MESSAGE

                daemon_peak = memory(pid, "VmHWM")
                client_growth = memory("self", "VmHWM") - client_start
            assert daemon.process.poll() is None
        print(
            f"\n1 GiB round trip: daemon VmHWM {daemon_peak_put / MiB:.0f} MiB after Put, "
            f"{daemon_peak / MiB:.0f} MiB after Read; "
            f"test process growth {client_growth / MiB:.0f} MiB"
        )
        assert daemon_peak < DAEMON_PEAK_LIMIT
        assert client_growth < CLIENT_GROWTH_LIMIT
    finally:
        shutil.rmtree(objects, ignore_errors=True)  # a GiB is too much to leave behind

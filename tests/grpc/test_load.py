"""Concurrent clients on one daemon and concurrent readers on one mount: no wrong byte.

A small form of ``bench/load.py`` (which runs 16 clients × 10,000 reads and 64
readers and reports latencies): here 8 clients and 32 readers, every read
compared with its source.
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

from cafs.castore.blobs.grpc import GrpcBlobService
from cafs.castore.digest import Digest
from cafs.rpc.channel import parse_channel_url
from tests.daemon import file_services, running_daemon, socket_path
from tests.mount.conftest import mounted
from tests.process import cafs

CLIENTS = 8
READS = 150
READERS = 32
MOUNT_READS = 60


def make_files(root: Path, count: int = 120) -> dict[str, bytes]:
    root.mkdir()
    rng = random.Random(11)
    files = {f"f{i:03d}": rng.randbytes(rng.randrange(1, 300_000)) for i in range(count)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


async def test_concurrent_clients_and_readers_get_every_byte_right(tmp_path: Path) -> None:
    files = make_files(tmp_path / "files")
    with running_daemon(
        tmp_path / "daemon", socket_path(tmp_path), *file_services(tmp_path / "backends")
    ) as daemon:
        flags = ("--blob-service-addr", daemon.url, "--directory-service-addr", daemon.url)
        root = cafs("castore", "ingest", str(tmp_path / "files"), *flags,
                    home=tmp_path / "client").stdout.split()[2]  # fmt: skip
        listing = cafs("castore", "ls", root, *flags, home=tmp_path / "client").stdout
        digests = {line.split()[-1]: Digest.parse(line.split()[1]) for line in listing.splitlines()}

        async def client(seed: int) -> int:
            service = GrpcBlobService(parse_channel_url(daemon.url))
            rng = random.Random(seed)
            wrong = 0
            try:
                for _ in range(READS):
                    name = rng.choice(list(files))
                    wrong += await service.read_all(digests[name]) != files[name]
            finally:
                await service.close()
            return wrong

        assert await asyncio.gather(*(client(seed) for seed in range(CLIENTS))) == [0] * CLIENTS

        with mounted(root, tmp_path / "mnt", tmp_path / "home", *flags) as m:
            problems: list[str] = []

            def reader(seed: int) -> None:
                rng = random.Random(1000 + seed)
                for _ in range(MOUNT_READS):
                    name = rng.choice(list(files))
                    try:
                        if (m.path / name).read_bytes() != files[name]:
                            problems.append(f"wrong bytes in {name}")
                    except OSError as exc:
                        problems.append(f"{name}: {exc}")

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert problems == []
            assert m.process.poll() is None

"""Shared fixtures: every service backend, built from its URL as a user would.

The ``grpc-*`` kinds are clients of a real ``cafs daemon`` process, on a
unix socket or on TCP at 127.0.0.1, started for the test and stopped by PID.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from cafs.castore.blobs.base import BlobService
from cafs.castore.blobs.plain import PlainFileBlobService, PlainFiles
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.directories.base import DirectoryService
from tests.daemon import Daemon, running_daemon, socket_path

BLOB_BACKENDS = [
    "memory",
    "objectstore+memory",
    "objectstore+file",
    "cache",
    "grpc-unix",
    "grpc-tcp",
]
DIRECTORY_BACKENDS = [
    "memory",
    "sqlite-memory",
    "sqlite",
    "objectstore+memory",
    "objectstore+file",
    "cache",
    "grpc-unix",
    "grpc-tcp",
]

# What the daemon behind each gRPC kind stores in: chunked blobs on one, whole ones on the other.
DAEMON_SERVICES = {
    "grpc-unix": ("objectstore+memory:///", "sqlite://", "sqlite://"),
    "grpc-tcp": ("memory://", "memory://", "memory://"),
}


@contextlib.contextmanager
def daemon_for(kind: str, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon for a ``grpc-*`` backend kind."""
    blobs, directories, path_infos = DAEMON_SERVICES[kind]
    listen = socket_path(tmp_path) if kind == "grpc-unix" else "127.0.0.1:0"
    with running_daemon(
        tmp_path / "daemon",
        listen,
        "--blob-service-addr",
        blobs,
        "--directory-service-addr",
        directories,
        "--path-info-service-addr",
        path_infos,
    ) as daemon:
        yield daemon


def blob_url(kind: str, tmp_path: Path) -> str:
    """The URL of a local blob backend kind."""
    return {
        "memory": "memory://",
        "objectstore+memory": "objectstore+memory:///",
        "objectstore+file": f"objectstore+file://{tmp_path / 'objects'}",
        "cache": "cache://?near=memory://&far=objectstore+memory:///",
    }[kind]


def directory_url(kind: str, tmp_path: Path) -> str:
    """The URL of a local directory backend kind."""
    return {
        "memory": "memory://",
        "sqlite-memory": "sqlite://",
        "sqlite": f"sqlite://{tmp_path / 'directories.sqlite'}",
        "cache": f"cache://?near=memory://&far=sqlite://{tmp_path / 'far.sqlite'}",
        "objectstore+memory": "objectstore+memory:///",
        "objectstore+file": f"objectstore+file://{tmp_path / 'directories'}",
    }[kind]


Service = TypeVar("Service", BlobService, DirectoryService)


async def serving(
    kind: str,
    tmp_path: Path,
    local_url: Callable[[str, Path], str],
    from_addr: Callable[[str], Service],
) -> AsyncIterator[Service]:
    """A service of backend ``kind`` (a daemon's client for ``grpc-*``), closed afterwards."""
    with contextlib.ExitStack() as stack:
        if kind.startswith("grpc-"):
            url = stack.enter_context(daemon_for(kind, tmp_path)).url
        else:
            url = local_url(kind, tmp_path)
        service = from_addr(url)
        try:
            yield service
        finally:
            await service.close()


@pytest.fixture(params=[*BLOB_BACKENDS, "plain"])
async def blob_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BlobService]:
    if request.param == "plain":
        # Plain copies of every blob read, made at once and read from then on.
        inner = blob_service_from_addr(blob_url("objectstore+file", tmp_path))
        plain = PlainFiles(tmp_path / "plain", 1 << 30, min_size=1)
        service: BlobService = PlainFileBlobService(inner, plain, finish=True)
        await service.connect()
        try:
            yield service
        finally:
            await service.close()
        return
    async for service in serving(request.param, tmp_path, blob_url, blob_service_from_addr):
        yield service


@pytest.fixture(params=DIRECTORY_BACKENDS)
async def directory_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DirectoryService]:
    async for service in serving(
        request.param, tmp_path, directory_url, directory_service_from_addr
    ):
        yield service

"""Shared fixtures: every service backend, built from its URL as a user would.

The ``grpc-*`` kinds are clients of a real ``cafs daemon`` process, on a
unix socket or on TCP at 127.0.0.1, started for the test and stopped by PID.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cafs.castore.blobs.base import BlobService
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
DIRECTORY_BACKENDS = ["memory", "sqlite-memory", "sqlite", "cache", "grpc-unix", "grpc-tcp"]

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
    }[kind]


@pytest.fixture(params=BLOB_BACKENDS)
async def blob_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BlobService]:
    with contextlib.ExitStack() as stack:
        if request.param.startswith("grpc-"):
            url = stack.enter_context(daemon_for(request.param, tmp_path)).url
        else:
            url = blob_url(request.param, tmp_path)
        service = blob_service_from_addr(url)
        try:
            yield service
        finally:
            await service.close()


@pytest.fixture(params=DIRECTORY_BACKENDS)
async def directory_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DirectoryService]:
    with contextlib.ExitStack() as stack:
        if request.param.startswith("grpc-"):
            url = stack.enter_context(daemon_for(request.param, tmp_path)).url
        else:
            url = directory_url(request.param, tmp_path)
        service = directory_service_from_addr(url)
        try:
            yield service
        finally:
            await service.close()

"""Shared fixtures: every service backend, built from its URL as a user would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cafs.castore.blobs.base import BlobService
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.directories.base import DirectoryService

BLOB_BACKENDS = ["memory", "objectstore+memory", "objectstore+file"]
DIRECTORY_BACKENDS = ["memory", "sqlite-memory", "sqlite"]


def blob_url(kind: str, tmp_path: Path) -> str:
    return {
        "memory": "memory://",
        "objectstore+memory": "objectstore+memory:///",
        "objectstore+file": f"objectstore+file://{tmp_path / 'objects'}",
    }[kind]


def directory_url(kind: str, tmp_path: Path) -> str:
    return {
        "memory": "memory://",
        "sqlite-memory": "sqlite://",
        "sqlite": f"sqlite://{tmp_path / 'directories.sqlite'}",
    }[kind]


@pytest.fixture(params=BLOB_BACKENDS)
async def blob_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BlobService]:
    service = blob_service_from_addr(blob_url(request.param, tmp_path))
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture(params=DIRECTORY_BACKENDS)
async def directory_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DirectoryService]:
    service = directory_service_from_addr(directory_url(request.param, tmp_path))
    try:
        yield service
    finally:
        await service.close()

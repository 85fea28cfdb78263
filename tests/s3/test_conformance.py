"""The blob, directory and PathInfo conformance suites, run on ``objectstore+s3://``.

The suites' tests that take a service fixture are collected here again, with
the fixtures below handing them a service on a fresh bucket of a real S3
server (SeaweedFS on loopback).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from types import ModuleType
from typing import TypeVar

import pytest

from cafs.castore.blobs.base import BlobService
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.directories.base import DirectoryService
from cafs.store.composition import path_info_service_from_addr
from cafs.store.pathinfos.base import PathInfoService
from tests.unit import test_blob_services, test_directory_services
from tests.unit.store import test_pathinfo_services


def suite(module: ModuleType, fixture: str, prefix: str) -> dict[str, object]:
    """The tests of ``module`` that take ``fixture``, renamed so suites do not collide."""
    found = {}
    for name, test in vars(module).items():
        is_test = name.startswith("test_") and inspect.isfunction(test)
        if is_test and fixture in inspect.signature(test).parameters:
            found[f"test_{prefix}_{name.removeprefix('test_')}"] = test
    return found


globals().update(suite(test_blob_services, "blob_service", "blobs"))
globals().update(suite(test_directory_services, "directory_service", "directories"))
globals().update(suite(test_pathinfo_services, "service", "pathinfos"))


S = TypeVar("S", BlobService, DirectoryService, PathInfoService)


async def connected(service: S) -> AsyncIterator[S]:
    """``service`` connected for one test, closed however it ends."""
    await service.connect()
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
async def blob_service(bucket: str) -> AsyncIterator[BlobService]:
    async for service in connected(blob_service_from_addr(bucket)):
        yield service


@pytest.fixture
async def directory_service(bucket: str) -> AsyncIterator[DirectoryService]:
    async for service in connected(directory_service_from_addr(bucket)):
        yield service


@pytest.fixture
async def service(bucket: str) -> AsyncIterator[PathInfoService]:
    async for svc in connected(path_info_service_from_addr(bucket)):
        yield svc

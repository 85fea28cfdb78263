"""The blob, directory and PathInfo conformance suites, run on ``objectstore+s3://``.

The suites' tests that take a service fixture are collected here again, with
the fixtures below handing them a service on a fresh bucket of a real S3
server (SeaweedFS on loopback).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from types import ModuleType

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


@pytest.fixture
async def blob_service(bucket: str) -> AsyncIterator[BlobService]:
    service = blob_service_from_addr(bucket)
    await service.connect()
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
async def directory_service(bucket: str) -> AsyncIterator[DirectoryService]:
    service = directory_service_from_addr(bucket)
    await service.connect()
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
async def service(bucket: str) -> AsyncIterator[PathInfoService]:
    svc = path_info_service_from_addr(bucket)
    await svc.connect()
    try:
        yield svc
    finally:
        await svc.close()

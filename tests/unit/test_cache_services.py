"""The cache combinators: what is fetched far away is fetched once, then served near."""

from __future__ import annotations

import os
from pathlib import Path

from cafs.castore.blobs.base import BlobReader, ChunkMeta
from cafs.castore.blobs.cache import CachedBlobService
from cafs.castore.blobs.memory import MemoryBlobService
from cafs.castore.blobs.objectstore import ObjectStoreBlobService
from cafs.castore.closure import LeavesToRootValidator, leaves_first
from cafs.castore.composition import blob_service_from_addr
from cafs.castore.digest import Digest
from cafs.castore.directories.cache import CachedDirectoryService
from cafs.castore.directories.memory import MemoryDirectoryService
from cafs.castore.directory import Directory
from cafs.castore.objectstore import MemoryObjectStorage
from tests.fixtures import (
    DIRECTORY_A,
    DIRECTORY_B,
    DIRECTORY_D,
    HELLOWORLD_BLOB,
    HELLOWORLD_DIGEST,
)


class CountingBlobs(ObjectStoreBlobService):
    """A chunking store that counts the reads reaching it."""

    def __init__(self) -> None:
        super().__init__(MemoryObjectStorage())
        self.reads = 0

    async def open_read(self, digest: Digest) -> BlobReader | None:
        self.reads += 1
        return await super().open_read(digest)

    async def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        self.reads += 1
        return await super().chunks(digest)


class CountingDirectories(MemoryDirectoryService):
    """A directory store that counts the lookups reaching it."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, digest: Digest) -> Directory | None:
        self.gets += 1
        return await super().get(digest)


async def read_through(service: CachedBlobService, digest: Digest) -> bytes:
    reader = await service.open_read(digest)
    assert reader is not None
    async with reader:
        return await reader.read()


async def test_blobs_cross_once_then_come_from_near() -> None:
    far = CountingBlobs()
    near = MemoryBlobService()
    cache = CachedBlobService(near, far)
    large = os.urandom(3 << 20)  # several chunks
    large_digest = await far.put(large)
    assert len(await far.chunks(large_digest) or []) >= 2
    await far.put(HELLOWORLD_BLOB)
    far.reads = 0

    assert await read_through(cache, HELLOWORLD_DIGEST) == HELLOWORLD_BLOB
    assert await read_through(cache, large_digest) == large
    first = far.reads
    assert first > 0
    assert await near.has(HELLOWORLD_DIGEST)  # whole blobs are kept under their own digest
    assert await read_through(cache, HELLOWORLD_DIGEST) == HELLOWORLD_BLOB
    assert await read_through(cache, large_digest) == large
    assert far.reads == first  # nothing crossed again
    # A seek into the middle is served from the chunks kept near.
    reader = await cache.open_read(large_digest)
    assert reader is not None
    async with reader:
        await reader.seek(len(large) // 2)
        assert await reader.read(1000) == large[len(large) // 2 : len(large) // 2 + 1000]
    assert far.reads == first


async def test_blob_cache_misses_and_writes() -> None:
    far = CountingBlobs()
    near = MemoryBlobService()
    cache = CachedBlobService(near, far)
    assert await cache.open_read(HELLOWORLD_DIGEST) is None
    assert not await cache.has(HELLOWORLD_DIGEST)
    # Writes go far, the source of truth, and are not copied near until read.
    assert await cache.put(HELLOWORLD_BLOB) == HELLOWORLD_DIGEST
    assert await far.has(HELLOWORLD_DIGEST) and not await near.has(HELLOWORLD_DIGEST)
    assert await cache.has(HELLOWORLD_DIGEST)
    assert await cache.read_many([HELLOWORLD_DIGEST]) == {HELLOWORLD_DIGEST: HELLOWORLD_BLOB}
    assert await near.has(HELLOWORLD_DIGEST)


async def test_directory_closure_is_fetched_once() -> None:
    far = CountingDirectories()
    near = MemoryDirectoryService()
    cache = CachedDirectoryService(near, far)
    putter = far.put_multiple_start()
    for directory in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_D):
        await putter.put(directory)
    await putter.close()
    far.gets = 0

    assert await cache.get(DIRECTORY_D.digest) == DIRECTORY_D
    fetched = far.gets
    # The whole closure came along: its members are served near.
    assert await cache.get(DIRECTORY_B.digest) == DIRECTORY_B
    assert await cache.get(DIRECTORY_A.digest) == DIRECTORY_A
    closure = [d async for d in cache.get_recursive(DIRECTORY_D.digest)]
    assert {d.digest for d in closure} == {
        d.digest for d in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_D)
    }
    assert far.gets == fetched
    assert await near.get(DIRECTORY_B.digest) == DIRECTORY_B
    assert await cache.get(Digest(bytes(32))) is None


def test_leaves_first_puts_shared_children_before_every_parent() -> None:
    # D refers to A and B, and B to A: root first, A comes once, before B.
    root_first = [DIRECTORY_D, DIRECTORY_A, DIRECTORY_B]
    ordered = leaves_first(root_first)
    assert [d.digest for d in ordered] == [
        DIRECTORY_A.digest,
        DIRECTORY_B.digest,
        DIRECTORY_D.digest,
    ]
    validator = LeavesToRootValidator()
    for directory in ordered:
        validator.add(directory)
    assert validator.finish()[0] == DIRECTORY_D.digest
    # Plain reversal would not do: B would come before A, which it refers to.
    assert root_first[-1] == DIRECTORY_B


async def test_a_blob_read_through_is_kept_whole_near(tmp_path: Path) -> None:
    """Once read through, a chunked blob is near for good: a new service needs no far."""
    far = CountingBlobs()
    near_url = f"objectstore+file://{tmp_path / 'near'}"
    large = os.urandom(3 << 20)
    digest = await far.put(large)
    cache = CachedBlobService(blob_service_from_addr(near_url), far)
    assert await read_through(cache, digest) == large
    await cache.near.close()

    # Another process later, with far gone (an empty store stands in for it).
    later = CachedBlobService(blob_service_from_addr(near_url), CountingBlobs())
    try:
        assert await later.chunks(digest) == await far.chunks(digest)
        assert await read_through(later, digest) == large
        assert later.far.reads == 0  # type: ignore[attr-defined]
    finally:
        await later.close()


async def test_a_partly_read_blob_is_not_recorded_near(tmp_path: Path) -> None:
    far = CountingBlobs()
    near = blob_service_from_addr(f"objectstore+file://{tmp_path / 'near'}")
    large = os.urandom(3 << 20)
    digest = await far.put(large)
    cache = CachedBlobService(near, far)
    reader = await cache.open_read(digest)
    assert reader is not None
    async with reader:
        assert await reader.read(1 << 20) == large[: 1 << 20]
    # Unverified as a whole, so near keeps chunks but no chunk list.
    assert await near.chunks(digest) is None
    await near.close()

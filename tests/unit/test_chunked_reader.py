"""The chunked blob reader: random access, the recent-chunk memory, verification on the way."""

from __future__ import annotations

import os

import pytest

from cafs.castore.blobs.base import ChunkMeta
from cafs.castore.blobs.chunked import ChunkedBlobReader, RecentChunks
from cafs.castore.digest import Digest
from cafs.errors import IntegrityError

CHUNK = 1000


def make_blob(count: int) -> tuple[bytes, list[ChunkMeta], dict[Digest, bytes]]:
    data = os.urandom(CHUNK * count)
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    metas = [ChunkMeta(Digest.of(piece), len(piece)) for piece in pieces]
    return data, metas, {meta.digest: piece for meta, piece in zip(metas, pieces, strict=True)}


class Fetches:
    def __init__(self, store: dict[Digest, bytes]) -> None:
        self.store = store
        self.count = 0

    async def __call__(self, meta: ChunkMeta) -> bytes:
        self.count += 1
        return self.store[meta.digest]


async def read_at(reader: ChunkedBlobReader, offset: int, size: int) -> bytes:
    await reader.seek(offset)
    return await reader.read(size)


async def test_random_reads_come_back_to_remembered_chunks_without_a_fetch() -> None:
    data, metas, store = make_blob(8)
    fetch = Fetches(store)
    recent = RecentChunks()
    reader = ChunkedBlobReader(Digest.of(data), metas, fetch, prefetch=0, recent=recent)
    offsets = [7 * CHUNK + 5, 2 * CHUNK, 5 * CHUNK + 999, 2 * CHUNK + 10, 7 * CHUNK, 0, 5 * CHUNK]
    for offset in offsets:
        assert await read_at(reader, offset, 100) == data[offset : offset + 100]
    assert fetch.count == 5  # chunks 7, 2, 5, 6 (the read across 5 and 6) and 0, once each
    # Another reader of the same service finds them too.
    other = ChunkedBlobReader(Digest.of(data), metas, fetch, prefetch=0, recent=recent)
    assert await read_at(other, 2 * CHUNK + 1, 50) == data[2 * CHUNK + 1 : 2 * CHUNK + 51]
    assert fetch.count == 5


async def test_the_budget_drops_the_least_recently_used_chunks() -> None:
    data, metas, store = make_blob(6)
    fetch = Fetches(store)
    recent = RecentChunks(budget=3 * CHUNK)
    reader = ChunkedBlobReader(Digest.of(data), metas, fetch, prefetch=0, recent=recent)
    for index in (0, 2, 4, 0, 5):  # 0 is used again, so 2 is the one to go for 5
        await read_at(reader, index * CHUNK, 10)
    assert fetch.count == 4
    await read_at(reader, 0, 10)
    await read_at(reader, 4 * CHUNK, 10)
    assert fetch.count == 4
    await read_at(reader, 2 * CHUNK, 10)
    assert fetch.count == 5


async def test_a_whole_read_through_remembered_chunks_is_still_verified() -> None:
    data, metas, store = make_blob(4)
    recent = RecentChunks()
    wrong_digest = Digest.of(b"another blob")
    first = ChunkedBlobReader(Digest.of(data), metas, Fetches(store), recent=recent)
    assert await first.read() == data
    # The chunks are remembered, but a blob index that does not add up is still caught.
    lying = ChunkedBlobReader(wrong_digest, metas, Fetches(store), recent=recent)
    with pytest.raises(IntegrityError):
        await lying.read()

"""``cache://?near=URL&far=URL``: a local BlobService in front of a remote one.

Reads are served near when near has the blob; otherwise they come from far
and what arrives is kept near (read-through), so every blob and chunk
crosses the network once. A chunked blob is read chunk by chunk, each chunk
kept near as a blob of its own; the chunk lists of recently read blobs are
remembered, so a second read needs no round trip at all. Writes go to far,
the source of truth.

``near-size=SIZE`` (``500M``, ``20G``) bounds an object-store near cache:
least recently used objects are evicted past it (see ``bounded.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import SplitResult

from cafs import counters
from cafs.castore.blobs.base import BlobReader, BlobService, BlobWriter, ChunkMeta
from cafs.castore.blobs.bounded import SizeBound
from cafs.castore.blobs.chunked import ChunkedBlobReader
from cafs.castore.blobs.objectstore import ObjectStoreBlobService
from cafs.castore.digest import Digest
from cafs.castore.near_far import NearFar
from cafs.errors import IntegrityError, InvalidAddressError, StorageError
from cafs.urls import cache_sides, cache_urls, size_option

CHUNK_LISTS_KEPT = 4096
NEAR_SIZE = "near-size"
# Bytes counted for a blob index written near (the real size is a few hundred).
INDEX_SIZE_GUESS = 512
COPY_BYTES = 1 << 20


class CachedBlobService(NearFar[BlobService], BlobService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> CachedBlobService:
        """``cache://?near=URL&far=URL``: both sides built from their own URLs."""
        from cafs.castore.composition import blob_service_from_addr

        options = cache_urls(url, parts, extra=frozenset({NEAR_SIZE}))
        near, far = cache_sides(url, options, blob_service_from_addr)
        limit = None
        if NEAR_SIZE in options:
            limit = size_option(url, NEAR_SIZE, options[NEAR_SIZE])
            if not isinstance(near, ObjectStoreBlobService):
                raise InvalidAddressError(url, f"{NEAR_SIZE} needs an objectstore+… near cache")
        return cls(near, far, limit)

    def __init__(self, near: BlobService, far: BlobService, near_size: int | None = None) -> None:
        super().__init__(near, far)
        self._chunk_lists: OrderedDict[Digest, list[ChunkMeta]] = OrderedDict()
        self.bound: SizeBound | None = None
        if near_size is not None:
            assert isinstance(near, ObjectStoreBlobService)
            self.bound = SizeBound(near, near_size)

    async def close(self) -> None:
        if self.bound is not None:
            await self.bound.wait()  # a short-lived command still leaves near under its bound
        await super().close()

    async def _used(self, digests: Sequence[Digest]) -> None:
        if self.bound is not None:
            await self.bound.used(digests)

    def _added(self, size: int) -> None:
        if self.bound is not None:
            self.bound.added(size)

    async def has(self, digest: Digest) -> bool:
        return await self.near.has(digest) or await self.far.has(digest)

    async def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        known = self._chunk_lists.get(digest)
        if known is not None:
            return known
        if await self.near.has(digest):
            return await self.near.chunks(digest)
        return await self.far.chunks(digest)

    def _remember(self, digest: Digest, chunks: list[ChunkMeta]) -> None:
        self._chunk_lists[digest] = chunks
        self._chunk_lists.move_to_end(digest)
        while len(self._chunk_lists) > CHUNK_LISTS_KEPT:
            self._chunk_lists.popitem(last=False)

    async def open_read(self, digest: Digest) -> BlobReader | None:
        chunks = self._chunk_lists.get(digest)
        if chunks is None:
            reader = await self.near.open_read(digest)
            counters.cache_lookup("blob", reader is not None)
            if reader is not None:
                await self._used([digest])
                return reader
            chunks = await self.far.chunks(digest)
            if chunks is None:
                return None
        if len(chunks) >= 2:
            self._remember(digest, chunks)
            known = chunks

            async def adopt() -> None:
                await self.near.adopt_chunks(digest, known)
                self._added(INDEX_SIZE_GUESS)

            return ChunkedBlobReader(digest, chunks, self._fetch_chunk, on_verified=adopt)
        if not await self._copy_near(digest):
            return None
        return await self.near.open_read(digest)

    async def _copy_near(self, digest: Digest) -> bool:
        """Stream a blob from far into near; False if far does not have it."""
        source = await self.far.open_read(digest)
        if source is None:
            return False
        sink_size = 0
        async with source, await self.near.open_write() as sink:
            while data := await source.read_some(COPY_BYTES):
                await sink.write(data)
                sink_size += len(data)
            stored = await sink.close()
        if stored != digest:
            raise IntegrityError(f"blob {digest} from far hashes to {stored}")
        self._added(sink_size)
        return True

    async def _fetch_chunk(self, chunk: ChunkMeta) -> bytes:
        data = await self.near.read_all(chunk.digest)
        counters.cache_lookup("blob", data is not None)
        if data is not None:
            await self._used([chunk.digest])
            return data
        data = await self.far.read_all(chunk.digest)
        if data is None:
            raise StorageError(f"chunk {chunk.digest} is missing near and far")
        await self.near.put_chunk(data)
        self._added(len(data))
        return data

    async def read_many(self, digests: Sequence[Digest]) -> dict[Digest, bytes]:
        found = await self.near.read_many(digests)
        await self._used(list(found))
        missing = [d for d in digests if d not in found]
        counters.add("cafs_cache_lookups", len(found), service="blob", result="hit")
        counters.add("cafs_cache_lookups", len(missing), service="blob", result="miss")
        if missing:
            fetched = await self.far.read_many(missing)
            if fetched:
                await self.near.put_many(list(fetched.values()))
                self._added(sum(len(data) for data in fetched.values()))
                found.update(fetched)
        return found

    async def open_write(self) -> BlobWriter:
        return await self.far.open_write()

    async def put_files(self, paths: Sequence[str]) -> list[tuple[Digest, int]]:
        return await self.far.put_files(paths)

    async def put_many(self, blobs: Sequence[bytes]) -> list[Digest]:
        return await self.far.put_many(blobs)

"""``objectstore+…``: blobs as content-defined, zstd-compressed chunks.

On-disk layout, shared with tvix so either can read what the other wrote:

- ``chunks/b3/<first 2 bytes, hex>/<digest hex>``: one chunk, zstd-compressed;
- ``blobs/b3/<first 2 bytes, hex>/<digest hex>``: the blob index, a raw
  ``StatBlobResponse`` listing the chunks; empty when the blob is one chunk
  (then the chunk's digest is the blob's digest).

Chunk boundaries come from FastCDC 2020 (min = avg/2, max = 2·avg, average
256 KiB), the algorithm and gear table tvix's chunker uses, so equal data
chunks alike in both. Every chunk is checked against its digest when read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import SplitResult

import blake3
import zstandard
from pyfastcdc import FastCDC

from cafs import counters
from cafs.castore.blobs.base import (
    BlobReader,
    BlobService,
    BlobWriter,
    BytesBlobReader,
    ChunkMeta,
    read_file,
)
from cafs.castore.blobs.chunked import ChunkedBlobReader, RecentChunks
from cafs.castore.digest import EMPTY_DIGEST, Digest
from cafs.castore.maintenance import Cutoff, Found, Live, Problem, Progress, Report, digest_of_key
from cafs.castore.objectstore import ObjectInfo, ObjectStorage, Staged, object_storage_from_url
from cafs.errors import CafsError, IntegrityError, StorageError
from cafs.gen.tvix.castore.v1 import rpc_blobstore_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_AVG_CHUNK_SIZE = 256 * 1024
ZSTD_LEVEL = 3
# Compressed chunks are expanded to at most this many bytes (decompression bombs).
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# Bytes buffered by a writer before they are chunked and staged.
WRITE_BATCH = 8 * 1024 * 1024
# Chunks being compressed and staged at once, per writer.
MAX_JOBS_IN_FLIGHT = 16
# A chunk whose sample compresses worse than this is stored at zstd level 1:
# it is incompressible, and level 3 would spend 5x the time to gain nothing.
_INCOMPRESSIBLE_RATIO = 0.9
_SAMPLE = 64 * 1024


def chunk_key(digest: bytes) -> str:
    h = digest.hex()
    return f"chunks/b3/{h[:4]}/{h}"


def blob_key(digest: bytes) -> str:
    h = digest.hex()
    return f"blobs/b3/{h[:4]}/{h}"


class _Codecs(threading.local):
    """Per-thread zstd contexts: making one per chunk costs more than compressing."""

    def __init__(self) -> None:
        self.fast = zstandard.ZstdCompressor(level=1)
        self.normal = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()


_codecs = _Codecs()


def compress_chunk(data: bytes | memoryview) -> bytes:
    codecs = _codecs
    if len(data) > 2 * _SAMPLE:
        sample = codecs.fast.compress(data[:_SAMPLE])
        if len(sample) > _INCOMPRESSIBLE_RATIO * _SAMPLE:
            return codecs.fast.compress(data)
    return codecs.normal.compress(data)


def decompress_chunk(key: str, data: bytes) -> bytes:
    decompressor = _codecs.decompressor
    try:
        declared = zstandard.frame_content_size(data)
        if 0 <= declared <= MAX_CHUNK_SIZE:
            return decompressor.decompress(data, max_output_size=declared)
        reader = decompressor.stream_reader(data)
        out = reader.read(MAX_CHUNK_SIZE + 1)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"object {key} is not valid zstd data: {exc}") from exc
    if len(out) > MAX_CHUNK_SIZE:
        raise IntegrityError(f"object {key} expands to more than {MAX_CHUNK_SIZE} bytes")
    return out


def load_verified_chunk(storage: ObjectStorage, digest: Digest) -> bytes | None:
    """A chunk's bytes, checked against its digest (blocking; run in a thread)."""
    key = chunk_key(digest)
    raw = storage.get_sync(key)
    if raw is None:
        return None
    counters.fetched(storage.kind, len(raw))
    data = decompress_chunk(key, raw)
    actual = blake3.blake3(data).digest()
    if actual != digest:
        raise IntegrityError(
            f"chunk {digest} is corrupt: its contents hash to {Digest(actual)} ({key})"
        )
    return data


def stage_chunk(storage: ObjectStorage, data: memoryview) -> tuple[ChunkMeta, Staged | None]:
    """Hash, compress and stage one chunk, unless the store has it (blocking)."""
    digest = Digest(blake3.blake3(data).digest())
    key = chunk_key(digest)
    if storage.refresh_sync(key):
        return ChunkMeta(digest, len(data)), None
    return ChunkMeta(digest, len(data)), storage.stage(key, compress_chunk(data))


def stage_index(storage: ObjectStorage, digest: Digest, chunks: list[ChunkMeta]) -> list[Staged]:
    """Stage the blob index, where one is needed (blocking).

    A blob that is one chunk is found through its chunk object alone (tvix's
    ``has``, ``open_read`` and ``chunks`` fall back to it too), so its empty
    index is not written: that halves the files a tree of small files costs.
    The empty blob has no chunk, so it keeps its (empty) index.
    """
    if len(chunks) == 1:
        return []
    key = blob_key(digest)
    if storage.refresh_sync(key):
        return []
    return [storage.stage(key, index_bytes(chunks))]


def stage_blob(
    storage: ObjectStorage, chunker: FastCDC, data: bytes, hasher: blake3.blake3 | None = None
) -> tuple[Digest, list[Staged]]:
    """Stage a whole blob held in memory: its chunks, then its index (blocking).

    ``hasher`` may already hold a prefix of ``data``'s bytes fed earlier; it
    is given the rest. On error nothing stays staged.
    """
    view = memoryview(data)
    raw = blake3.blake3(data).digest() if hasher is None else hasher.digest()
    digest = Digest(raw)
    staged: list[Staged] = []
    chunks: list[ChunkMeta] = []
    try:
        if len(data) <= chunker.min_size:
            bounds = [(0, len(data))] if data else []
        else:
            bounds = [(c.offset, c.length) for c in chunker.cut_buf(data)]
        for offset, length in bounds:
            meta, item = stage_chunk(storage, view[offset : offset + length])
            chunks.append(meta)
            if item is not None:
                staged.append(item)
        staged.extend(stage_index(storage, digest, chunks))
    except BaseException:
        storage.discard(staged)
        raise
    return digest, staged


READ_MANY_THREADS = 4
READ_MANY_SLICE = 8
"""At least this many blobs per thread of a batch read: a thread hop costs about one read."""


class ObjectStoreBlobService(BlobService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> ObjectStoreBlobService:
        """``objectstore+file:///dir``, ``objectstore+memory:///``, ``objectstore+s3://…``."""
        return cls(object_storage_from_url(url, parts))

    def __init__(
        self, storage: ObjectStorage, avg_chunk_size: int = DEFAULT_AVG_CHUNK_SIZE
    ) -> None:
        self.storage = storage
        self.avg_chunk_size = avg_chunk_size
        self.recent = RecentChunks()

    async def has(self, digest: Digest) -> bool:
        return await asyncio.to_thread(self._has_sync, digest)

    def _has_sync(self, digest: Digest) -> bool:
        # One thread hop for both probes; most blobs are a single chunk.
        return self.storage.exists_sync(chunk_key(digest)) or self.storage.exists_sync(
            blob_key(digest)
        )

    async def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        index = await self._index(digest)
        if index is not None:
            return index
        return [] if await self.storage.exists(chunk_key(digest)) else None

    async def _index(self, digest: Digest) -> list[ChunkMeta] | None:
        return await asyncio.to_thread(self._index_sync, digest)

    def _index_sync(self, digest: Digest) -> list[ChunkMeta] | None:
        key = blob_key(digest)
        raw = self.storage.get_sync(key)
        if raw is None:
            return None
        msg = rpc_blobstore_pb2.StatBlobResponse()
        try:
            msg.ParseFromString(raw)
            return [ChunkMeta(Digest(c.digest), c.size) for c in msg.chunks]
        except Exception as exc:
            raise IntegrityError(f"blob index {key} is corrupt: {exc}") from exc

    async def open_read(self, digest: Digest) -> BlobReader | None:
        if digest == EMPTY_DIGEST:
            return BytesBlobReader(b"")
        found = await asyncio.to_thread(self._open_sync, digest)
        if found is None:
            return None
        if isinstance(found, bytes):
            return BytesBlobReader(found)
        return ChunkedBlobReader(digest, found, self._fetch_chunk, recent=self.recent)

    async def read_many(self, digests: Sequence[Digest]) -> dict[Digest, bytes]:
        # A few threads: a disk serves concurrent small reads faster than a
        # queue of one (objects of one directory are scattered by digest).
        wanted = list(digests)
        step = max(READ_MANY_SLICE, -(-len(wanted) // READ_MANY_THREADS))
        parts = await asyncio.gather(
            *(
                asyncio.to_thread(self._read_many_sync, wanted[i : i + step])
                for i in range(0, len(wanted), step)
            )
        )
        return {digest: data for part in parts for digest, data in part.items()}

    def _read_many_sync(self, digests: list[Digest]) -> dict[Digest, bytes]:
        found: dict[Digest, bytes] = {}
        for digest in digests:
            try:
                data = load_verified_chunk(self.storage, digest)
            except CafsError:
                continue  # reported when (if ever) the blob is opened
            if data is not None:  # multi-chunk blobs are left to open_read
                found[digest] = data
        return found

    def _open_sync(self, digest: Digest) -> bytes | list[ChunkMeta] | None:
        """A single-chunk blob's bytes, else its chunk list (one thread hop for both)."""
        data = load_verified_chunk(self.storage, digest)
        if data is not None:
            return data
        # No index, or an index for a single chunk whose object is gone.
        return self._index_sync(digest) or None

    async def _fetch_chunk(self, chunk: ChunkMeta) -> bytes:
        data = await asyncio.to_thread(load_verified_chunk, self.storage, chunk.digest)
        if data is None:
            raise StorageError(f"chunk {chunk.digest} not found ({chunk_key(chunk.digest)})")
        return data

    async def open_write(self) -> BlobWriter:
        return ObjectStoreBlobWriter(self)

    def new_chunker(self) -> FastCDC:
        """A chunker with tvix's parameters: min = avg/2, max = 2·avg."""
        avg = self.avg_chunk_size
        return FastCDC(avg, min_size=avg // 2, max_size=avg * 2)

    async def put_files(self, paths: Sequence[str]) -> list[tuple[Digest, int]]:
        results, staged = await asyncio.to_thread(self._stage_files, paths)
        await self.storage.commit(staged)
        return results

    def _stage_files(self, paths: Sequence[str]) -> tuple[list[tuple[Digest, int]], list[Staged]]:
        """Read, hash, chunk, compress and stage whole files (blocking)."""
        return self._stage_each(paths, read_file)

    async def put_many(self, blobs: Sequence[bytes]) -> list[Digest]:
        results, staged = await asyncio.to_thread(self._stage_each, blobs, bytes)
        await self.storage.commit(staged)
        return [digest for digest, _ in results]

    def _stage_each(
        self, sources: Sequence[T], load: Callable[[T], bytes]
    ) -> tuple[list[tuple[Digest, int]], list[Staged]]:
        """Hash, chunk, compress and stage each loaded source (blocking); all or nothing."""
        chunker = self.new_chunker()
        results: list[tuple[Digest, int]] = []
        staged: list[Staged] = []
        try:
            for source in sources:
                data = load(source)
                digest, items = stage_blob(self.storage, chunker, data)
                results.append((digest, len(data)))
                staged.extend(items)
        except BaseException:
            self.storage.discard(staged)
            raise
        return results, staged

    async def put_chunk(self, data: bytes) -> Digest:
        meta, staged = await asyncio.to_thread(stage_chunk, self.storage, memoryview(data))
        if staged is not None:
            await self.storage.commit([staged])
        return meta.digest

    async def adopt_chunks(self, digest: Digest, chunks: Sequence[ChunkMeta]) -> None:
        def stage() -> list[Staged]:
            if not all(self.storage.refresh_sync(chunk_key(c.digest)) for c in chunks):
                return []  # a chunk is missing: no index that would point at nothing
            return stage_index(self.storage, digest, list(chunks))

        staged = await asyncio.to_thread(stage)
        if staged:
            await self.storage.commit(staged)

    async def connect(self) -> None:
        await self.storage.connect()

    async def close(self) -> None:
        await self.storage.close()

    def _listing(self) -> tuple[list[ObjectInfo], list[ObjectInfo]]:
        """Every chunk and every blob index (blocking)."""
        return list(self.storage.list_sync("chunks/")), list(self.storage.list_sync("blobs/"))

    async def collect(self, live: Live, cutoff: Cutoff, dry_run: bool) -> list[Found]:
        chunks, indexes = await asyncio.to_thread(self._listing)
        # A single-chunk blob is its chunk; a larger one keeps the chunks its index names.
        live_chunks = set(live.blobs)
        for info in indexes:
            digest = digest_of_key(info.key)
            if digest is not None and digest in live.blobs:
                listed = await self._index(digest)
                live_chunks.update(c.digest for c in listed or [])
        dead_indexes = _dead(indexes, live.blobs, cutoff)
        dead_chunks = _dead(chunks, live_chunks, cutoff)
        if not dry_run:
            # Indexes first: an index never outlives a chunk it names.
            dead_indexes = await self.storage.sweep(dead_indexes, cutoff.at)
            dead_chunks = await self.storage.sweep(dead_chunks, cutoff.at)
        return [Found("blob index", i.key, i.size) for i in dead_indexes] + [
            Found("chunk", i.key, i.size) for i in dead_chunks
        ]

    async def verify(self, report: Report, progress: Progress) -> int:
        chunks, indexes = await asyncio.to_thread(self._listing)
        checked = 0
        present: set[Digest] = set()
        batches = [chunks[i : i + VERIFY_BATCH] for i in range(0, len(chunks), VERIFY_BATCH)]
        # A few batches at once: a remote store answers concurrent reads far faster.
        limit = asyncio.Semaphore(VERIFY_THREADS)

        async def check(batch: list[ObjectInfo]) -> list[tuple[ObjectInfo, str | None]]:
            async with limit:
                return await asyncio.to_thread(self._verify_chunks, batch)

        for done in asyncio.as_completed([check(batch) for batch in batches]):
            results = await done
            for info, problem in results:
                if problem is None:
                    digest = digest_of_key(info.key)
                    if digest is not None:
                        present.add(digest)
                else:
                    report(Problem("chunk", info.key, problem))
            checked += len(results)
            progress(checked)
        problems = await asyncio.gather(*(self._verify_index(i.key, present) for i in indexes))
        for info, problem in zip(indexes, problems, strict=True):
            if problem is not None:
                report(Problem("blob index", info.key, problem))
        checked += len(indexes)
        progress(checked)
        return checked

    def _verify_chunks(self, batch: list[ObjectInfo]) -> list[tuple[ObjectInfo, str | None]]:
        results: list[tuple[ObjectInfo, str | None]] = []
        for info in batch:
            digest = digest_of_key(info.key)
            if digest is None:
                results.append((info, "not named by a digest"))
                continue
            try:
                found = load_verified_chunk(self.storage, digest)
            except CafsError as exc:
                results.append((info, str(exc)))
                continue
            results.append((info, None if found is not None else "vanished while checked"))
        return results

    async def _verify_index(self, key: str, present: set[Digest]) -> str | None:
        """An index must parse, name chunks that are there, and hash to its blob's digest."""
        digest = digest_of_key(key)
        if digest is None:
            return "not named by a digest"
        try:
            chunks = await self._index(digest)
        except CafsError as exc:
            return str(exc)
        if chunks is None:
            return None  # removed while checked
        if len(chunks) == 1 and digest != chunks[0].digest:
            return f"lists one chunk {chunks[0].digest} but the blob is {digest}"
        missing = [c.digest for c in chunks if c.digest not in present]
        if missing:
            return f"names {len(missing)} missing or corrupt chunks, e.g. {missing[0]}"
        hasher = blake3.blake3()
        for chunk in chunks:
            try:
                data = await self._fetch_chunk(chunk)
            except CafsError as exc:
                return str(exc)
            if len(data) != chunk.size:
                return f"says chunk {chunk.digest} has {chunk.size} bytes, it has {len(data)}"
            hasher.update(data)
        if hasher.digest() != digest:
            return f"its chunks hash to {Digest(hasher.digest())}, not to the blob's digest"
        return None

    async def remove(self, problems: Sequence[Problem]) -> int:
        keys = [p.key for p in problems if p.kind in ("chunk", "blob index")]
        await self.storage.delete(keys)
        return len(keys)


VERIFY_BATCH = 64
VERIFY_THREADS = 4


def _dead(listed: list[ObjectInfo], live: set[Digest], cutoff: Cutoff) -> list[ObjectInfo]:
    """Objects named by a digest that is not live, written before the cutoff."""
    dead = []
    for info in listed:
        digest = digest_of_key(info.key)
        if digest is not None and digest not in live and info.modified <= cutoff.at:
            dead.append(info)
    return dead


class ObjectStoreBlobWriter(BlobWriter):
    """Buffers, chunks, compresses and stages a blob; ``close`` commits it.

    Chunking and hashing happen in batches on a worker thread; each chunk is
    then compressed and staged by its own worker-thread job, in the
    background, while the caller goes on writing. A bounded number of jobs in
    flight keeps memory flat however large the blob.
    """

    def __init__(self, service: ObjectStoreBlobService) -> None:
        self._storage = service.storage
        self._chunker = service.new_chunker()
        # Unchunked data: the tail of the last batch, then the blocks written since.
        self._carry = b""
        self._blocks: list[bytes] = []
        self._buffered = 0
        self._hashed = 0  # bytes of _carry already fed to the hasher
        self._hasher = blake3.blake3()
        self._jobs: list[asyncio.Future[tuple[ChunkMeta, Staged | None]]] = []
        self._awaited = 0  # jobs before this index are known to be finished
        self._closed = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write to a closed blob writer")
        self._blocks.append(bytes(data))
        self._buffered += len(data)
        if self._buffered >= WRITE_BATCH:
            await self._cut(final=False)

    def _take_buffer(self) -> bytes:
        buffer = b"".join([self._carry, *self._blocks])
        self._carry, self._blocks, self._buffered = b"", [], 0
        return buffer

    async def _cut(self, final: bool) -> None:
        """Chunk the buffer and start a staging job per complete chunk."""
        buffer = self._take_buffer()
        start_hash = self._hashed

        def cut() -> list[tuple[int, int]]:
            self._hasher.update(memoryview(buffer)[start_hash:])
            return [(c.offset, c.length) for c in self._chunker.cut_buf(buffer)]

        bounds = await asyncio.to_thread(cut)
        if not final:
            # The last chunk may have been cut short by the end of the buffer.
            bounds = bounds[:-1]
        view = memoryview(buffer)
        for offset, length in bounds:
            while len(self._jobs) - self._awaited >= MAX_JOBS_IN_FLIGHT:
                await self._jobs[self._awaited]
                self._awaited += 1
            piece = view[offset : offset + length]
            job = asyncio.to_thread(stage_chunk, self._storage, piece)
            self._jobs.append(asyncio.ensure_future(job))
        consumed = sum(length for _, length in bounds)
        self._carry = buffer[consumed:]
        self._buffered = len(self._carry)
        self._hashed = len(self._carry)

    async def close(self) -> Digest:
        if self._closed:
            raise ValueError("blob writer closed twice")
        self._closed = True
        try:
            if not self._jobs:
                # The whole blob is in the buffer: finish it in one worker-thread hop.
                digest, staged = await asyncio.to_thread(self._finish_buffered)
            else:
                await self._cut(final=True)
                results = await asyncio.gather(*self._jobs)
                chunks = [meta for meta, _ in results]
                staged = [item for _, item in results if item is not None]
                digest = Digest(self._hasher.digest())
                staged.extend(await asyncio.to_thread(stage_index, self._storage, digest, chunks))
            # Chunks first, the index last: an index is never visible before its chunks.
            await self._storage.commit(staged)
            self._jobs = []
            return digest
        except BaseException:
            await self.abort()
            raise

    def _finish_buffered(self) -> tuple[Digest, list[Staged]]:
        buffer = self._take_buffer()
        self._hasher.update(memoryview(buffer)[self._hashed :])
        return stage_blob(self._storage, self._chunker, buffer, self._hasher)

    async def abort(self) -> None:
        self._closed = True
        self._carry, self._blocks = b"", []
        jobs, self._jobs = self._jobs, []
        results = await asyncio.gather(*jobs, return_exceptions=True)
        staged = [r[1] for r in results if isinstance(r, tuple) and r[1] is not None]
        if staged:
            await asyncio.to_thread(self._storage.discard, staged)


def index_bytes(chunks: Sequence[ChunkMeta]) -> bytes:
    """A blob index: the raw ``StatBlobResponse`` listing the chunks."""
    msg = rpc_blobstore_pb2.StatBlobResponse()
    for chunk in chunks:
        msg.chunks.add(digest=chunk.digest, size=chunk.size)
    return msg.SerializeToString(deterministic=True)

"""A seekable reader over a blob stored as a list of chunks.

Chunks are fetched on demand (each verified by the fetch function); while
reads go forward, a window of the following chunks is fetched concurrently
(so a store with latency, or a disk, streams at its own speed), and a read
that walks the blob from start to end also checks the whole-blob digest, so
a chunk list that does not add up to the blob is caught, not served silently.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import blake3

from cafs.castore.blobs.base import BlobReader, ChunkMeta
from cafs.castore.digest import Digest
from cafs.errors import IntegrityError

ChunkFetcher = Callable[[ChunkMeta], Awaitable[bytes]]
"""Returns a chunk's verified bytes; raises if the chunk is missing or corrupt."""

OnVerified = Callable[[], Awaitable[None]]
"""Called once the chunks, read through from start to end, hashed to the blob's digest."""

PREFETCH_CHUNKS = 8
"""Chunks fetched ahead of a forward reader (about 2 MiB at tvix's chunk size)."""
RECENT_CHUNK_BYTES = 64 * 1024 * 1024
"""What a service keeps of the verified chunks it read lately (see ``RecentChunks``)."""


class RecentChunks:
    """Verified chunks read lately, kept in memory up to a byte budget, least recently used out.

    A reader that jumps about a blob (random reads through a mount) comes
    back to the chunks it read before; finding one here saves its fetch,
    decompression and hash, a thread hop included. Only chunks that a fetch
    function verified are put here.
    """

    def __init__(self, budget: int = RECENT_CHUNK_BYTES) -> None:
        self.budget = budget
        self._chunks: OrderedDict[Digest, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, digest: Digest) -> bytes | None:
        data = self._chunks.get(digest)
        if data is not None:
            self._chunks.move_to_end(digest)
        return data

    def put(self, digest: Digest, data: bytes) -> None:
        if digest in self._chunks or len(data) > self.budget:
            return
        self._chunks[digest] = data
        self._bytes += len(data)
        while self._bytes > self.budget:
            _, dropped = self._chunks.popitem(last=False)
            self._bytes -= len(dropped)


class ChunkedBlobReader(BlobReader):
    def __init__(
        self,
        digest: Digest,
        chunks: Sequence[ChunkMeta],
        fetch: ChunkFetcher,
        prefetch: int = PREFETCH_CHUNKS,
        on_verified: OnVerified | None = None,
        recent: RecentChunks | None = None,
    ) -> None:
        if not chunks:
            raise ValueError("a chunked blob needs at least one chunk")
        self._digest = digest
        self._chunks = list(chunks)
        self._fetch = fetch
        self._starts: list[int] = []
        total = 0
        for chunk in self._chunks:
            self._starts.append(total)
            total += chunk.size
        self._size = total
        self._pos = 0
        self._cached_index = -1
        self._cached: bytes = b""
        self._window = prefetch
        self._ahead: dict[int, asyncio.Task[bytes]] = {}
        # Whole-blob verification while reads stay sequential from offset 0.
        self._hasher: blake3.blake3 | None = blake3.blake3()
        self._hashed = 0
        self._on_verified = on_verified
        self._recent = recent

    @property
    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def _set_position(self, position: int) -> None:
        self._pos = position

    def chunk_index(self, position: int) -> int | None:
        """Index of the chunk holding byte ``position``, or None past the end."""
        if position < 0 or position >= self._size:
            return None
        return bisect.bisect_right(self._starts, position) - 1

    async def _chunk(self, index: int) -> bytes:
        if index == self._cached_index:
            return self._cached
        forward = index == self._cached_index + 1
        meta = self._chunks[index]
        task = self._ahead.pop(index, None)
        data = self._recent.get(meta.digest) if self._recent is not None else None
        if data is None:
            data = await task if task is not None else await self._fetch(meta)
            if self._recent is not None:
                self._recent.put(meta.digest, data)
        elif task is not None:
            task.cancel()
        if len(data) != meta.size:
            raise IntegrityError(
                f"blob {self._digest}: chunk {meta.digest} has "
                f"{len(data)} bytes, the chunk list says {meta.size}"
            )
        self._cached_index, self._cached = index, data
        self._plan_ahead(index, forward)
        return data

    def _plan_ahead(self, index: int, forward: bool) -> None:
        """Keep the window after ``index`` in flight while reads go forward."""
        end = min(len(self._chunks), index + 1 + self._window) if forward else index + 1
        for stale in [i for i in self._ahead if not index < i < end]:
            self._ahead.pop(stale).cancel()
        for following in range(index + 1, end):
            if following not in self._ahead:
                task = asyncio.ensure_future(self._fetch(self._chunks[following]))
                # A failed prefetch is reported when (if ever) the chunk is read.
                task.add_done_callback(_consume_exception)
                self._ahead[following] = task

    def _cancel_prefetch(self) -> None:
        for task in self._ahead.values():
            task.cancel()
        self._ahead.clear()

    async def read(self, n: int = -1) -> bytes:
        end = self._size if n < 0 else min(self._size, self._pos + n)
        parts: list[bytes] = []
        pos = self._pos
        while pos < end:
            index = self.chunk_index(pos)
            assert index is not None
            data = await self._chunk(index)
            start = self._starts[index]
            piece = data[pos - start : min(len(data), end - start)]
            parts.append(piece)
            pos += len(piece)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        verified = self._account(self._pos, out)
        self._pos = pos
        if verified and self._on_verified is not None:
            await self._on_verified()
        return out

    async def read_some(self, n: int) -> bytes:
        if self._pos >= self._size or n <= 0:
            return b""
        index = self.chunk_index(self._pos)
        assert index is not None
        start = self._starts[index]
        data = await self._chunk(index)
        # A slice covering the whole chunk is the chunk itself: no copy.
        out = data[self._pos - start : min(len(data), self._pos - start + n)]
        verified = self._account(self._pos, out)
        self._pos += len(out)
        if verified and self._on_verified is not None:
            await self._on_verified()
        return out

    def _account(self, offset: int, data: bytes) -> bool:
        """Hash what is read in order; True when the whole blob has just been verified."""
        if self._hasher is None:
            return False
        if offset != self._hashed:
            if offset > self._hashed:
                self._hasher = None  # a jump ahead: sequential verification no longer applies
            return False
        self._hasher.update(data)
        self._hashed += len(data)
        if self._hashed < self._size:
            return False
        actual = self._hasher.digest()
        self._hasher = None
        if actual != self._digest:
            raise IntegrityError(
                f"blob {self._digest}: its chunks hash to {Digest(actual)}; "
                "the blob index is corrupt"
            )
        return True

    async def close(self) -> None:
        self._cancel_prefetch()
        self._cached = b""


def _consume_exception(task: asyncio.Task[bytes]) -> None:
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()

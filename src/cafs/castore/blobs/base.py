"""The BlobService interface and the readers and writers it hands out."""

from __future__ import annotations

import asyncio
import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from cafs.castore.digest import Digest
from cafs.errors import CafsError


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    """One chunk of a blob: its own digest and length."""

    digest: Digest
    size: int


class BlobReader(ABC):
    """A seekable, async reader over one blob.

    ``read(n)`` returns exactly ``n`` bytes unless the end of the blob comes
    first. Seeking past the end is an error; seeking to the end is allowed.
    """

    @property
    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def tell(self) -> int: ...

    @abstractmethod
    async def read(self, n: int = -1) -> bytes: ...

    async def read_some(self, n: int) -> bytes:
        """At most ``n`` bytes, at least one before the end: whatever is cheapest.

        For streaming consumers: a chunked reader hands out whole stored
        chunks this way, without joining or copying them.
        """
        return await self.read(n)

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self.tell() + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError("seek before the start of the blob")
        if target > self.size:
            raise ValueError("seek beyond the end of the blob")
        self._set_position(target)
        return target

    @abstractmethod
    def _set_position(self, position: int) -> None: ...

    async def close(self) -> None:  # noqa: B027 - most readers hold nothing to release
        """Release what the reader holds."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class BytesBlobReader(BlobReader):
    """A reader over a blob held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def contents(self) -> bytes:
        return self._data

    def tell(self) -> int:
        return self._pos

    def _set_position(self, position: int) -> None:
        self._pos = position

    async def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        out = self._data[self._pos : end]
        self._pos = max(self._pos, end)
        return out


class BlobWriter(ABC):
    """Receives a blob's bytes; ``close()`` stores it and returns its digest.

    The blob becomes visible to readers only when ``close()`` returns. A
    writer that is dropped or ``abort()``-ed leaves nothing visible.
    """

    @abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    async def close(self) -> Digest: ...

    async def abort(self) -> None:  # noqa: B027 - writers with no staged state need nothing
        """Discard what was written."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            await self.abort()


class BlobService(ABC):
    """Stores blobs by the BLAKE3 digest of their whole contents.

    A missing blob is ``None`` / ``False``, not an error. Backends that store
    chunks answer ``has`` and ``open_read`` for chunk digests too.
    """

    @abstractmethod
    async def has(self, digest: Digest) -> bool: ...

    @abstractmethod
    async def open_read(self, digest: Digest) -> BlobReader | None: ...

    @abstractmethod
    async def open_write(self) -> BlobWriter: ...

    async def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        """The chunks a blob is stored as: None if absent, [] if it has no finer chunks."""
        return [] if await self.has(digest) else None

    async def put(self, data: bytes) -> Digest:
        """Store ``data`` in one call."""
        writer = await self.open_write()
        try:
            await writer.write(data)
        except BaseException:
            await writer.abort()
            raise
        return await writer.close()

    async def put_files(self, paths: Sequence[str]) -> list[tuple[Digest, int]]:
        """Store whole small files; returns (digest, size) per path, in order.

        One call for many files lets a backend amortise its per-call costs
        (thread hand-offs, durability flushes). Raises ``OSError`` for a file
        that cannot be read, naming it; nothing of the batch is then visible.
        """
        results: list[tuple[Digest, int]] = []
        for path in paths:
            data = await asyncio.to_thread(read_file, path)
            results.append((await self.put(data), len(data)))
        return results

    async def put_many(self, blobs: Sequence[bytes]) -> list[Digest]:
        """Store several small blobs held in memory; returns their digests, in order.

        The in-memory sibling of ``put_files``, for blobs that arrive in a
        stream (a NAR) rather than as files.
        """
        return [await self.put(data) for data in blobs]

    async def read_many(self, digests: Sequence[Digest]) -> dict[Digest, bytes]:
        """Several small blobs in one call; absent or unreadable ones are left out.

        For readers that guess what is wanted next: a backend answers the
        batch at the cost of about one request.
        """
        found: dict[Digest, bytes] = {}
        for digest in digests:
            try:
                data = await self.read_all(digest)
            except CafsError:
                continue
            if data is not None:
                found[digest] = data
        return found

    async def put_chunk(self, data: bytes) -> Digest:
        """Store ``data`` as one chunk, never cut finer (a cache keeping a remote's chunks)."""
        return await self.put(data)

    async def adopt_chunks(self, digest: Digest, chunks: Sequence[ChunkMeta]) -> None:  # noqa: B027
        """Record that ``digest`` is the concatenation of ``chunks``, stored here by ``put_chunk``.

        The caller has verified that the chunks hash to ``digest``. Backends
        without chunk lists ignore it (the blob stays readable chunk by chunk
        only through the caller).
        """

    def plain_file(self, digest: Digest) -> str | None:
        """A plain file holding the blob's verified bytes, if one is at hand (no I/O).

        Readers that can hand a file to the kernel (FUSE passthrough,
        ``sendfile``) use it instead of reading the blob through the service.
        """
        return None

    async def read_all(self, digest: Digest) -> bytes | None:
        """The whole blob in memory (for small blobs and tests)."""
        reader = await self.open_read(digest)
        if reader is None:
            return None
        async with reader:
            return await reader.read()

    async def connect(self) -> None:  # noqa: B027 - only remote backends connect
        """Reach the backend now, failing early (remote backends with ``wait-connect=1``)."""

    async def close(self) -> None:  # noqa: B027 - backends without resources keep the default
        """Release connections, threads and files."""


def read_file(path: str) -> bytes:
    """A whole file's bytes (blocking)."""
    with open(path, "rb") as f:
        return f.read()

"""``memory://``: blobs in a dict, for tests and throwaway stores."""

from __future__ import annotations

from urllib.parse import SplitResult

import blake3

from cafs.castore.blobs.base import BlobReader, BlobService, BlobWriter, BytesBlobReader
from cafs.castore.digest import EMPTY_DIGEST, Digest
from cafs.urls import check_memory_url


class MemoryBlobService(BlobService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> MemoryBlobService:
        """``memory://``: takes no host, path or option."""
        check_memory_url(url, parts)
        return cls()

    def __init__(self) -> None:
        self._blobs: dict[Digest, bytes] = {}

    async def has(self, digest: Digest) -> bool:
        return digest in self._blobs

    async def open_read(self, digest: Digest) -> BlobReader | None:
        data = self._blobs.get(digest)
        if data is None and digest == EMPTY_DIGEST:
            data = b""  # the empty blob needs no storage to be read
        return None if data is None else BytesBlobReader(data)

    async def open_write(self) -> BlobWriter:
        return _MemoryBlobWriter(self._blobs)


class _MemoryBlobWriter(BlobWriter):
    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        self._blobs = blobs
        self._buffer = bytearray()
        self._closed = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write to a closed blob writer")
        self._buffer += data

    async def close(self) -> Digest:
        if self._closed:
            raise ValueError("blob writer closed twice")
        self._closed = True
        data = bytes(self._buffer)
        self._buffer = bytearray()
        digest = Digest(blake3.blake3(data).digest())
        self._blobs.setdefault(digest, data)
        return digest

    async def abort(self) -> None:
        self._closed = True
        self._buffer = bytearray()

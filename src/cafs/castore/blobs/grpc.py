"""``grpc+unix://``, ``grpc+http(s)://``: a BlobService on a remote daemon.

Every byte handed out is verified here, whatever the server is: a chunked
blob is read chunk by chunk (each chunk checked against its digest, a window
fetched ahead, seekable), and a blob without chunks is fetched whole and
checked before its first byte is served. Writes stream in bounded messages
and the digest the server answers must match the digest of what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import blake3
import grpc
import grpc.aio

from cafs.castore.blobs.base import (
    BlobReader,
    BlobService,
    BlobWriter,
    BytesBlobReader,
    ChunkMeta,
    read_file,
)
from cafs.castore.blobs.chunked import ChunkedBlobReader
from cafs.castore.digest import EMPTY_DIGEST, Digest
from cafs.errors import CafsError, IntegrityError, RemoteError
from cafs.gen.tvix.castore.v1 import rpc_blobstore_pb2
from cafs.gen.tvix.castore.v1.rpc_blobstore_pb2_grpc import BlobServiceStub
from cafs.grpc.channel import ChannelAddress, Remote
from cafs.grpc.status import error_from

if TYPE_CHECKING:
    from cafs.gen.tvix.castore.v1.rpc_blobstore_pb2_grpc import BlobServiceAsyncStub

PUT_MESSAGE_BYTES = 1 << 20
"""Largest BlobChunk a write sends."""

CONCURRENT_CALLS = 16
"""Calls in flight for batch operations (put_many, put_files, read_many)."""

_HASH_OFF_LOOP = 1 << 20

T = TypeVar("T")


async def _digest_of(data: bytes) -> Digest:
    if len(data) < _HASH_OFF_LOOP:
        return Digest(blake3.blake3(data).digest())
    return await asyncio.to_thread(Digest.of, data)


class GrpcBlobService(BlobService):
    def __init__(self, address: ChannelAddress) -> None:
        self._remote: Remote[BlobServiceAsyncStub] = Remote(address, BlobServiceStub)

    @property
    def stub(self) -> BlobServiceAsyncStub:
        return self._remote.stub

    @property
    def url(self) -> str:
        return self._remote.url

    async def connect(self) -> None:
        await self._remote.connect()

    async def _stat(self, digest: Digest) -> rpc_blobstore_pb2.StatBlobResponse | None:
        try:
            return await self.stub.Stat(
                rpc_blobstore_pb2.StatBlobRequest(digest=digest, send_chunks=True)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_from(exc, f"stat of blob {digest} at {self.url}") from None

    async def has(self, digest: Digest) -> bool:
        return await self._stat(Digest(digest)) is not None

    async def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        response = await self._stat(Digest(digest))
        if response is None:
            return None
        chunks = []
        for chunk in response.chunks:
            try:
                chunks.append(ChunkMeta(Digest(chunk.digest), chunk.size))
            except CafsError as exc:
                raise IntegrityError(
                    f"{self.url} sent a bad chunk list for {digest}: {exc}"
                ) from None
        return chunks

    async def _read_whole(self, digest: Digest) -> bytes | None:
        """The blob's bytes, checked against ``digest``; None if the server has no such blob."""
        parts: list[bytes] = []
        try:
            async for message in self.stub.Read(rpc_blobstore_pb2.ReadBlobRequest(digest=digest)):
                parts.append(message.data)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and not parts:
                return None
            raise error_from(exc, f"read of blob {digest} from {self.url}") from None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        actual = await _digest_of(data)
        if actual != digest:
            raise IntegrityError(
                f"{self.url} sent wrong bytes for blob {digest}: they hash to {actual}"
            )
        return data

    async def _fetch_chunk(self, chunk: ChunkMeta) -> bytes:
        data = await self._read_whole(chunk.digest)
        if data is None:
            raise RemoteError(f"chunk {chunk.digest} is missing at {self.url}", "NOT_FOUND")
        return data

    async def open_read(self, digest: Digest) -> BlobReader | None:
        digest = Digest(digest)
        if digest == EMPTY_DIGEST:
            return BytesBlobReader(b"")  # nothing to fetch, nothing to trust
        chunks = await self.chunks(digest)
        if chunks is None:
            return None
        if len(chunks) >= 2:
            return ChunkedBlobReader(digest, chunks, self._fetch_chunk)
        # No finer chunks: small, or a backend that does not chunk (memory).
        data = await self._read_whole(digest)
        if data is None:
            return None
        return BytesBlobReader(data)

    async def read_all(self, digest: Digest) -> bytes | None:
        digest = Digest(digest)
        chunks = await self.chunks(digest)
        if chunks is None:
            return None
        if len(chunks) >= 2:
            return await super().read_all(digest)
        return await self._read_whole(digest)

    async def open_write(self) -> BlobWriter:
        return GrpcBlobWriter(self.stub, self.url)

    async def put_many(self, blobs: Sequence[bytes]) -> list[Digest]:
        return await _bounded([functools.partial(self.put, data) for data in blobs])

    async def put_files(self, paths: Sequence[str]) -> list[tuple[Digest, int]]:
        async def put_file(path: str) -> tuple[Digest, int]:
            data = await asyncio.to_thread(read_file, path)
            return await self.put(data), len(data)

        return await _bounded([functools.partial(put_file, path) for path in paths])

    async def read_many(self, digests: Sequence[Digest]) -> dict[Digest, bytes]:
        async def fetch(digest: Digest) -> bytes | None:
            try:
                return await self.read_all(digest)
            except CafsError:
                return None

        found = await _bounded([functools.partial(fetch, d) for d in digests])
        return {d: data for d, data in zip(digests, found, strict=True) if data is not None}

    async def close(self) -> None:
        await self._remote.close()


async def _bounded(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` with at most CONCURRENT_CALLS in flight; results in order."""
    gate = asyncio.Semaphore(CONCURRENT_CALLS)

    async def run(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(run(call) for call in calls)))


class GrpcBlobWriter(BlobWriter):
    """Streams writes as BlobChunk messages of one Put call."""

    def __init__(self, stub: BlobServiceAsyncStub, url: str) -> None:
        self._stub = stub
        self._url = url
        self._call: (
            grpc.aio.StreamUnaryCall[rpc_blobstore_pb2.BlobChunk, rpc_blobstore_pb2.PutBlobResponse]
            | None
        ) = None
        self._hasher = blake3.blake3()
        self._closed = False

    def _started(
        self,
    ) -> grpc.aio.StreamUnaryCall[rpc_blobstore_pb2.BlobChunk, rpc_blobstore_pb2.PutBlobResponse]:
        if self._call is None:
            self._call = self._stub.Put()
        return self._call

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write to a closed blob writer")
        view = memoryview(data)
        call = self._started()
        try:
            for start in range(0, len(view), PUT_MESSAGE_BYTES):
                piece = bytes(view[start : start + PUT_MESSAGE_BYTES])
                self._hasher.update(piece)
                await call.write(rpc_blobstore_pb2.BlobChunk(data=piece))
        except grpc.aio.AioRpcError as exc:
            self._closed = True
            raise error_from(exc, f"upload to {self._url}") from None
        except asyncio.InvalidStateError:
            # The call ended (the server failed it); its status says why.
            self._closed = True
            await self._raise_status(call)

    async def _raise_status(
        self,
        call: grpc.aio.StreamUnaryCall[
            rpc_blobstore_pb2.BlobChunk, rpc_blobstore_pb2.PutBlobResponse
        ],
    ) -> None:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            raise error_from(exc, f"upload to {self._url}") from None
        raise RemoteError(f"upload to {self._url} ended early", "UNKNOWN")

    async def close(self) -> Digest:
        if self._closed:
            raise ValueError("blob writer closed twice")
        self._closed = True
        call = self._started()
        try:
            # A call that already ended raises InvalidStateError here; awaiting
            # it then gives its status.
            with contextlib.suppress(asyncio.InvalidStateError):
                await call.done_writing()
            response = await call
        except grpc.aio.AioRpcError as exc:
            raise error_from(exc, f"upload to {self._url}") from None
        expected = Digest(self._hasher.digest())
        if response.digest != expected:
            raise IntegrityError(
                f"{self._url} stored an upload under {response.digest.hex()}, "
                f"but what was sent hashes to {expected}"
            )
        return expected

    async def abort(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()

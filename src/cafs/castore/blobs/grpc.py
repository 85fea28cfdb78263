"""``grpc+unix://``, ``grpc+http(s)://``: a BlobService on a remote daemon.

Every byte handed out is verified here, whatever the server is: a chunked
blob is read chunk by chunk (each chunk checked against its digest, a window
fetched ahead, seekable), and a blob without chunks is fetched whole and
checked before its first byte is served. A chunked blob read from its start
comes in one Read call of the whole blob, cut into its chunks along the Stat
chunk list; reads that jump fetch single chunks, one Read each. Writes stream
in bounded messages and the digest the server answers must match the digest
of what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import SplitResult

import blake3
import grpc
import grpc.aio

from cafs import counters
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
from cafs.rpc.channel import ChannelAddress, Remote, parse_channel_url, within
from cafs.rpc.status import error_from, is_missing

if TYPE_CHECKING:
    from cafs.gen.tvix.castore.v1.rpc_blobstore_pb2_grpc import BlobServiceAsyncStub

PUT_MESSAGE_BYTES = 1 << 20
"""Largest BlobChunk a write sends."""

CONCURRENT_CALLS = 16
"""Calls in flight for batch operations (put_many, put_files, read_many)."""

STREAM_PREFETCH_CHUNKS = 16
"""Chunks a reader fed by one Read of the whole blob keeps ahead (about 4-5 MiB)."""

_HASH_OFF_LOOP = 1 << 20

T = TypeVar("T")


async def _digest_of(data: bytes) -> Digest:
    if len(data) < _HASH_OFF_LOOP:
        return Digest(blake3.blake3(data).digest())
    return await asyncio.to_thread(Digest.of, data)


# Remote first: its connect and close are the service's.
class GrpcBlobService(Remote["BlobServiceAsyncStub"], BlobService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> GrpcBlobService:
        """``grpc+unix://``, ``grpc+http(s)://``: see ``parse_channel_url``."""
        return cls(parse_channel_url(url))

    def __init__(self, address: ChannelAddress) -> None:
        super().__init__(address, BlobServiceStub)

    async def _stat(self, digest: Digest) -> rpc_blobstore_pb2.StatBlobResponse | None:
        request = rpc_blobstore_pb2.StatBlobRequest(digest=digest, send_chunks=True)
        try:
            return await self.unary(lambda timeout: self.stub.Stat(request, timeout=timeout))
        except grpc.aio.AioRpcError as exc:
            if is_missing(exc):
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
            request = rpc_blobstore_pb2.ReadBlobRequest(digest=digest)
            async for message in self.stream(lambda: self.stub.Read(request)):
                parts.append(message.data)
        except grpc.aio.AioRpcError as exc:
            if is_missing(exc) and not parts:
                return None
            raise error_from(exc, f"read of blob {digest} from {self.url}") from None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        counters.fetched("grpc", len(data))
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
            return _StreamedBlobReader(digest, chunks, _BlobStream(self, digest, chunks))
        # No finer chunks: small, or a backend that does not chunk (memory).
        data = await self._read_whole(digest)
        if data is None:
            return None
        return BytesBlobReader(data)

    async def read_all(self, digest: Digest) -> bytes | None:
        # The whole blob is wanted in memory anyway: one Read, nothing handed out
        # before all of it matches the digest (a Stat first cost a second round
        # trip per small blob).
        return await self._read_whole(Digest(digest))

    async def open_write(self) -> BlobWriter:
        return GrpcBlobWriter(self.stub, self.url, self.deadline)

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


class _StreamEnded(Exception):
    """The whole-blob Read stopped serving chunks; fetches fall back to one Read per chunk."""


class _BlobStream:
    """One Read call of a whole chunked blob, cut into its chunks, each checked.

    Serves the chunk fetches of a reader that goes forward from the start (its
    prefetch window included), in blob order: fetch number *i* claims chunk *i*
    of the stream if that is the chunk asked for. The call runs only as far as
    fetches have claimed. The first fetch out of order, or any failure of the
    call (an error, early end, bytes that do not match a chunk's digest), ends
    the stream for good: that fetch, every fetch still waiting and every later
    one are served by a Read of their own chunk, checked the same way.
    """

    def __init__(self, service: GrpcBlobService, digest: Digest, chunks: list[ChunkMeta]) -> None:
        self._service = service
        self._digest = digest
        self._chunks = chunks
        self._claimed = 0
        self._produced = 0
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._call: (
            grpc.aio.UnaryStreamCall[rpc_blobstore_pb2.ReadBlobRequest, rpc_blobstore_pb2.BlobChunk]
            | None
        ) = None
        self._pump: asyncio.Task[None] | None = None
        self._pieces: deque[bytes] = deque()
        self._offset = 0  # of the first piece, already handed out
        self._buffered = 0  # bytes in pieces past the offset
        self._open = True

    async def fetch(self, chunk: ChunkMeta) -> bytes:
        position = self._claimed
        if self._open and position < len(self._chunks) and self._chunks[position] == chunk:
            self._claimed += 1
            waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._waiting[position] = waiter
            if self._pump is None or self._pump.done():
                self._pump = asyncio.ensure_future(self._run())
            try:
                return await waiter
            except _StreamEnded:
                pass
        else:
            self.close()
        return await self._service._fetch_chunk(chunk)

    async def _run(self) -> None:
        try:
            if self._call is None:
                self._call = self._service.stub.Read(
                    rpc_blobstore_pb2.ReadBlobRequest(digest=self._digest)
                )
            while self._open and self._produced < self._claimed:
                chunk = self._chunks[self._produced]
                data = await self._take(chunk.size)
                if await _digest_of(data) != chunk.digest:
                    raise _StreamEnded(f"wrong bytes for chunk {chunk.digest}")
                counters.fetched("grpc", len(data))
                waiter = self._waiting.pop(self._produced, None)
                self._produced += 1
                if waiter is not None and not waiter.done():
                    waiter.set_result(data)
        except (Exception, asyncio.CancelledError):
            # Every waiting fetch reads its chunk alone; that read reports what went wrong.
            self.close()

    async def _take(self, size: int) -> bytes:
        """The next ``size`` bytes of the stream."""
        assert self._call is not None
        while self._buffered < size:
            message = await self._service.next_message(self._call)
            if message is None:
                raise _StreamEnded("the stream ended early")
            data = message.data  # each access of the field makes a new copy
            if data:
                self._pieces.append(data)
                self._buffered += len(data)
        self._buffered -= size
        first = self._pieces[0]
        start = self._offset
        if len(first) - start >= size:
            # Within one message: the message itself, or one copy of the slice.
            if start == 0 and len(first) == size:
                return self._pieces.popleft()
            self._offset = start + size
            if self._offset == len(first):
                self._pieces.popleft()
                self._offset = 0
            return first[start : start + size]
        parts: list[bytes | memoryview] = []
        while size:
            first = self._pieces[0]
            available = len(first) - self._offset
            if available <= size:
                parts.append(memoryview(first)[self._offset :] if self._offset else first)
                self._pieces.popleft()
                self._offset = 0
                size -= available
            else:
                parts.append(memoryview(first)[self._offset : self._offset + size])
                self._offset += size
                size = 0
        return b"".join(parts)

    def close(self) -> None:
        """End the call; waiting fetches fall back to reading their own chunks."""
        if not self._open:
            return
        self._open = False
        if self._call is not None:
            self._call.cancel()
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(_StreamEnded())
        self._waiting.clear()
        self._pieces.clear()
        self._buffered = 0


class _StreamedBlobReader(ChunkedBlobReader):
    """A chunked reader whose forward reads come from one Read call of the whole blob."""

    def __init__(self, digest: Digest, chunks: list[ChunkMeta], stream: _BlobStream) -> None:
        super().__init__(digest, chunks, stream.fetch, prefetch=STREAM_PREFETCH_CHUNKS)
        self._stream = stream

    async def close(self) -> None:
        self._stream.close()
        await super().close()


async def _bounded(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` with at most CONCURRENT_CALLS in flight; results in order."""
    gate = asyncio.Semaphore(CONCURRENT_CALLS)

    async def run(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(run(call) for call in calls)))


class GrpcBlobWriter(BlobWriter):
    """Streams writes as BlobChunk messages of one Put call."""

    def __init__(self, stub: BlobServiceAsyncStub, url: str, deadline: float) -> None:
        self._stub = stub
        self._url = url
        self._deadline = deadline
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
                await within(call.write(rpc_blobstore_pb2.BlobChunk(data=piece)), self._deadline)
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
                await within(call.done_writing(), self._deadline)
            response = await within(call, self._deadline)
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

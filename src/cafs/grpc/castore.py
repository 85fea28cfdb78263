"""The castore gRPC servers: BlobService and DirectoryService over any backend.

Semantics and status codes are tvix's (see the reference survey, §1.8):
Stat always lists chunks, Read streams the blob in bounded messages, Put
answers the digest of what arrived; Directory Get streams a closure root
first, Directory Put takes a closure leaves first and checks it as a whole
before anything is stored.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import blake3
import grpc
import grpc.aio

from cafs.castore.blobs.base import BlobService, ChunkMeta
from cafs.castore.closure import LeavesToRootValidator
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directory import Directory
from cafs.errors import CafsError, ClosureError, IntegrityError, StorageError
from cafs.gen.tvix.castore.v1 import castore_pb2, rpc_blobstore_pb2, rpc_directory_pb2
from cafs.gen.tvix.castore.v1.rpc_blobstore_pb2_grpc import BlobServiceServicer
from cafs.gen.tvix.castore.v1.rpc_directory_pb2_grpc import DirectoryServiceServicer
from cafs.rpc.status import Refusal, abort, refuse

Context = grpc.aio.ServicerContext[object, object]

READ_MESSAGE_BYTES = 1 << 20
"""Largest BlobChunk a Read sends. Stored chunks smaller than this travel several to
a message: per message, gRPC costs about as much as copying 256 KiB."""

READ_BATCH_CHUNKS = 16
"""Chunks of a chunked blob a Read loads in one backend call (``read_many``): a
worker-thread hop per chunk cost more than the chunk's bytes."""

READ_AHEAD_BATCHES = 2
"""Batches loading while a Read sends: with one, sending waited for the disk."""


class BlobServer(BlobServiceServicer):
    def __init__(self, blobs: BlobService) -> None:
        self.blobs = blobs

    async def Stat(
        self, request: rpc_blobstore_pb2.StatBlobRequest, context: Context
    ) -> rpc_blobstore_pb2.StatBlobResponse:
        try:
            digest = Digest(request.digest)
            chunks = await self.blobs.chunks(digest)
        except CafsError as exc:
            await abort(context, exc)
        if chunks is None:
            await refuse(context, Refusal.MISSING, f"blob {digest} not found")
        return rpc_blobstore_pb2.StatBlobResponse(
            chunks=[
                rpc_blobstore_pb2.StatBlobResponse.ChunkMeta(digest=c.digest, size=c.size)
                for c in chunks
            ]
        )

    async def Read(
        self, request: rpc_blobstore_pb2.ReadBlobRequest, context: Context
    ) -> AsyncIterator[rpc_blobstore_pb2.BlobChunk]:
        try:
            digest = Digest(request.digest)
            reader = await self.blobs.open_read(digest)
        except CafsError as exc:
            await abort(context, exc)
        if reader is None:
            await refuse(context, Refusal.MISSING, f"blob {digest} not found")
        async with reader:
            chunks = await self._chunk_list(digest, reader.size, context)
            if chunks is not None:
                async for data in self._read_chunked(digest, chunks, context):
                    yield rpc_blobstore_pb2.BlobChunk(data=data)
                return
            while True:
                try:
                    data = await reader.read_some(READ_MESSAGE_BYTES)
                except CafsError as exc:
                    await abort(context, exc)
                if not data:
                    return
                yield rpc_blobstore_pb2.BlobChunk(data=data)

    async def _chunk_list(
        self, digest: Digest, size: int, context: Context
    ) -> list[ChunkMeta] | None:
        """The chunks of a large blob that is stored as several; None to read it as one."""
        if size <= READ_MESSAGE_BYTES:
            return None
        try:
            chunks = await self.blobs.chunks(digest)
        except CafsError as exc:
            await abort(context, exc)
        if not chunks or len(chunks) < 2 or sum(c.size for c in chunks) != size:
            return None
        return chunks

    async def _read_chunked(
        self, digest: Digest, chunks: list[ChunkMeta], context: Context
    ) -> AsyncIterator[bytes]:
        """A chunked blob's bytes in messages, loaded in batches, the whole checked at the end.

        Each chunk comes verified from the backend; the whole-blob digest catches
        a chunk list that does not add up to the blob (the call then fails).
        """
        batches = [
            chunks[i : i + READ_BATCH_CHUNKS] for i in range(0, len(chunks), READ_BATCH_CHUNKS)
        ]
        hasher = blake3.blake3()
        # The whole-blob digest is computed on worker threads, batch after batch in
        # order, while the loop sends: on the loop it took a fifth of its time.
        hashing: asyncio.Future[None] | None = None
        loading: deque[asyncio.Future[list[bytes]]] = deque()
        queued = 0
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            while loading or queued < len(batches):
                while queued < len(batches) and len(loading) < READ_AHEAD_BATCHES:
                    loading.append(asyncio.ensure_future(self._load_chunks(batches[queued])))
                    queued += 1
                try:
                    loaded = await loading.popleft()
                except CafsError as exc:
                    await abort(context, exc)
                hashing = asyncio.ensure_future(_hash_after(hashing, hasher, loaded))
                for data in loaded:
                    if pending and pending_bytes + len(data) > READ_MESSAGE_BYTES:
                        yield pending[0] if len(pending) == 1 else b"".join(pending)
                        pending, pending_bytes = [], 0
                    if len(data) <= READ_MESSAGE_BYTES:
                        pending.append(data)
                        pending_bytes += len(data)
                        continue
                    for start in range(0, len(data), READ_MESSAGE_BYTES):
                        yield data[start : start + READ_MESSAGE_BYTES]
            if pending:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
            if hashing is not None:
                await hashing
        finally:
            # Ended early (an error, or the client went away): drop what is in flight.
            for task in loading:
                task.cancel()
                task.add_done_callback(_consume_exception)
            if hashing is not None and not hashing.done():
                hashing.cancel()
                hashing.add_done_callback(_consume_exception)
        if hasher.digest() != digest:
            await abort(
                context,
                IntegrityError(
                    f"blob {digest}: its chunks hash to {Digest(hasher.digest())}; "
                    "the blob index is corrupt"
                ),
            )

    async def _load_chunks(self, batch: Sequence[ChunkMeta]) -> list[bytes]:
        """The verified bytes of ``batch``, in order, in one backend call where it can."""
        found = await self.blobs.read_many(list(dict.fromkeys(c.digest for c in batch)))
        out = []
        for chunk in batch:
            data = found.get(chunk.digest)
            if data is None:
                # Left out of the batch: absent or unreadable; read alone for the reason.
                data = await self.blobs.read_all(chunk.digest)
                if data is None:
                    raise StorageError(f"chunk {chunk.digest} not found")
            if len(data) != chunk.size:
                raise IntegrityError(
                    f"chunk {chunk.digest} has {len(data)} bytes, the chunk list says {chunk.size}"
                )
            out.append(data)
        return out

    async def Put(
        self, request_iterator: AsyncIterator[rpc_blobstore_pb2.BlobChunk], context: Context
    ) -> rpc_blobstore_pb2.PutBlobResponse:
        writer = await self.blobs.open_write()
        try:
            async for chunk in request_iterator:
                await writer.write(chunk.data)
        except BaseException as exc:
            await writer.abort()
            if isinstance(exc, CafsError):
                await refuse(context, Refusal.FAILED, f"error copying: {exc}")
            raise
        try:
            digest = await writer.close()
        except CafsError as exc:
            await refuse(context, Refusal.FAILED, f"error closing stream: {exc}")
        return rpc_blobstore_pb2.PutBlobResponse(digest=digest)


async def _hash_after(
    previous: asyncio.Future[None] | None, hasher: blake3.blake3, parts: list[bytes]
) -> None:
    """Feed ``parts`` to ``hasher`` on a worker thread once ``previous`` has fed its own."""
    if previous is not None:
        await previous
    await asyncio.to_thread(_update, hasher, parts)


def _update(hasher: blake3.blake3, parts: list[bytes]) -> None:
    for part in parts:
        hasher.update(part)


def _consume_exception(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class DirectoryServer(DirectoryServiceServicer):
    def __init__(self, directories: DirectoryService) -> None:
        self.directories = directories

    async def Get(
        self, request: rpc_directory_pb2.GetDirectoryRequest, context: Context
    ) -> AsyncIterator[castore_pb2.Directory]:
        if request.WhichOneof("by_what") is None:
            await refuse(context, Refusal.BAD_REQUEST, "invalid by_what")
        try:
            digest = Digest(request.digest)
        except CafsError as exc:
            await abort(context, exc)
        if not request.recursive:
            try:
                directory = await self.directories.get(digest)
            except CafsError as exc:
                await abort(context, exc, Refusal.FAILED)
            if directory is None:
                await refuse(context, Refusal.MISSING, f"directory {digest} not found")
            yield directory.to_proto()
            return
        try:
            async for directory in self.directories.get_recursive(digest):
                yield directory.to_proto()
        except CafsError as exc:
            await refuse(context, Refusal.FAILED, str(exc))

    async def Put(
        self, request_iterator: AsyncIterator[castore_pb2.Directory], context: Context
    ) -> rpc_directory_pb2.PutDirectoryResponse:
        validator = LeavesToRootValidator()
        try:
            async for message in request_iterator:
                validator.add(Directory.from_proto(message))
        except CafsError as exc:
            await abort(context, exc, Refusal.FAILED)
        if not len(validator):
            await refuse(context, Refusal.BAD_REQUEST, "got no directories")
        try:
            root, directories = validator.finish()
        except ClosureError as exc:
            await refuse(context, Refusal.FAILED, str(exc))
        try:
            await self.directories.put_many(directories)
        except CafsError as exc:
            await abort(context, exc)
        return rpc_directory_pb2.PutDirectoryResponse(root_digest=root)

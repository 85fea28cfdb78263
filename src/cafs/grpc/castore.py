"""The castore gRPC servers: BlobService and DirectoryService over any backend.

Semantics and status codes are tvix's (see the reference survey, §1.8):
Stat always lists chunks, Read streams the blob in bounded messages, Put
answers the digest of what arrived; Directory Get streams a closure root
first, Directory Put takes a closure leaves first and checks it as a whole
before anything is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio

from cafs.castore.blobs.base import BlobService
from cafs.castore.closure import LeavesToRootValidator
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directory import Directory
from cafs.errors import CafsError, ClosureError
from cafs.gen.tvix.castore.v1 import castore_pb2, rpc_blobstore_pb2, rpc_directory_pb2
from cafs.gen.tvix.castore.v1.rpc_blobstore_pb2_grpc import BlobServiceServicer
from cafs.gen.tvix.castore.v1.rpc_directory_pb2_grpc import DirectoryServiceServicer
from cafs.grpc.status import abort

Context = grpc.aio.ServicerContext[object, object]

READ_MESSAGE_BYTES = 1 << 20
"""Largest BlobChunk a Read sends (a stored chunk is sent whole when smaller)."""


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
            await context.abort(grpc.StatusCode.NOT_FOUND, f"blob {digest} not found")
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
            await context.abort(grpc.StatusCode.NOT_FOUND, f"blob {digest} not found")
        async with reader:
            while True:
                try:
                    data = await reader.read_some(READ_MESSAGE_BYTES)
                except CafsError as exc:
                    await abort(context, exc)
                if not data:
                    return
                yield rpc_blobstore_pb2.BlobChunk(data=data)

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
                await context.abort(grpc.StatusCode.INTERNAL, f"error copying: {exc}")
            raise
        try:
            digest = await writer.close()
        except CafsError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"error closing stream: {exc}")
        return rpc_blobstore_pb2.PutBlobResponse(digest=digest)


class DirectoryServer(DirectoryServiceServicer):
    def __init__(self, directories: DirectoryService) -> None:
        self.directories = directories

    async def Get(
        self, request: rpc_directory_pb2.GetDirectoryRequest, context: Context
    ) -> AsyncIterator[castore_pb2.Directory]:
        if request.WhichOneof("by_what") is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid by_what")
        try:
            digest = Digest(request.digest)
        except CafsError as exc:
            await abort(context, exc)
        if not request.recursive:
            try:
                directory = await self.directories.get(digest)
            except CafsError as exc:
                await abort(context, exc, grpc.StatusCode.INTERNAL)
            if directory is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"directory {digest} not found")
            yield directory.to_proto()
            return
        try:
            async for directory in self.directories.get_recursive(digest):
                yield directory.to_proto()
        except CafsError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))

    async def Put(
        self, request_iterator: AsyncIterator[castore_pb2.Directory], context: Context
    ) -> rpc_directory_pb2.PutDirectoryResponse:
        validator = LeavesToRootValidator()
        try:
            async for message in request_iterator:
                validator.add(Directory.from_proto(message))
        except CafsError as exc:
            await abort(context, exc, grpc.StatusCode.INTERNAL)
        if not len(validator):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "got no directories")
        try:
            root, directories = validator.finish()
        except ClosureError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        try:
            await self.directories.put_many(directories)
        except CafsError as exc:
            await abort(context, exc)
        return rpc_directory_pb2.PutDirectoryResponse(root_digest=root)

"""``grpc+unix://``, ``grpc+http(s)://``: a DirectoryService on a remote daemon.

What comes back is checked as if it came from disk: each directory must be
valid and hash to the digest asked for, and a recursive fetch must arrive
root first with every directory referenced by one received before it, once,
and none missing at the end. Closures go up as one Put stream, leaves first,
as the protocol requires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import SplitResult

import grpc
import grpc.aio

from cafs.castore.closure import LeavesToRootValidator, RootToLeavesValidator, leaves_first
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryPutter, DirectoryService, check_digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import display_name
from cafs.errors import CafsError, ClosureError, IntegrityError, RemoteError
from cafs.gen.tvix.castore.v1 import castore_pb2, rpc_directory_pb2
from cafs.gen.tvix.castore.v1.rpc_directory_pb2_grpc import DirectoryServiceStub
from cafs.rpc.channel import ChannelAddress, Remote, parse_channel_url, within
from cafs.rpc.status import error_from, is_missing

if TYPE_CHECKING:
    from cafs.gen.tvix.castore.v1.rpc_directory_pb2_grpc import DirectoryServiceAsyncStub

PutCall = grpc.aio.StreamUnaryCall[castore_pb2.Directory, rpc_directory_pb2.PutDirectoryResponse]


# Remote first: its connect and close are the service's.
class GrpcDirectoryService(Remote["DirectoryServiceAsyncStub"], DirectoryService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> GrpcDirectoryService:
        """``grpc+unix://``, ``grpc+http(s)://``: see ``parse_channel_url``."""
        return cls(parse_channel_url(url))

    def __init__(self, address: ChannelAddress) -> None:
        super().__init__(address, DirectoryServiceStub)

    def _decoded(self, expected: Digest | None, message: castore_pb2.Directory) -> Directory:
        try:
            directory = Directory.from_proto(message)
        except CafsError as exc:
            raise IntegrityError(f"{self.url} sent an invalid directory: {exc}") from None
        return directory if expected is None else check_digest(expected, directory)

    async def get(self, digest: Digest) -> Directory | None:
        digest = Digest(digest)
        request = rpc_directory_pb2.GetDirectoryRequest(digest=digest, recursive=False)
        found: Directory | None = None
        try:
            async for message in self.stream(lambda: self.stub.Get(request)):
                if found is not None:
                    raise IntegrityError(f"{self.url} sent more than one directory for {digest}")
                found = self._decoded(digest, message)
        except grpc.aio.AioRpcError as exc:
            if is_missing(exc):
                return None
            raise error_from(exc, f"get of directory {digest} from {self.url}") from None
        return found

    async def get_recursive(self, root: Digest) -> AsyncIterator[Directory]:
        root = Digest(root)
        request = rpc_directory_pb2.GetDirectoryRequest(digest=root, recursive=True)
        validator = RootToLeavesValidator(root)
        received = 0
        try:
            async for message in self.stream(lambda: self.stub.Get(request)):
                directory = self._decoded(None, message)
                try:
                    validator.add(directory)
                except ClosureError as exc:
                    raise IntegrityError(f"{self.url}: {exc}") from None
                received += 1
                yield directory
        except grpc.aio.AioRpcError as exc:
            if is_missing(exc) and not received:
                return
            raise error_from(exc, f"get of directory closure {root} from {self.url}") from None
        missing = validator.missing()
        if received and missing:
            raise IntegrityError(
                f"{self.url} ended the closure of {root} early: still expected "
                f"{len(missing)} directories"
            )

    async def put(self, directory: Directory) -> Digest:
        """Store one directory whose children the server already has.

        The protocol only accepts a directory together with its closure in
        one stream, so the children's closures are fetched back and sent
        along, leaves first.
        """
        closure: dict[Digest, Directory] = {}
        for name, child in directory.directories():
            if child.digest in closure:
                continue
            fetched = [d async for d in self.get_recursive(child.digest)]
            if not fetched:
                raise ClosureError(
                    f"directory {directory.digest}: entry {display_name(name)!r} refers to "
                    f"{child.digest}, which {self.url} does not have"
                )
            for below in leaves_first(fetched):
                closure.setdefault(below.digest, below)
        return await self._put_all([*closure.values(), directory])

    async def put_many(self, directories: list[Directory]) -> None:
        if directories:
            await self._put_all(directories)

    async def _put_all(self, directories: list[Directory]) -> Digest:
        putter = self.put_multiple_start()
        for directory in directories:
            await putter.put(directory)
        return await putter.close()

    def put_multiple_start(self) -> DirectoryPutter:
        return GrpcDirectoryPutter(self.stub, self.url, self.deadline)


class GrpcDirectoryPutter(DirectoryPutter):
    """Streams each directory as it comes.

    The closure is also checked here, as it goes, so a bad one fails with
    the same error as on a local store rather than as the server's INTERNAL.
    """

    def __init__(self, stub: DirectoryServiceAsyncStub, url: str, deadline: float) -> None:
        self._stub = stub
        self._url = url
        self._deadline = deadline
        self._call: PutCall | None = None
        self._validator = LeavesToRootValidator()
        self._closed = False

    def _started(self) -> PutCall:
        if self._call is None:
            self._call = self._stub.Put()
        return self._call

    async def put(self, directory: Directory) -> None:
        if self._closed:
            raise ValueError("put on a closed directory putter")
        self._validator.add(directory)
        call = self._started()
        try:
            await within(call.write(directory.to_proto()), self._deadline)
        except asyncio.InvalidStateError:
            await self._finish(call)  # the server failed the call: raise its status
        except grpc.aio.AioRpcError as exc:
            raise error_from(exc, f"directory upload to {self._url}") from None

    async def close(self) -> Digest:
        if self._closed:
            raise ValueError("directory putter closed twice")
        self._closed = True
        try:
            root, _ = self._validator.finish()
        except ClosureError:
            if self._call is not None:
                self._call.cancel()
            raise
        assert self._call is not None
        stored = await self._finish(self._call)
        if stored != root:
            raise IntegrityError(f"{self._url} stored the closure of {root} as {stored}")
        return stored

    async def _finish(self, call: PutCall) -> Digest:
        self._closed = True
        try:
            # A call that already ended raises InvalidStateError here; awaiting
            # it then gives its status.
            with contextlib.suppress(asyncio.InvalidStateError):
                await within(call.done_writing(), self._deadline)
            response = await within(call, self._deadline)
        except grpc.aio.AioRpcError as exc:
            raise error_from(exc, f"directory upload to {self._url}") from None
        try:
            return Digest(response.root_digest)
        except CafsError as exc:
            raise RemoteError(
                f"{self._url} answered a bad root digest: {exc}", "INTERNAL"
            ) from None

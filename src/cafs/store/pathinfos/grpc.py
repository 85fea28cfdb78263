"""``grpc+unix://``, ``grpc+http(s)://``: a PathInfoService on a remote daemon.

Answers are validated as stored rows are (a PathInfo must belong to the
digest asked for), and the daemon computes NAR hashes where the blobs are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import SplitResult

import grpc
import grpc.aio

from cafs.castore.nodes import Node, node_to_proto
from cafs.castore.services import CastoreServices
from cafs.errors import CafsError, IntegrityError
from cafs.gen.tvix.store.v1 import rpc_pathinfo_pb2
from cafs.gen.tvix.store.v1.rpc_pathinfo_pb2_grpc import PathInfoServiceStub
from cafs.rpc.channel import ChannelAddress, Remote, parse_channel_url
from cafs.rpc.status import error_from, is_missing
from cafs.store import nixbase32
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService, check_store_path_digest, check_stored

if TYPE_CHECKING:
    # Named in a string below: the async stub exists in the type stubs only.
    from cafs.gen.tvix.store.v1.rpc_pathinfo_pb2_grpc import (  # noqa: F401
        PathInfoServiceAsyncStub,
    )

NAR_SHA256_SIZE = 32


# Remote first: its connect and close are the service's.
CALCULATE_NAR_DEADLINES = 60
"""CalculateNAR renders a whole NAR on the daemon: it may take this many deadlines."""


class GrpcPathInfoService(Remote["PathInfoServiceAsyncStub"], PathInfoService):
    @classmethod
    def from_url(
        cls, url: str, parts: SplitResult, castore: CastoreServices | None = None
    ) -> GrpcPathInfoService:
        """``grpc+unix://``, ``grpc+http(s)://``: see ``parse_channel_url``."""
        return cls(parse_channel_url(url))

    def __init__(self, address: ChannelAddress) -> None:
        super().__init__(address, PathInfoServiceStub)

    def _decoded(self, message: object) -> PathInfo:
        try:
            return PathInfo.from_proto(message)  # type: ignore[arg-type]
        except CafsError as exc:
            raise IntegrityError(f"{self.url} sent an invalid path info: {exc}") from None

    async def get(self, digest: bytes) -> PathInfo | None:
        digest = check_store_path_digest(digest)
        request = rpc_pathinfo_pb2.GetPathInfoRequest(by_output_hash=digest)
        try:
            message = await self.unary(lambda timeout: self.stub.Get(request, timeout=timeout))
        except grpc.aio.AioRpcError as exc:
            if is_missing(exc):
                return None
            what = f"path info {nixbase32.encode(digest)} from {self.url}"
            raise error_from(exc, f"get of {what}") from None
        return check_stored(digest, self._decoded(message))

    async def put(self, info: PathInfo) -> PathInfo:
        try:
            request = info.to_proto()
            message = await self.unary(
                lambda timeout: self.stub.Put(request, timeout=timeout), idempotent=False
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from(exc, f"put of {info.store_path.absolute} to {self.url}") from None
        stored = self._decoded(message)
        if stored.store_path != info.store_path:
            raise IntegrityError(
                f"{self.url} answered a put of {info.store_path.absolute} "
                f"with {stored.store_path.absolute}"
            )
        return stored

    async def list(self) -> AsyncIterator[PathInfo]:
        try:
            request = rpc_pathinfo_pb2.ListPathInfoRequest()
            async for message in self.stream(lambda: self.stub.List(request)):
                yield self._decoded(message)
        except grpc.aio.AioRpcError as exc:
            raise error_from(exc, f"list of path infos from {self.url}") from None

    async def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        try:
            request = node_to_proto(b"", node)
            # The daemon renders the whole NAR: give it time in proportion.
            response = await self.unary(
                lambda timeout: self.stub.CalculateNAR(
                    request, timeout=timeout * CALCULATE_NAR_DEADLINES
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from(exc, f"NAR calculation at {self.url}") from None
        if len(response.nar_sha256) != NAR_SHA256_SIZE:
            raise IntegrityError(
                f"{self.url} answered a NAR SHA-256 of {len(response.nar_sha256)} bytes"
            )
        return response.nar_size, bytes(response.nar_sha256)

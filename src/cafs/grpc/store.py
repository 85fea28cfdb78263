"""The PathInfoService gRPC server over any PathInfo backend.

Status codes are tvix's: an unset ``by_what`` is UNIMPLEMENTED, a digest of
the wrong length and an invalid PathInfo are INVALID_ARGUMENT, a miss is
NOT_FOUND, a failure while listing is INTERNAL. CalculateNAR renders the NAR
here, where the blobs are (or asks the next daemon, if this one is a proxy);
as in tvix, a NAR that cannot be rendered (a blob or directory missing, a
size that does not match) is a storage error, DATA_LOSS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio

from cafs.castore.nodes import node_from_proto
from cafs.errors import CafsError, PathInfoValidationError, RemoteError, ValidationError
from cafs.gen.tvix.castore.v1 import castore_pb2
from cafs.gen.tvix.store.v1 import pathinfo_pb2, rpc_pathinfo_pb2
from cafs.gen.tvix.store.v1.rpc_pathinfo_pb2_grpc import PathInfoServiceServicer
from cafs.rpc.status import Refusal, abort, refuse
from cafs.store.importer import nar_of
from cafs.store.pathinfo import PathInfo
from cafs.store.services import StoreServices
from cafs.store.storepath import DIGEST_SIZE

Context = grpc.aio.ServicerContext[object, object]

INVALID_PATH_INFO = "invalid path info: "
"""How every PathInfoValidationError message starts (cafs.store.pathinfo)."""


class PathInfoServer(PathInfoServiceServicer):
    def __init__(self, services: StoreServices) -> None:
        self.services = services

    async def Get(
        self, request: rpc_pathinfo_pb2.GetPathInfoRequest, context: Context
    ) -> pathinfo_pb2.PathInfo:
        if request.WhichOneof("by_what") is None:
            await refuse(context, Refusal.UNSPECIFIED, "by_what needs to be specified")
        if len(request.by_output_hash) != DIGEST_SIZE:
            await refuse(
                context,
                Refusal.BAD_REQUEST,
                f"invalid output digest length: {len(request.by_output_hash)} bytes, "
                f"expected {DIGEST_SIZE}",
            )
        try:
            info = await self.services.path_infos.get(request.by_output_hash)
        except CafsError as exc:
            await abort(context, exc)
        if info is None:
            await refuse(context, Refusal.MISSING, "PathInfo not found")
        return info.to_proto()

    async def Put(self, request: pathinfo_pb2.PathInfo, context: Context) -> pathinfo_pb2.PathInfo:
        try:
            info = PathInfo.from_proto(request)
        except PathInfoValidationError as exc:
            # tvix's wording; the model's own "invalid path info: " is not repeated.
            reason = str(exc).removeprefix(INVALID_PATH_INFO)
            await refuse(context, Refusal.BAD_REQUEST, f"Invalid path info: {reason}")
        try:
            stored = await self.services.path_infos.put(info)
        except CafsError as exc:
            await abort(context, exc)
        return stored.to_proto()

    async def CalculateNAR(
        self, request: castore_pb2.Node, context: Context
    ) -> rpc_pathinfo_pb2.CalculateNARResponse:
        try:
            name, node = node_from_proto(request)
        except ValidationError as exc:
            await refuse(context, Refusal.BAD_REQUEST, f"invalid root node: {exc}")
        if name:
            await refuse(context, Refusal.BAD_REQUEST, "invalid root node: it must have no name")
        try:
            nar_size, nar_sha256 = await nar_of(node, self.services)
        except RemoteError as exc:
            await abort(context, exc)  # a proxy passes the far side's answer on
        except CafsError as exc:
            await refuse(context, Refusal.LOST, f"storage error: failed rendering nar: {exc}")
        return rpc_pathinfo_pb2.CalculateNARResponse(nar_size=nar_size, nar_sha256=nar_sha256)

    async def List(
        self, request: rpc_pathinfo_pb2.ListPathInfoRequest, context: Context
    ) -> AsyncIterator[pathinfo_pb2.PathInfo]:
        try:
            async for info in self.services.path_infos.list():
                yield info.to_proto()
        except CafsError as exc:
            await refuse(context, Refusal.FAILED, str(exc))

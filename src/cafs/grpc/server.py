"""The gRPC server: the three services under tvix's and snix's names, health, reflection.

snix renamed the packages (``snix.castore.v1`` ...) but kept every message
byte for byte, so one servicer answers both method paths: the handlers are
built from the service descriptors and registered once per package name.
Each call is logged at debug level with its outcome and duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cafs import tracing
from cafs.gen.tvix.castore.v1 import rpc_blobstore_pb2, rpc_directory_pb2
from cafs.gen.tvix.store.v1 import rpc_pathinfo_pb2
from cafs.grpc.castore import BlobServer, DirectoryServer
from cafs.grpc.listen import ListenAddress, check_bindable, grpc_url
from cafs.grpc.store import PathInfoServer
from cafs.rpc.channel import MAX_MESSAGE_BYTES
from cafs.sockets import ListenError
from cafs.store.services import StoreServices

log = logging.getLogger(__name__)

PACKAGES = ("tvix", "snix")
SHUTDOWN_GRACE = 30.0
"""Seconds in-flight calls get to finish after SIGINT/SIGTERM."""

SERVICES: tuple[ServiceDescriptor, ...] = (
    rpc_blobstore_pb2.DESCRIPTOR.services_by_name["BlobService"],
    rpc_directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"],
    rpc_pathinfo_pb2.DESCRIPTOR.services_by_name["PathInfoService"],
)


CallObserver = Callable[[str, str, float], None]
"""Called with (method, status code name, seconds) once a call ends (metrics)."""


def _logged(
    method: str,
    behaviour: Callable[..., Any],
    streaming_response: bool,
    observer: CallObserver | None = None,
) -> Callable[..., Any]:
    """``behaviour`` with one debug line per call (method, outcome, duration), and its
    outcome told to ``observer``."""

    def finish(context: grpc.aio.ServicerContext[Any, Any], started: float, failed: bool) -> None:
        debug = log.isEnabledFor(logging.DEBUG)
        if not debug and observer is None:
            return
        code = context.code()
        outcome = code.name if isinstance(code, grpc.StatusCode) else "OK"
        if failed and outcome == "OK":
            outcome = "CANCELLED"
        seconds = time.monotonic() - started
        if observer is not None:
            observer(method, outcome, seconds)
        if debug:
            log.debug("%s %s %.1f ms", method, outcome, seconds * 1000)

    if streaming_response:

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started, failed = time.monotonic(), True
            try:
                async for response in behaviour(request, context):
                    yield response
                failed = False
            finally:
                finish(context, started, failed)

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started, failed = time.monotonic(), True
        try:
            response = await behaviour(request, context)
            failed = False
            return response
        finally:
            finish(context, started, failed)

    return unary


def _handler(
    method: MethodDescriptor, behaviour: Callable[..., Any], observer: CallObserver | None = None
) -> grpc.RpcMethodHandler[Any, Any]:
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make: Callable[..., grpc.RpcMethodHandler[Any, Any]] = kinds[
        (method.client_streaming, method.server_streaming)
    ]
    return make(
        _logged(method.full_name, behaviour, method.server_streaming, observer),
        request_deserializer=request.FromString,
        response_serializer=response.SerializeToString,
    )


def package_names(descriptor: ServiceDescriptor) -> list[str]:
    """The service's full name under each package: ``tvix.…`` and ``snix.…``."""
    return [descriptor.full_name.replace("tvix.", f"{p}.", 1) for p in PACKAGES]


def service_handlers(
    descriptor: ServiceDescriptor, servicer: object, observer: CallObserver | None = None
) -> list[grpc.GenericRpcHandler]:
    """Handlers for ``servicer`` under each package name."""
    handlers = {
        m.name: _handler(m, getattr(servicer, m.name), observer) for m in descriptor.methods
    }
    return [
        grpc.method_handlers_generic_handler(name, handlers) for name in package_names(descriptor)
    ]


def service_names() -> list[str]:
    """Every service name the daemon answers (for health and reflection)."""
    return [name for descriptor in SERVICES for name in package_names(descriptor)]


class Daemon:
    """A gRPC server over ``services``, listening on one address."""

    def __init__(
        self,
        services: StoreServices,
        address: ListenAddress,
        observer: CallObserver | None = None,
    ) -> None:
        self.services = services
        self.address = address
        self.server = grpc.aio.server(
            interceptors=tracing.server_interceptors() or None,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicers: Iterable[tuple[ServiceDescriptor, object]] = zip(
            SERVICES,
            (
                BlobServer(services.blobs),
                DirectoryServer(services.directories),
                PathInfoServer(services),
            ),
            strict=True,
        )
        for descriptor, servicer in servicers:
            self.server.add_generic_rpc_handlers(service_handlers(descriptor, servicer, observer))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            [
                *(d.full_name for d in SERVICES),
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.url = ""

    async def start(self) -> str:
        """Bind and start; returns the URL clients can use."""
        check_bindable(self.address)
        try:
            port = self.server.add_insecure_port(self.address.target)
        except RuntimeError as exc:
            raise ListenError(f"cannot listen on {self.address.text}: {exc}") from None
        await self.server.start()
        for name in ["", *service_names()]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.url = grpc_url(self.address, port)
        return self.url

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Refuse new calls, let in-flight ones finish (up to ``grace`` s), then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        path = self.address.socket_path
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def serve(
    services: StoreServices,
    address: ListenAddress,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
    observer: CallObserver | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    daemon = Daemon(services, address, observer)
    url = await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        log.info("listening on %s (pid %d)", url, os.getpid())
        if on_ready is not None:
            result = on_ready(url)
            if result is not None:
                await result
        await stop.wait()
        log.info("shutting down: finishing calls in flight")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await daemon.stop()

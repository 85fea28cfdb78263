"""OpenTelemetry traces, exported over OTLP when ``cafs --otlp`` asks for them.

Off by default, and then nothing of OpenTelemetry is even imported: a
command pays nothing for tracing it does not use. On, every command is a root
span, gRPC calls are client spans whose context travels in the call's
metadata (W3C ``traceparent``), and a daemon's calls are server spans that
continue the caller's trace, so one trace runs from a CLI command through the
daemon to its backends. The exporter is configured by the standard
variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4317``,
``OTEL_EXPORTER_OTLP_HEADERS``…); spans still queued are sent at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from typing import Any

_provider: Any = None
DEFAULT_EXPORT_TIMEOUT = 3.0


def enable(service_name: str) -> None:
    """Export spans over OTLP/gRPC from now on, as service ``service_name``."""
    global _provider
    if _provider is not None:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import cafs

    resource = Resource.create({"service.name": service_name, "service.version": cafs.__version__})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    # An unreachable collector costs a command at most this long at exit.
    timeout = float(os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", DEFAULT_EXPORT_TIMEOUT))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=timeout)))
    trace.set_tracer_provider(provider)
    _provider = provider
    atexit.register(flush)


def enabled() -> bool:
    return _provider is not None


def flush() -> None:
    """Send the spans still queued (at exit, or before a daemon stops)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=int(DEFAULT_EXPORT_TIMEOUT * 1000))


@contextlib.contextmanager
def span(name: str, **attributes: str | int) -> Iterator[None]:
    """A span around the block when tracing is on; nothing at all when it is off."""
    if _provider is None:
        yield
        return
    from opentelemetry import trace

    with trace.get_tracer("cafs").start_as_current_span(name, attributes=attributes):
        yield


def client_interceptors() -> list[Any]:
    """OpenTelemetry's interceptors for gRPC calls with one request: a span per call,
    its context sent along (``cafs.rpc.tracing`` has those for request streams)."""
    if _provider is None:
        return []
    import grpc.aio
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    single = (grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor)
    interceptors: list[Any] = [
        i
        for i in aio_client_interceptors()  # type: ignore[no-untyped-call]
        if isinstance(i, single)
    ]
    return interceptors


def server_interceptors() -> list[Any]:
    """Interceptors for a gRPC server: a span per call, continuing the caller's trace."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]

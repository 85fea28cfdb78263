"""Client spans for gRPC calls that stream their requests (imported only with tracing on).

OpenTelemetry's own interceptors for such calls consume the request
iterator, which calls written with ``write()`` do not have; these pass it
through untouched, open a client span, and send the trace context along in
the call's metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode


def _with_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """``details`` with the current trace context added to the call's metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in carrier.items():
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


async def _traced(details: grpc.aio.ClientCallDetails, start: Callable[[Any], Any]) -> Any:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    span = trace.get_tracer("cafs").start_span(
        method, kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc", "rpc.method": method}
    )
    with trace.use_span(span, end_on_exit=False):
        call = await start(_with_context(details))

    async def end(done: Any) -> None:
        code = await done.code()  # the call is over: answered at once
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.end()

    ending: set[asyncio.Future[None]] = set()

    def finished(done: Any) -> None:
        task = asyncio.ensure_future(end(done))
        ending.add(task)  # held until it has run
        task.add_done_callback(ending.discard)

    call.add_done_callback(finished)
    return call


def stream_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return [RequestStreamTracing()]


class RequestStreamTracing(
    grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor
):
    """Both kinds of call whose requests are a stream: the iterator passes through."""

    async def _intercept(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Iterable[Any] | AsyncIterable[Any] | None,
    ) -> Any:
        async def start(details: grpc.aio.ClientCallDetails) -> Any:
            return await continuation(details, request_iterator)

        return await _traced(client_call_details, start)

    intercept_stream_unary = _intercept
    intercept_stream_stream = _intercept

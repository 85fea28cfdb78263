"""gRPC channel URLs (``grpc+unix``, ``grpc+http``, ``grpc+https``) and the channels they open.

The URL rules are tvix's: a unix socket URL has no host, an HTTP URL has no
path, and ``wait-connect=1`` makes the first use connect eagerly and fail at
once when nobody answers, instead of connecting lazily on the first call.

cafs adds ``deadline=SECONDS`` (default 10): a unary call must be answered,
and each message of a stream must arrive, within it, so a stalled server (a
stopped process, a dead network path) is an error within the deadline
instead of a hang. Reads are idempotent: one refused because the server is
unreachable (UNAVAILABLE, as while a daemon restarts) is tried again with
backoff for up to ``RETRY_WINDOW`` seconds (never past the deadline). Once a
retry window ran out, later calls are tried once each, without waiting,
until one succeeds: a server that is down costs each caller one attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import grpc
import grpc.aio

from cafs import tracing
from cafs.errors import InvalidAddressError, RemoteError
from cafs.urls import deadline_option

SCHEMES = ("grpc+unix", "grpc+http", "grpc+https")

MAX_MESSAGE_BYTES = 64 << 20
"""Largest message either side accepts (tvix accepts 4 MiB; big directories need more)."""

CONNECT_TIMEOUT = 10.0
"""Seconds ``wait-connect=1`` waits for a connection."""
DEFAULT_DEADLINE = 10.0
"""Seconds a call, or one message of a stream, may take (``?deadline=SECONDS``)."""
RETRY_WINDOW = 3.0
"""Seconds an idempotent call refused as UNAVAILABLE is retried (a daemon restart)."""
RETRY_FIRST_BACKOFF = 0.1
RETRY_MAX_BACKOFF = 1.0
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})

R = TypeVar("R")

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Reconnect quickly once a restarted daemon is back (the default backs off to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Notice a peer that vanished without closing the connection.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


@dataclass(frozen=True, slots=True)
class ChannelAddress:
    """Where a gRPC service is, as parsed from its service URL."""

    url: str
    target: str
    """The target string grpc understands: ``unix:///path`` or ``host:port``."""
    secure: bool
    wait_connect: bool
    deadline: float = DEFAULT_DEADLINE


def parse_channel_url(url: str) -> ChannelAddress:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidAddressError(url, str(exc)) from None
    if parts.scheme not in SCHEMES:
        raise InvalidAddressError(url, f"not a gRPC URL (use one of {', '.join(SCHEMES)})")
    wait_connect = False
    deadline = DEFAULT_DEADLINE
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "wait-connect":
            if value not in ("0", "1"):
                raise InvalidAddressError(url, "wait-connect must be 0 or 1")
            wait_connect = value == "1"
        elif key == "deadline":
            deadline = deadline_option(url, value)
        else:
            raise InvalidAddressError(
                url, f"unsupported option {key!r} (only wait-connect and deadline)"
            )
    if parts.fragment:
        raise InvalidAddressError(url, "a gRPC URL takes no fragment")
    if parts.scheme == "grpc+unix":
        if parts.netloc:
            raise InvalidAddressError(url, "host may not be set for unix domain sockets")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidAddressError(url, "the socket path must be absolute (grpc+unix:///path)")
        return ChannelAddress(url, f"unix://{path}", False, wait_connect, deadline)
    if parts.path not in ("", "/"):
        raise InvalidAddressError(url, "path may not be set")
    host = parts.hostname
    if not host:
        raise InvalidAddressError(url, "missing host")
    secure = parts.scheme == "grpc+https"
    if port is None:
        port = 443 if secure else 80
    shown = f"[{host}]" if ":" in host else host
    return ChannelAddress(url, f"{shown}:{port}", secure, wait_connect, deadline)


async def within(step: Awaitable[R], seconds: float) -> R:
    """``step``'s result, or DEADLINE_EXCEEDED (as grpc reports it) after ``seconds``."""
    try:
        return await asyncio.wait_for(step, seconds)
    except TimeoutError:
        raise deadline_exceeded(seconds) from None


def deadline_exceeded(seconds: float) -> grpc.aio.AioRpcError:
    """The error of a call that got no answer in time, as grpc itself reports one."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"no answer within the deadline of {seconds:g} s",
    )


def open_channel(address: ChannelAddress) -> grpc.aio.Channel:
    """A channel to ``address`` (needs a running event loop; connects lazily)."""
    interceptors = None
    if tracing.enabled():
        from cafs.rpc.tracing import stream_interceptors

        interceptors = [*tracing.client_interceptors(), *stream_interceptors()]
    if address.secure:
        return grpc.aio.secure_channel(
            address.target,
            grpc.ssl_channel_credentials(),
            options=CHANNEL_OPTIONS,
            interceptors=interceptors,
        )
    return grpc.aio.insecure_channel(
        address.target, options=CHANNEL_OPTIONS, interceptors=interceptors
    )


async def wait_connected(channel: grpc.aio.Channel, address: ChannelAddress) -> None:
    """Connect now; a refused or unreachable address is an error, not a retry loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise RemoteError(f"cannot connect to {address.url}", "UNAVAILABLE")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise RemoteError(
                f"cannot connect to {address.url}: no answer in {CONNECT_TIMEOUT:g} s",
                "DEADLINE_EXCEEDED",
            )
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except TimeoutError:
            continue
        state = channel.get_state(try_to_connect=True)


StubT = TypeVar("StubT")


class Remote(Generic[StubT]):
    """A service's connection and stub: opened on first use, closed with the service.

    The base of every gRPC client service, which gets ``stub``, ``url``,
    ``connect`` and ``close`` from here.
    """

    def __init__(
        self, address: ChannelAddress, make_stub: Callable[[grpc.aio.Channel], StubT]
    ) -> None:
        self.address = address
        self._make_stub = make_stub
        self._channel: grpc.aio.Channel | None = None
        self._stub: StubT | None = None
        self._down = False
        """Set when a retry window ran out: calls are then tried once until one succeeds."""

    @property
    def url(self) -> str:
        return self.address.url

    @property
    def stub(self) -> StubT:
        if self._stub is None:
            self._channel = open_channel(self.address)
            self._stub = self._make_stub(self._channel)
        return self._stub

    async def connect(self) -> None:
        """Honour ``wait-connect=1``: fail now if the server cannot be reached."""
        if self.address.wait_connect:
            self.stub  # noqa: B018 - opens the channel
            assert self._channel is not None
            await wait_connected(self._channel, self.address)

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    # -- deadlines and retries ------------------------------------------------------

    @property
    def deadline(self) -> float:
        return self.address.deadline

    def _retry_until(self, loop: asyncio.AbstractEventLoop) -> float:
        return loop.time() + (0.0 if self._down else min(RETRY_WINDOW, self.deadline))

    def _retry_pause(
        self,
        exc: grpc.aio.AioRpcError,
        until: float,
        backoff: float,
        loop: asyncio.AbstractEventLoop,
    ) -> float | None:
        """How long to wait before trying again, or None to give up (and raise)."""
        if exc.code() not in RETRIED_CODES:
            return None
        if loop.time() + backoff > until:
            self._down = True
            return None
        return backoff

    async def unary(self, call: Callable[[float], Awaitable[R]], *, idempotent: bool = True) -> R:
        """``call(timeout)``'s answer within the deadline (retried while unreachable)."""
        loop = asyncio.get_running_loop()
        until = self._retry_until(loop) if idempotent else loop.time()
        backoff = RETRY_FIRST_BACKOFF
        while True:
            try:
                answer = await call(self.deadline)
            except grpc.aio.AioRpcError as exc:
                pause = self._retry_pause(exc, until, backoff, loop)
                if pause is None:
                    raise
                await asyncio.sleep(pause)
                backoff = min(backoff * 2, RETRY_MAX_BACKOFF)
                continue
            self._down = False
            return answer

    async def stream(
        self, start: Callable[[], grpc.aio.UnaryStreamCall[Any, R]], *, idempotent: bool = True
    ) -> AsyncIterator[R]:
        """The messages of the server stream ``start()`` opens, each within the deadline.

        Retried (while unreachable, if idempotent) only before its first message.
        """
        loop = asyncio.get_running_loop()
        until = self._retry_until(loop) if idempotent else loop.time()
        backoff = RETRY_FIRST_BACKOFF
        while True:
            call = start()
            received = 0
            try:
                while True:
                    message = await self.next_message(call)
                    if message is None:
                        self._down = False
                        return
                    received += 1
                    yield message
            except grpc.aio.AioRpcError as exc:
                pause = None if received else self._retry_pause(exc, until, backoff, loop)
                if pause is None:
                    raise
            finally:
                call.cancel()
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, RETRY_MAX_BACKOFF)

    async def next_message(self, call: grpc.aio.UnaryStreamCall[Any, R]) -> R | None:
        """The stream's next message (None at its end), or DEADLINE_EXCEEDED if it stalls."""
        try:
            message = await asyncio.wait_for(call.read(), self.deadline)
        except TimeoutError:
            call.cancel()
            raise deadline_exceeded(self.deadline) from None
        if message is grpc.aio.EOF:
            return None
        return message  # type: ignore[return-value]

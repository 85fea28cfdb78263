"""Metrics in Prometheus's text format, served on ``--metrics-listen-address``.

What a mount or a virtiofs daemon answers: FUSE requests by opcode, how long
each took (from the request read to its reply), and the errors returned by
errno; what a gRPC daemon answers: calls by method and status code, and how
long they took; plus the process's own figures (CPU, memory, open fds) that
the client library exports; and the data path's counts (``cafs.counters``):
objects and bytes fetched per backend, cache hits and misses. The endpoint is
a small HTTP server on a thread of its own, so a scrape never waits on the
event loop.
"""

from __future__ import annotations

import errno as errnos
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from cafs import counters
from cafs.fuse.abi import Opcode
from cafs.sockets import ListenError, parse_listen_address

FUSE_REQUESTS = Counter("cafs_fuse_requests", "FUSE requests answered, by opcode", ["opcode"])
FUSE_ERRORS = Counter(
    "cafs_fuse_errors",
    "FUSE requests answered with an error, by opcode and errno",
    ["opcode", "errno"],
)
FUSE_SECONDS = Histogram(
    "cafs_fuse_request_seconds",
    "Seconds from a FUSE request read to its reply, by opcode",
    ["opcode"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
             0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)  # fmt: skip


GRPC_CALLS = Counter(
    "cafs_grpc_calls", "gRPC calls answered, by method and status code", ["method", "code"]
)
GRPC_SECONDS = Histogram(
    "cafs_grpc_call_seconds",
    "Seconds a gRPC call took, by method",
    ["method"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
             0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)  # fmt: skip


def observe_grpc(method: str, code: str, seconds: float) -> None:
    """A ``cafs.grpc.server.CallObserver``: one finished call."""
    GRPC_CALLS.labels(method, code).inc()
    GRPC_SECONDS.labels(method).observe(seconds)


def _opcode_name(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return str(opcode)


def observe_fuse(opcode: int, seconds: float, error: int) -> None:
    """A ``cafs.fuse.server.Observer``: one answered request."""
    name = _opcode_name(opcode)
    FUSE_REQUESTS.labels(name).inc()
    FUSE_SECONDS.labels(name).observe(seconds)
    if error:
        FUSE_ERRORS.labels(name, errnos.errorcode.get(error, str(error))).inc()


class DataPathCounters(Collector):
    """The data path's in-process counts (``cafs.counters``), read at each scrape."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, values in sorted(counters.snapshot().items()):
            label_names = sorted({key for labels in values for key, _ in labels})
            family = CounterMetricFamily(name, counters.HELP.get(name, name), labels=label_names)
            for labels, value in sorted(values.items()):
                by_name = dict(labels)
                family.add_metric([by_name.get(key, "") for key in label_names], value)
            yield family


REGISTRY.register(DataPathCounters())


def serve_metrics(text: str) -> str:
    """Serve ``/metrics`` at ``host:port``; the URL it is at. ListenError names a bad address."""
    address = parse_listen_address(text)
    if address.socket_path is not None:
        raise ListenError(f"cannot serve metrics on {text}: give host:port")
    host, port = address.host_port
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise ListenError(f"cannot serve metrics on {text}: {exc.strerror or exc}") from None
    return f"http://{address.text}/metrics"

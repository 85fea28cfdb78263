"""``cafs --otlp``: one trace from a CLI command through the gRPC daemon, sent over OTLP.

The collector is an OTLP/gRPC TraceService inside the test (the protocol's own
generated service, from ``opentelemetry-proto``), listening on 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.daemon import file_services, running_daemon
from tests.process import cafs

CLIENT, SERVER = trace_pb2.Span.SPAN_KIND_CLIENT, trace_pb2.Span.SPAN_KIND_SERVER


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []  # (service.name, span)
        self.lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((attributes.get("service.name", ""), span))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("CAFS_OTLP", "1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    try:
        yield receiver
    finally:
        server.stop(grace=None)


def test_one_trace_from_the_cli_through_the_daemon(collector: Collector, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_bytes(b"traced " * 1000)
    with running_daemon(tmp_path / "daemon", "127.0.0.1:0", *file_services(tmp_path)) as daemon:
        flags = ("--blob-service-addr", daemon.url, "--directory-service-addr", daemon.url)
        cafs("castore", "ingest", str(tree), *flags, home=tmp_path / "client")
    spans = [span for _, span in collector.spans]
    roots = [s for s in spans if s.name == "cafs castore ingest"]
    assert len(roots) == 1, [s.name for s in spans]
    root = roots[0]
    assert not root.parent_span_id
    calls = [s for s in spans if s.kind == CLIENT and s.trace_id == root.trace_id]
    assert calls and all(c.parent_span_id == root.span_id for c in calls)
    assert {c.name for c in calls} >= {"/tvix.castore.v1.BlobService/Put"}
    call_ids = {c.span_id for c in calls}
    served = [s for s in spans if s.kind == SERVER and s.trace_id == root.trace_id]
    # The daemon continued the caller's trace: each of its spans is a child of a call.
    assert served and all(s.parent_span_id in call_ids for s in served)
    assert {s.name for s in served} >= {"/tvix.castore.v1.BlobService/Put"}
    assert all(service == "cafs" for service, _ in collector.spans)


def test_without_otlp_nothing_is_sent(collector: Collector, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_bytes(b"untraced")
    cafs("castore", "ingest", str(tree), home=tmp_path / "home", CAFS_OTLP="0")
    assert collector.spans == []

"""``cafs daemon --metrics-listen-address``: calls by method and status code, scraped live."""

from __future__ import annotations

from pathlib import Path

from tests.daemon import MEMORY_SERVICES, running_daemon, socket_path
from tests.http.bridge import free_port
from tests.mount.test_metrics import scrape
from tests.process import cafs


def test_the_daemon_serves_its_call_metrics(tmp_path: Path) -> None:
    port = free_port()
    metrics = ("--metrics-listen-address", f"127.0.0.1:{port}")
    source = tmp_path / "blob"
    source.write_bytes(b"counted")
    with running_daemon(tmp_path / "d", socket_path(tmp_path), *MEMORY_SERVICES, *metrics) as d:
        flags = ("--blob-service-addr", d.url, "--directory-service-addr", d.url)
        digest = cafs("castore", "ingest", str(source), *flags, home=tmp_path / "c").stdout.split()[
            2
        ]
        assert cafs("castore", "cat", digest, *flags, home=tmp_path / "c").stdout == "counted"
        missing = "b3:" + "A" * 43 + "="
        assert (
            cafs("castore", "cat", missing, *flags, home=tmp_path / "c", check=False).returncode
            == 3
        )
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    calls = {
        name: value for name, value in samples.items() if name.startswith("cafs_grpc_calls_total")
    }
    put = 'cafs_grpc_calls_total{code="OK",method="tvix.castore.v1.BlobService.Put"}'
    assert calls[put] == 1, calls
    stat_missing = (
        'cafs_grpc_calls_total{code="NOT_FOUND",method="tvix.castore.v1.BlobService.Stat"}'
    )
    assert calls[stat_missing] >= 1, calls
    assert samples['cafs_grpc_call_seconds_count{method="tvix.castore.v1.BlobService.Put"}'] == 1

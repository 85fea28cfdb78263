"""``--metrics-listen-address``: a mount's FUSE requests, latencies and errors, scraped live."""

from __future__ import annotations

import errno
import os
import urllib.request
from pathlib import Path

from tests.http.bridge import free_port
from tests.mount.conftest import Corpus, expect_errno, mounted
from tests.process import cafs


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_mount_serves_its_request_metrics(corpus: Corpus, tmp_path: Path) -> None:
    port = free_port()
    flags = ("--metrics-listen-address", f"127.0.0.1:{port}")
    with mounted(corpus.digest, tmp_path / "m", corpus.home, *flags) as m:
        assert (m.path / "hello.txt").read_bytes() == b"Hello World!"
        assert len(os.listdir(m.path / "many")) > 0
        expect_errno(errno.ENODATA, os.getxattr, m.path / "hello.txt", "user.absent")
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert f"metrics at http://127.0.0.1:{port}/metrics" in m.stderr()
    assert samples['cafs_fuse_requests_total{opcode="INIT"}'] == 1
    assert samples['cafs_fuse_requests_total{opcode="LOOKUP"}'] >= 2
    assert samples['cafs_fuse_requests_total{opcode="OPEN"}'] >= 1
    assert samples['cafs_fuse_errors_total{errno="ENODATA",opcode="GETXATTR"}'] == 1
    lookups = samples['cafs_fuse_request_seconds_count{opcode="LOOKUP"}']
    assert lookups == samples['cafs_fuse_requests_total{opcode="LOOKUP"}']
    assert samples['cafs_fuse_request_seconds_bucket{le="+Inf",opcode="LOOKUP"}'] == lookups
    assert samples["process_resident_memory_bytes"] > 0


def test_a_bad_metrics_address_is_a_one_line_error(corpus: Corpus, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    flags = ("--metrics-listen-address", "/a/socket")
    mountpoint = str(tmp_path / "m")
    result = cafs(
        "castore", "mount", corpus.digest, mountpoint, *flags, home=corpus.home, check=False
    )
    assert result.returncode == 1
    assert result.stderr == "error: cannot serve metrics on /a/socket: give host:port\n"


def test_a_mount_counts_fetches_and_cache_lookups(corpus: Corpus, tmp_path: Path) -> None:
    """Through a cache: the first read of a file misses near and fetches far, a read of the
    same bytes by a second mount on the same near cache hits."""
    near = tmp_path / "near"
    far = f"objectstore+file://{corpus.home}/objects"
    env = {"BLOB_SERVICE_ADDR": f"cache://?near=objectstore+file://{near}&far={far}"}
    first: dict[str, float] = {}
    for round_ in range(2):
        port = free_port()
        flags = ("--metrics-listen-address", f"127.0.0.1:{port}")
        with mounted(corpus.digest, tmp_path / f"m{round_}", corpus.home, *flags, env=env) as m:
            assert (m.path / "hello.txt").read_bytes() == b"Hello World!"
            samples = scrape(f"http://127.0.0.1:{port}/metrics")
        if round_ == 0:
            first = samples
    miss = 'cafs_cache_lookups_total{result="miss",service="blob"}'
    hit = 'cafs_cache_lookups_total{result="hit",service="blob"}'
    assert first[miss] >= 1 and first.get(hit, 0) == 0
    assert first['cafs_fetched_bytes_total{backend="file"}'] > 0
    assert samples[hit] >= 1 and samples.get(miss, 0) == 0

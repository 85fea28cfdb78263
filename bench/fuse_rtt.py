"""What one FUSE round trip costs, by request kind, on a warm mount: cafs against squashfuse_ll.

Each probe is a system call the kernel cannot answer from its caches, so it
becomes exactly one request to the daemon (measured per call, in µs; medians
of ``--runs`` batches of ``--calls``):

- LOOKUP: ``stat`` of a name never asked before (a negative lookup);
- GETATTR: ``statx`` with ``AT_STATX_FORCE_SYNC`` of a file already looked up;
- OPEN: ``open`` + ``close`` of one file (RELEASE goes out asynchronously);
- READ: a 4 KiB ``pread`` with ``O_DIRECT`` (bypassing the page cache) within the
  first 64 KiB of the large file, so no chunk is fetched after the first;
- GETXATTR: ``getxattr`` of an attribute the file does not have.

The native tree is measured too, as the floor. It uses the corpus of
``bench/fs.py`` (same work directory and flags), mounted the same way.

    python bench/fuse_rtt.py [--calls N --runs K --workdir DIR --output FILE]

Needs root, like ``bench/fs.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import mmap
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fs
from harness import (
    LARGE_NAME,
    Medians,
    add_corpus_options,
    add_report_options,
    lacks_root,
    publish,
    ratio,
    source_state,
    table,
    times,
)

AT_STATX_FORCE_SYNC = 0x2000
STATX_BASIC_STATS = 0x7FF
PEERS = ["native", "squashfuse_ll", "cafs"]
KINDS = ["LOOKUP", "GETATTR", "OPEN", "READ", "GETXATTR"]

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_statx_buffer = ctypes.create_string_buffer(256)


def statx_sync(path: bytes) -> None:
    if _libc.statx(-100, path, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, _statx_buffer) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def probes(root: Path, small: str, large: str) -> dict[str, Callable[[int], None]]:
    """One callable per kind; each call makes one request (``i`` keeps names fresh)."""
    file_path = os.fsencode(root / small)
    missing_dir = root / os.path.dirname(small)
    stamp = time.monotonic_ns()
    buffer = mmap.mmap(-1, 4096)
    direct = os.open(root / large, os.O_RDONLY | os.O_DIRECT)

    def lookup(i: int) -> None:
        try:
            os.stat(missing_dir / f"missing-{stamp}-{i}")
        except FileNotFoundError:
            return
        raise AssertionError("a missing name exists")

    def getattr_(i: int) -> None:
        statx_sync(file_path)

    def open_(i: int) -> None:
        os.close(os.open(file_path, os.O_RDONLY))

    def read(i: int) -> None:
        # Pages of the first 64 KiB: one chunk, so the round trip is measured
        # and not the fetch of a chunk from the store (that is fs.py's part).
        os.preadv(direct, [buffer], (i % 16) * 4096)

    def getxattr(i: int) -> None:
        try:
            os.getxattr(file_path, "user.cafs.bench.absent")
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise

    return {"LOOKUP": lookup, "GETATTR": getattr_, "OPEN": open_, "READ": read,
            "GETXATTR": getxattr}  # fmt: skip


def time_calls(call: Callable[[int], None], calls: int, offset: int) -> float:
    """µs per call."""
    start = time.perf_counter()
    for i in range(offset, offset + calls):
        call(i)
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_options(parser)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    add_report_options(parser, fs.WORKDIR)
    opts = parser.parse_args(argv)
    if lacks_root("bench/fuse_rtt.py needs root"):
        return 2
    fs.ensure_tools()
    peers, small, _ = fs.build(opts)
    sample = next(name for name in small if os.path.getsize(peers.tree / name) > 0)
    results = Medians()
    for peer in PEERS:
        with peers.mount(peer) as mounted:
            calls = probes(mounted.root, sample, LARGE_NAME)
            for run in range(opts.runs):
                for kind in KINDS:
                    results.add(peer, kind, time_calls(calls[kind], opts.calls, run * opts.calls))
            print(f"{peer}: done", file=sys.stderr)
    rows = []
    for kind in KINDS:
        values = {peer: results.median(peer, kind) for peer in PEERS}
        row = [kind, *(f"{values[peer]:.1f}" for peer in PEERS)]
        rows.append([*row, times(ratio(values["cafs"], values["squashfuse_ll"]))])
    lines = [
        f"FUSE round trips on a warm mount ({source_state()}), µs per call, "
        f"medians of {opts.runs} × {opts.calls} calls.",
        "",
        *table(["request", *PEERS, "cafs ÷ squashfuse_ll"], rows),
    ]
    text = "\n".join(lines)
    publish(text, opts.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

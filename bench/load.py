"""Load: many gRPC clients on one daemon, many readers on one mount; every byte checked.

- ``--clients`` processes (default 16), each making ``--reads`` (default 10,000)
  blob reads through ``GrpcBlobService`` from one ``cafs daemon`` (unix
  socket, the embedded store layout), each blob picked at random from
  ``--blobs`` files of 1–64 KiB written beforehand; every blob read is
  compared with its source bytes.
- ``--readers`` threads (default 64) on one ``cafs castore mount`` of the
  same files, each making ``--mount-reads`` (default 2,000) open/read/close
  of a random file, compared with the source; the page cache is dropped
  first (root), so early reads reach cafs.

Reports mismatches (must be 0) and latency percentiles.

    python bench/load.py [--clients N --reads N --readers N --mount-reads N --blobs N
                          --workdir DIR --output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

from harness import (
    CAFS,
    BenchError,
    add_report_options,
    cafs_env,
    drop_caches,
    ingest_tree,
    lacks_root,
    measure_and_publish,
    mounted,
    remove,
    run,
    serving,
    source_state,
    table,
)

WORKER_TIMEOUT = 1800.0


def percentiles(samples: list[float]) -> str:
    if not samples:
        return "-"
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return (
        f"p50 {at(0.50):.2f} ms, p90 {at(0.90):.2f} ms, p99 {at(0.99):.2f} ms, "
        f"max {ordered[-1] * 1e3:.2f} ms"
    )


def client(url: str, blobs: list[tuple[str, str]], reads: int, seed: int,
           out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]  # fmt: skip
    """One client process: ``reads`` random blob reads, each compared with its file."""
    from cafs.castore.blobs.grpc import GrpcBlobService
    from cafs.castore.digest import Digest
    from cafs.rpc.channel import parse_channel_url

    sources = {digest: Path(path).read_bytes() for digest, path in blobs}

    async def work() -> tuple[list[float], int, int]:
        service = GrpcBlobService(parse_channel_url(url))
        rng = random.Random(seed)
        latencies: list[float] = []
        mismatches = errors = 0
        try:
            for _ in range(reads):
                digest, _ = rng.choice(blobs)
                started = time.perf_counter()
                try:
                    data = await service.read_all(Digest.parse(digest))
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if data != sources[digest]:
                    mismatches += 1
        finally:
            await service.close()
        return latencies, mismatches, errors

    out.put(asyncio.run(work()))


class LoadBench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.work: Path = opts.workdir.absolute()
        self.home = self.work / "home"
        self.lines: list[str] = []
        self.failures = 0

    def build(self) -> tuple[str, list[tuple[str, str]]]:
        remove(self.work)
        tree = self.work / "files"
        tree.mkdir(parents=True)
        rng = random.Random(7)
        for i in range(self.opts.blobs):
            (tree / f"f{i:05d}").write_bytes(rng.randbytes(rng.randrange(1024, 65536)))
        root = ingest_tree(tree, self.home)
        listing = run([*CAFS, "castore", "ls", root], env=cafs_env(self.home)).splitlines()
        blobs = [(line.split()[1], str(tree / line.split()[-1])) for line in listing]
        return root, blobs

    def grpc_load(self, blobs: list[tuple[str, str]]) -> None:
        sock = self.work / "daemon.sock"
        objects = "objectstore+file://" + quote(str(self.home / "objects"))
        dirs = "sqlite://" + quote(str(self.home / "directories.sqlite"))
        command = [*CAFS, "daemon", "--listen-address", str(sock), "--blob-service-addr", objects,
                   "--directory-service-addr", dirs,
                   "--path-info-service-addr", "memory://"]  # fmt: skip
        with serving(command, sock.is_socket, "cafs daemon did not start", timeout=30):
            context = multiprocessing.get_context("spawn")
            out = context.Queue()
            url = f"grpc+unix://{sock}"
            started = time.perf_counter()
            workers = [
                context.Process(target=client, args=(url, blobs, self.opts.reads, seed, out))
                for seed in range(self.opts.clients)
            ]
            for worker in workers:
                worker.start()
            results = []
            for _ in workers:
                try:
                    results.append(out.get(timeout=WORKER_TIMEOUT))
                except Exception as exc:
                    raise BenchError(f"a client process gave no result: {exc!r}") from None
            for worker in workers:
                worker.join(timeout=60)
            elapsed = time.perf_counter() - started
        latencies = [x for lat, _, _ in results for x in lat]
        mismatches = sum(m for _, m, _ in results)
        errors = sum(e for _, _, e in results)
        total = self.opts.clients * self.opts.reads
        self.failures += mismatches + errors
        self.lines.append(
            f"| {self.opts.clients} gRPC clients × {self.opts.reads:,} blob reads | {total:,} | "
            f"{mismatches} | {errors} | {total / elapsed:,.0f} | {percentiles(latencies)} |"
        )

    def mount_load(self, root: str, blobs: list[tuple[str, str]]) -> None:
        mnt = self.work / "mnt"
        names = [Path(path).name for _, path in blobs]
        sources = {Path(path).name: Path(path).read_bytes() for _, path in blobs}
        latencies: list[float] = []
        counts = {"mismatches": 0, "errors": 0}
        lock = threading.Lock()

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            mine: list[float] = []
            bad = errs = 0
            for _ in range(self.opts.mount_reads):
                name = rng.choice(names)
                started = time.perf_counter()
                try:
                    with open(mnt / name, "rb", buffering=0) as f:
                        data = f.read()
                except OSError:
                    errs += 1
                    continue
                mine.append(time.perf_counter() - started)
                bad += data != sources[name]
            with lock:
                latencies.extend(mine)
                counts["mismatches"] += bad
                counts["errors"] += errs

        with mounted([*CAFS, "castore", "mount", root, str(mnt)], mnt, env=cafs_env(self.home)):
            drop_caches()
            started = time.perf_counter()
            threads = [threading.Thread(target=reader, args=(i,)) for i in range(self.opts.readers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
        total = self.opts.readers * self.opts.mount_reads
        self.failures += counts["mismatches"] + counts["errors"]
        self.lines.append(
            f"| {self.opts.readers} readers × {self.opts.mount_reads:,} reads on one mount | "
            f"{total:,} | {counts['mismatches']} | {counts['errors']} | "
            f"{total / elapsed:,.0f} | {percentiles(latencies)} |"
        )

    def run(self) -> None:
        root, blobs = self.build()
        self.grpc_load(blobs)
        self.mount_load(root, blobs)

    def report(self) -> str:
        head = [
            f"Load ({source_state()}): {self.opts.blobs:,} blobs of 1–64 KiB.",
            "",
            *table(["load", "reads", "mismatches", "errors", "reads/s", "latency"], align="lrrrrl"),
        ]
        return "\n".join(head + self.lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--readers", type=int, default=64)
    parser.add_argument("--mount-reads", type=int, default=2_000)
    parser.add_argument("--blobs", type=int, default=2_000)
    add_report_options(parser, Path("/var/tmp/cafs-bench-load"))
    opts = parser.parse_args(argv)
    if lacks_root("bench/load.py needs root (drop_caches, mounting)"):
        return 2
    bench = LoadBench(opts)
    status = measure_and_publish(bench.run, bench.report, opts.output)
    return status or (0 if bench.failures == 0 else 1)


if __name__ == "__main__":
    sys.exit(main())

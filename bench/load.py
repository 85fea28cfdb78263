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
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

from fs import drop_caches, is_mounted, wait_mounted
from ingest import BenchError, publish, remove, run, source_state

CAFS = [sys.executable, "-m", "cafs.cli"]
HERE = Path(__file__).resolve().parent
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
    # bench/grpc.py would shadow the grpc package in this process: take bench/ off the path.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    from cafs.castore.blobs.grpc import GrpcBlobService
    from cafs.castore.digest import Digest
    from cafs.grpc.channel import parse_channel_url

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
        env = {**os.environ, "CAFS_HOME": str(self.home)}
        root = run([*CAFS, "castore", "ingest", str(tree)], env=env).split()[2]
        listing = run([*CAFS, "castore", "ls", root], env=env).splitlines()
        blobs = [(line.split()[1], str(tree / line.split()[-1])) for line in listing]
        return root, blobs

    def grpc_load(self, blobs: list[tuple[str, str]]) -> None:
        sock = self.work / "daemon.sock"
        objects = "objectstore+file://" + quote(str(self.home / "objects"))
        dirs = "sqlite://" + quote(str(self.home / "directories.sqlite"))
        daemon = subprocess.Popen(
            [*CAFS, "daemon", "--listen-address", str(sock), "--blob-service-addr", objects,
             "--directory-service-addr", dirs, "--path-info-service-addr", "memory://"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not sock.is_socket():
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise BenchError("cafs daemon did not start")
                time.sleep(0.05)
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
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
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
        mnt.mkdir()
        env = {**os.environ, "CAFS_HOME": str(self.home)}
        mount = subprocess.Popen([*CAFS, "castore", "mount", root, str(mnt)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
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

        try:
            wait_mounted(mnt, mount)
            drop_caches()
            started = time.perf_counter()
            threads = [threading.Thread(target=reader, args=(i,)) for i in range(self.opts.readers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
        finally:
            mount.send_signal(signal.SIGTERM)
            mount.wait(timeout=60)
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        total = self.opts.readers * self.opts.mount_reads
        self.failures += counts["mismatches"] + counts["errors"]
        self.lines.append(
            f"| {self.opts.readers} readers × {self.opts.mount_reads:,} reads on one mount | "
            f"{total:,} | {counts['mismatches']} | {counts['errors']} | "
            f"{total / elapsed:,.0f} | {percentiles(latencies)} |"
        )

    def report(self) -> str:
        head = [
            f"Load ({source_state()}): {self.opts.blobs:,} blobs of 1–64 KiB.",
            "",
            "| load | reads | mismatches | errors | reads/s | latency |",
            "|---|---:|---:|---:|---:|---|",
        ]
        return "\n".join(head + self.lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--readers", type=int, default=64)
    parser.add_argument("--mount-reads", type=int, default=2_000)
    parser.add_argument("--blobs", type=int, default=2_000)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/cafs-bench-load"))
    parser.add_argument("--output", type=Path, help="also write the report here")
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/load.py needs root (drop_caches, mounting)", file=sys.stderr)
        return 2
    bench = LoadBench(opts)
    try:
        root, blobs = bench.build()
        bench.grpc_load(blobs)
        bench.mount_load(root, blobs)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    publish(bench.report(), opts.output)
    return 0 if bench.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

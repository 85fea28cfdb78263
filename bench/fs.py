"""Filesystem benchmark: a cafs mount against the native disk, squashfuse_ll and bindfs.

One command builds one corpus (``corpus.py``: 50,000 files of 0-16 KiB in
2,000 directories, plus a 1 GiB random file), ingests it into a fresh
embedded store, packs it into an uncompressed squashfs image, and measures,
in the same run and on the same disk, the same tree served by:

- ``native``: the tree on the work directory's filesystem (the floor);
- ``squashfuse_ll``: the low-level squashfuse daemon on the image, the fastest
  C FUSE peer packaged here;
- ``bindfs``: a pass-through FUSE mount of the tree (FUSE's own cost);
- ``cafs``: ``cafs castore mount`` on the embedded store.

Workloads (each cold one on a fresh mount, after ``drop_caches``):
metadata walk (``find -printf '%s'``, which stats every entry) cold and warm,
read of every small file cold (open, read, close in one process, in walk
order), sequential read of the large file cold and warm (``dd bs=1M``), random
4 KiB reads of the large file cold (``pread``, seeded offsets), and the peak
resident memory of the cafs daemon. Every FUSE mount gets the same 1 MiB
readahead, so request sizes do not differ by peer. Medians of ``--runs``.

    python bench/fs.py [--files N --dirs N --large-size SIZE --runs K --workdir DIR --output FILE]

Needs root (drop_caches, readahead), and the Debian packages fuse3,
squashfs-tools, squashfuse and bindfs (installed with apt-get if missing).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import corpus
from ingest import BenchError, publish, remove, run, source_state

MB = 1_000_000
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
READ_AHEAD_KB = 1024
RANDOM_READS = 2000
PACKAGES = {"squashfuse_ll": "squashfuse", "mksquashfs": "squashfs-tools", "bindfs": "bindfs"}
CAFS = [sys.executable, "-m", "cafs.cli"]
PEERS = ["native", "squashfuse_ll", "bindfs", "cafs"]
LARGE_NAME = "large.bin"


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def wait_mounted(path: Path, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 60
    while not is_mounted(path):
        if process is not None and process.poll() is not None:
            raise BenchError(f"mount at {path} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{path} not mounted after 60 s")
        time.sleep(0.02)
    os.stat(path)


def set_readahead(path: Path) -> None:
    dev = os.stat(path).st_dev
    Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").write_text(
        f"{READ_AHEAD_KB}\n"
    )


@dataclass
class Mounted:
    root: Path
    process: subprocess.Popen[bytes] | None = None

    def peak_rss_kib(self) -> int | None:
        if self.process is None:
            return None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None


class Peers:
    def __init__(self, workdir: Path, digest: str) -> None:
        self.workdir = workdir
        self.tree = workdir / "tree"
        self.image = workdir / "tree.sqfs"
        self.home = workdir / "home"
        self.digest = digest

    @contextmanager
    def mount(self, peer: str) -> Iterator[Mounted]:
        if peer == "native":
            yield Mounted(self.tree)
            return
        mnt = self.workdir / f"mnt-{peer}"
        mnt.mkdir(exist_ok=True)
        process: subprocess.Popen[bytes] | None = None
        if peer == "squashfuse_ll":
            run(["squashfuse_ll", str(self.image), str(mnt)])
        elif peer == "bindfs":
            run(["bindfs", "--no-allow-other", str(self.tree), str(mnt)])
        else:
            env = {**os.environ, "CAFS_HOME": str(self.home)}
            for var in ("BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR", "CAFS_LOG_LEVEL"):
                env.pop(var, None)
            process = subprocess.Popen(
                [*CAFS, "castore", "mount", self.digest, str(mnt)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(self.workdir / "cafs-mount.log", "ab"),  # noqa: SIM115
            )
        try:
            wait_mounted(mnt, process)
            set_readahead(mnt)
            yield Mounted(mnt, process)
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


# -- workloads: each returns a number (seconds, MB/s or ops/s) --------------------------


def walk(root: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["find", str(root), "-printf", "%s\n"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def read_small(root: Path, files: list[str]) -> float:
    start = time.perf_counter()
    total = 0
    for rel in files:
        with open(os.path.join(root, rel), "rb", buffering=0) as f:
            total += len(f.read())
    elapsed = time.perf_counter() - start
    if total == 0 and files:
        raise BenchError(f"read nothing from {root}")
    return elapsed


def read_large(root: Path, size: int) -> float:
    start = time.perf_counter()
    out = subprocess.run(
        ["dd", f"if={root / LARGE_NAME}", "of=/dev/null", "bs=1M"],
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if f"{size} bytes" not in out.stderr:
        raise BenchError(f"dd read the wrong amount from {root}: {out.stderr}")
    return size / MB / elapsed


def random_reads(root: Path, size: int, seed: int) -> float:
    rng = random.Random(seed)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(RANDOM_READS)]
    fd = os.open(root / LARGE_NAME, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for offset in offsets:
            if len(os.pread(fd, 4096, offset)) != 4096:
                raise BenchError("short random read")
        return RANDOM_READS / (time.perf_counter() - start)
    finally:
        os.close(fd)


@dataclass
class Results:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, peer: str, metric: str, value: float) -> None:
        self.values.setdefault((peer, metric), []).append(value)

    def median(self, peer: str, metric: str) -> float | None:
        got = self.values.get((peer, metric))
        return statistics.median(got) if got else None


METRICS: list[tuple[str, str, bool]] = [
    # key, label, higher is better
    ("walk_cold", "metadata walk, cold (s)", False),
    ("walk_warm", "metadata walk, warm (s)", False),
    ("small_cold", "read every small file, cold (s)", False),
    ("large_cold", "large file sequential read, cold (MB/s)", True),
    ("large_warm", "large file sequential read, warm (MB/s)", True),
    ("random_cold", "random 4 KiB reads, cold (ops/s)", True),
]


def measure(
    peers: Peers, peer: str, files: list[str], size: int, seed: int, results: Results
) -> None:
    def cold(metric: str, work: Callable[[Path], float], warm: str | None = None) -> None:
        with peers.mount(peer) as m:
            drop_caches()
            results.add(peer, metric, work(m.root))
            if warm is not None:
                results.add(peer, warm, work(m.root))
            rss = m.peak_rss_kib()
            if rss is not None:
                results.add(peer, "peak_rss_kib", rss)

    cold("walk_cold", walk, "walk_warm")
    cold("small_cold", lambda root: read_small(root, files))
    cold("large_cold", lambda root: read_large(root, size), "large_warm")
    cold("random_cold", lambda root: random_reads(root, size, seed))


def fmt(value: float | None, higher: bool) -> str:
    if value is None:
        return "-"
    if higher:
        return f"{value:,.0f}"
    return f"{value:.3f}"


def ratio(results: Results, metric: str, higher: bool, ref: str) -> str:
    ours, theirs = results.median("cafs", metric), results.median(ref, metric)
    if not ours or not theirs:
        return "-"
    # Expressed as "how many times the reference's cost": > 1 means cafs is slower.
    return f"{(theirs / ours) if higher else (ours / theirs):.2f}×"


def report(results: Results, opts: argparse.Namespace, files: int, size: int) -> str:
    lines = [
        f"Filesystem benchmark ({source_state()}), {opts.runs} runs, medians.",
        f"Corpus: {files:,} small files in {opts.dirs:,} directories"
        f" + a {size / 2**30:.2f} GiB file.",
        "",
        "| workload | " + " | ".join(PEERS) + " | cafs cost ÷ squashfuse_ll | cafs cost ÷ native |",
        "|---|" + "---:|" * (len(PEERS) + 2),
    ]
    for metric, label, higher in METRICS:
        row = [fmt(results.median(peer, metric), higher) for peer in PEERS]
        row += [ratio(results, metric, higher, ref) for ref in ("squashfuse_ll", "native")]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    rss = results.median("cafs", "peak_rss_kib")
    if rss is not None:
        lines.append("")
        lines.append(
            f"Peak resident memory of the cafs daemon (median of its mounts): {rss / 1024:.0f} MiB."
        )
    lines.append("")
    lines.append(
        "Cost ratios: time ratio for seconds, inverse ratio for rates; below 1.00× cafs is faster."
    )
    return "\n".join(lines)


def build(opts: argparse.Namespace) -> tuple[Peers, list[str], int]:
    workdir: Path = opts.workdir.absolute()
    tree = workdir / "tree"
    stamp = workdir / "corpus.done"
    wanted = f"{opts.files} {opts.dirs} {opts.large_size} {opts.seed}"
    if not stamp.exists() or stamp.read_text() != wanted:
        for path in (tree, workdir / "home", workdir / "tree.sqfs", stamp):
            remove(path)
        workdir.mkdir(parents=True, exist_ok=True)
        print("generating the corpus", file=sys.stderr)
        corpus.generate_tree(tree, opts.files, opts.dirs, seed=opts.seed)
        corpus.generate_large(tree / LARGE_NAME, opts.large_size, seed=opts.seed)
        print("packing the squashfs image", file=sys.stderr)
        run(
            [
                "mksquashfs",
                str(tree),
                str(workdir / "tree.sqfs"),
                "-noI",
                "-noD",
                "-noF",
                "-noX",
                "-no-xattrs",
                "-no-progress",
                "-quiet",
            ]
        )
        print("ingesting into cafs", file=sys.stderr)
        env = {**os.environ, "CAFS_HOME": str(workdir / "home")}
        line = run([*CAFS, "castore", "ingest", str(tree)], env=env)
        (workdir / "digest").write_text(line.split()[2])
        stamp.write_text(wanted)
    digest = (workdir / "digest").read_text().strip()
    small = sorted(
        os.path.relpath(os.path.join(d, f), tree)
        for d, _, fs in os.walk(tree)
        for f in fs
        if f != LARGE_NAME
        and os.path.isfile(os.path.join(d, f))
        and not os.path.islink(os.path.join(d, f))
    )
    return Peers(workdir, digest), small, opts.large_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=corpus.DEFAULT_FILES)
    parser.add_argument("--dirs", type=int, default=corpus.DEFAULT_DIRS)
    parser.add_argument("--large-size", type=corpus.parse_size, default=corpus.DEFAULT_LARGE_SIZE)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=corpus.DEFAULT_SEED)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/cafs-bench-fs"))
    parser.add_argument("--output", type=Path, help="also write the report here")
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/fs.py needs root (drop_caches, readahead)", file=sys.stderr)
        return 2
    ensure_tools()
    peers, small, size = build(opts)
    results = Results()
    chosen = [p for p in PEERS if p in opts.peers.split(",")]
    for i in range(opts.runs):
        for peer in chosen:
            print(f"run {i + 1}/{opts.runs}: {peer}", file=sys.stderr)
            measure(peers, peer, small, size, opts.seed + i, results)
    text = report(results, opts, len(small), size)
    publish(text, opts.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

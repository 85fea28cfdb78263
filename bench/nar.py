"""NAR benchmark: ``cafs nar dump`` and ``nar import`` against ``nix-store --dump``/``--restore``.

One command builds two deterministic corpora (``corpus.py``) and measures, in
the same run, on the same disk, every figure ``--runs`` times (medians):

- ``large``: a directory holding one random file of ``--large-mib`` MiB;
- ``tree``: ``--files`` files of 0-16 KiB in ``--dirs`` directories (plus the
  generator's executables, duplicates and symlinks).

NAR render: ``nix-store --dump <tree on disk> > /dev/null`` against
``cafs nar dump <path> > /dev/null``, the path made by ``cafs import`` of the
same tree into an embedded store (``CAFS_HOME``) beforehand, not timed.
Warm: each command runs once untimed first, so the page cache holds the tree
and the store. Cold: ``sync; echo 3 > /proc/sys/vm/drop_caches`` before every
run (root only; skipped with a note otherwise), so each tool reads from disk,
cafs its Python modules included, as a user's first command would.

NAR ingest: ``nix-store --restore <fresh dir> < file.nar`` against
``cafs nar import file.nar --name <corpus>`` into a fresh ``CAFS_HOME``, the
NAR written by ``nix-store --dump`` once. Before every run the page cache is
dropped (as root), then the NAR and both programs are read again (warm): the
run writes into memory freed just before, not into guest memory the host has
never backed, which on this kind of VM costs several times more and would
penalise later runs. Each run's output is kept until all runs are done: on ext4
without a journal, creating files within a minute or so of deleting many is
several times slower (the allocator skips recently freed inodes one by one),
so deleting run N's tree before run N+1 would measure the deletion, not the
tool. For the same reason, do not start the benchmark right after deleting a
large tree on the same filesystem (a previous run's work directory included).
cafs makes what it stores durable (``syncfs``) before it exits, Nix leaves the
restored tree in the page cache, so a ``nix-store --restore`` + ``sync`` row is
reported too; the ratio against plain ``--restore`` is the headline.

Every command is a subprocess (the CLI a user runs, ``python -m cafs.cli``),
timed by wall clock; its CPU time comes from ``wait4``, its peak RSS from
``/usr/bin/time -f %M`` (n/a without GNU time). MB/s is
NAR bytes (10^6) per second; the ratio cafs ÷ Nix is of throughput, so 1.00 or
more meets the target "at least as fast as Nix". Checked, failing the
benchmark otherwise: both renders of a corpus have the same SHA-256; ``cafs
import`` and every ``cafs nar import`` print the store path Nix computes for
that NAR hash; the first restore of each tool dumps back to the same NAR.

    python bench/nar.py [--large-mib N --files N --dirs N --runs K --workdir DIR
                         --output FILE.json --keep --no-cold]

The work directory (default /var/tmp/cafs-bench-nar) is removed at the end
unless ``--keep``; a kept corpus is reused while its parameters match. Needs
``nix-store`` (installed with bench/setup-nix.sh or scripts/setup-nix.sh when
missing and running as root).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import corpus
from harness import (
    CAFS,
    DROP_CACHES,
    MB,
    MIB,
    BenchError,
    Machine,
    OwnedWorkdir,
    Record,
    Sample,
    Timings,
    add_corpus_options,
    cafs_env,
    command_failed,
    describe_machine,
    disk_of,
    drop_caches,
    failed,
    read_through,
    remove,
    run,
    source_state,
    table,
    table_row,
)

# Bump when the corpus or NAR files would come out differently, so a kept one is rebuilt.
CORPUS_FORMAT = 1
READ_BLOCK = 8 * MIB
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
REPO = Path(__file__).resolve().parent.parent
SETUP_NIX = [REPO / "scripts" / "setup-nix.sh", REPO / "bench" / "setup-nix.sh"]
CORPORA = ("large", "tree")
# (key, label) of the comparisons, in table order.
OPERATIONS = [
    ("render-warm", "NAR render, warm"),
    ("render-cold", "NAR render, cold"),
    ("render-warm-plain", "NAR render, warm, plain copies"),
    ("render-cold-plain", "NAR render, cold, plain copies"),
    ("ingest", "NAR ingest"),
    ("ingest-sync", "NAR ingest, Nix + `sync`"),
]


# -- running and timing ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessSample(Sample):
    """A sample of one process: wall time from its start to its exit, its CPU time."""

    max_rss_kib: int | None  # its peak resident set (None without GNU time)


def timed(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | int = subprocess.DEVNULL,
) -> ProcessSample:
    """Run ``cmd`` to completion; its wall time, CPU time (``wait4``) and peak RSS.

    The peak RSS comes from GNU time, not ``wait4``: a child of this Python process
    inherits its high-water mark across ``exec`` (Linux records the old mm's peak),
    so ``wait4`` would report at least this process's own size for every command.
    """
    with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile("r") as rss:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd] if GNU_TIME else list(cmd)
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, env=env, stdin=stdin, stdout=stdout, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            raise command_failed(cmd, proc.returncode, errors.read())
        lines = rss.read().split()
    max_rss = int(lines[-1]) if GNU_TIME and lines and lines[-1].isdigit() else None
    # wait4's times include the children the process reaped: GNU time's child, here.
    return ProcessSample(elapsed, usage.ru_utime + usage.ru_stime, max_rss)


def stream_sha256(
    cmd: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Size and SHA-256 (hex) of what ``cmd`` writes to stdout."""
    hasher = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        with proc.stdout:
            while block := proc.stdout.read(READ_BLOCK):
                hasher.update(block)
                size += len(block)
        if proc.wait() != 0:
            errors.seek(0)
            raise command_failed(cmd, proc.returncode, errors.read())
    return size, hasher.hexdigest()


# -- what is measured ----------------------------------------------------------------


@dataclass
class Row(Timings):
    """One command on one corpus, once per run."""

    corpus: str
    operation: str  # a key of OPERATIONS
    tool: str  # "nix" or "cafs"
    command: str
    nbytes: int  # NAR bytes
    samples: list[ProcessSample] = field(default_factory=list)

    @property
    def peak_rss_mib(self) -> float | None:
        known = [s.max_rss_kib for s in self.samples if s.max_rss_kib is not None]
        return max(known) / 1024 if known else None

    @property
    def cpu_s_per_gib(self) -> float:
        """Median CPU seconds per GiB of NAR."""
        return statistics.median(s.cpu_seconds for s in self.samples) / (self.nbytes / 2**30)


@dataclass
class Corpus:
    name: str  # also the directory's and the store path's name
    path: Path
    nar: Path
    description: str = ""
    nar_size: int = 0
    nar_sha256: str = ""  # hex
    store_path: str = ""  # what Nix computes for this NAR hash and name
    stats: dict[str, int] | None = None


@dataclass(frozen=True)
class Options:
    large_mib: int
    files: int
    dirs: int
    runs: int
    workdir: Path
    seed: int
    cold: bool
    keep: bool
    output: Path | None


class NarBench(OwnedWorkdir):
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.workdir = opts.workdir.absolute()
        self.corpora = {
            name: Corpus(name, self.workdir / name, self.workdir / f"{name}.nar")
            for name in CORPORA
        }
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.cold_note: str | None = None
        self.can_drop = False  # whether the page cache can be dropped (root)
        self.startup: float | None = None
        self.nix_version = ""
        self.source = source_state()
        self.source_changed = False

    # -- paths the benchmark owns ----------------------------------------------------

    def home(self, corpus_name: str, purpose: str) -> Path:
        return self.workdir / f"cafs-{purpose}-{corpus_name}"

    def run_outputs(self, corpus_name: str, number: int) -> tuple[Path, Path]:
        """Where run ``number`` restores (Nix) and imports (cafs) ``corpus_name``."""
        return (
            self.workdir / f"restore-{corpus_name}-{number}",
            self.home(corpus_name, f"ingest-{number}"),
        )

    def owned(self) -> list[Path]:
        """Everything the benchmark may have made in the work directory."""
        paths = [self.workdir / "corpus.json"]
        for c in self.corpora.values():
            paths += [c.path, c.nar, self.home(c.name, "render")]
        known = set(paths)
        if self.workdir.is_dir():  # the ingest outputs, of however many runs
            pattern = re.compile(rf"(restore|cafs-ingest)-({'|'.join(CORPORA)})-\d+")
            paths += [
                p
                for p in sorted(self.workdir.iterdir())
                if p not in known and pattern.fullmatch(p.name)
            ]
        return paths

    # -- setup -----------------------------------------------------------------------

    def ensure_nix(self) -> None:
        if shutil.which("nix-store") is None or shutil.which("nix-hash") is None:
            script = next((p for p in SETUP_NIX if p.is_file()), None)
            if script is None or os.geteuid() != 0:
                raise BenchError(
                    "nix-store is not on PATH; install it as root with "
                    + " or ".join(str(p.relative_to(REPO)) for p in SETUP_NIX)
                )
            print(f"nix-store not found: running {script}", file=sys.stderr, flush=True)
            proc = subprocess.run(["bash", str(script)], check=False)
            if proc.returncode != 0 or shutil.which("nix-store") is None:
                raise BenchError(f"{script} failed (exit {proc.returncode})")
        self.nix_version = run(["nix-store", "--version"]).strip()

    def check_cold(self) -> None:
        if os.geteuid() != 0:
            self.cold_note = "cold runs skipped: dropping the page cache needs root"
            return
        try:
            drop_caches()
        except OSError as exc:
            self.cold_note = f"cold runs skipped: cannot write {DROP_CACHES} ({exc.strerror})"
        else:
            self.can_drop = True
            if not self.opts.cold:
                self.cold_note = "cold runs skipped (--no-cold)"

    def build_corpora(self) -> None:
        """Generate the corpora and their NARs unless identical ones are kept here."""
        opts = self.opts
        params = {"format": CORPUS_FORMAT, "large_mib": opts.large_mib, "files": opts.files,
                  "dirs": opts.dirs, "seed": opts.seed}  # fmt: skip
        record = Record(self.workdir / "corpus.json", params)
        kept = record.kept()
        intact = all(c.path.is_dir() and c.nar.is_file() for c in self.corpora.values())
        if kept is not None and intact:
            print(f"reusing the corpora in {self.workdir}", file=sys.stderr, flush=True)
            self.corpora["tree"].stats = kept["tree"]
        else:
            for path in self.owned():
                remove(path)
            self.workdir.mkdir(parents=True, exist_ok=True)
            print(f"generating the corpora in {self.workdir} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            large = self.corpora["large"]
            large.path.mkdir()
            corpus.generate_large(
                large.path / "large.bin", self.opts.large_mib * MIB, seed=self.opts.seed
            )
            stats = corpus.generate_tree(
                self.corpora["tree"].path,
                self.opts.files,
                self.opts.dirs,
                max_file_size=16 * 1024,
                seed=self.opts.seed,
            )
            self.corpora["tree"].stats = asdict(stats)
            for c in self.corpora.values():
                with open(c.nar, "wb") as out:
                    timed(["nix-store", "--dump", c.path], stdout=out)
            os.sync()
            record.write(tree=asdict(stats))
            print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        s = self.corpora["tree"].stats
        assert s is not None
        mib = self.opts.large_mib
        self.corpora["large"].description = f"a directory holding one random file of {mib:,} MiB"
        self.corpora["tree"].description = (
            f"{s['files']:,} files of 0-16 KiB ({s['total_bytes'] / MB:,.1f} MB, "
            f"{s['duplicates']:,} duplicates, {s['executables']} executable) in "
            f"{s['dirs']:,} directories, {s['symlinks']} symlinks"
        )

    def check_space(self) -> None:
        """The ingest outputs of every run are kept until the end: they must fit."""
        nar_bytes = sum(c.nar.stat().st_size for c in self.corpora.values())
        # The render stores, and a restored tree plus a cafs store per run, each about
        # the NAR's size (random data does not compress), with a quarter to spare.
        needed = int(nar_bytes * (1 + 2 * self.opts.runs) * 1.25)
        free = shutil.disk_usage(self.workdir).free
        if free < needed:
            raise BenchError(
                f"{self.workdir} has {free / 1e9:.1f} GB free; the runs need about "
                f"{needed / 1e9:.1f} GB (fewer --runs or a smaller --large-mib)"
            )

    def expected_path(self, nar_sha256: str, name: str) -> str:
        base32 = run(["nix-hash", "--type", "sha256", "--to-base32", nar_sha256]).strip()
        fixed = ["nix-store", "--print-fixed-path", "--recursive", "sha256", base32, name]
        return run(fixed).strip()

    def prepare(self, c: Corpus) -> None:
        """Hash the NAR, ``cafs import`` the tree for rendering, and check both renders."""
        size, digest = stream_sha256(["cat", c.nar])
        c.nar_size, c.nar_sha256 = size, digest
        c.store_path = self.expected_path(digest, c.name)
        home = self.home(c.name, "render")
        remove(home)
        env = cafs_env(home)
        start = time.perf_counter()
        imported = run([*CAFS, "import", c.path], env).strip()
        print(
            f"{c.name}: cafs import {time.perf_counter() - start:.1f} s -> {imported}",
            file=sys.stderr,
            flush=True,
        )
        if imported != c.store_path:
            raise BenchError(f"cafs import {c.path} gave {imported}, Nix says {c.store_path}")
        renders = {
            "nix-store --dump": stream_sha256(["nix-store", "--dump", c.path]),
            "cafs nar dump": stream_sha256([*CAFS, "nar", "dump", c.store_path], env),
        }
        if self.has_large_files(c):
            # Plain copies of the large files, then a dump that reads them.
            plain_env = cafs_env(home, plain_copies=True)
            fill = [*CAFS, "nar", "dump", "--fill-plain-cache", c.store_path]
            renders["cafs nar dump --fill-plain-cache"] = stream_sha256(fill, plain_env)
            dump = [*CAFS, "nar", "dump", c.store_path]
            renders["cafs nar dump, plain copies"] = stream_sha256(dump, plain_env)
        if set(renders.values()) != {(size, digest)}:
            raise BenchError(
                f"FAILED: the NARs of {c.name} differ (bytes, sha256): {renders}; "
                f"the NAR file has {(size, digest)}"
            )

    def measure_startup(self) -> None:
        """The CLI's fixed cost (interpreter start and imports, warm)."""
        self.startup = statistics.median(timed([*CAFS, "--version"]).seconds for _ in range(3))

    # -- measurements ------------------------------------------------------------------

    def row(self, c: Corpus, operation: str, tool: str, command: str) -> Row:
        key = (c.name, operation, tool)
        if key not in self.rows:
            self.rows[key] = Row(c.name, operation, tool, command, c.nar_size)
        return self.rows[key]

    def log(self, c: Corpus, what: str, sample: ProcessSample) -> None:
        print(
            f"  {c.name:<6} {what:<34} {sample.seconds:8.2f} s "
            f"{c.nar_size / MB / sample.seconds:9.1f} MB/s",
            file=sys.stderr,
            flush=True,
        )

    def render_nix(self, c: Corpus, operation: str | None) -> ProcessSample:
        os.sync()
        if operation is not None and operation.startswith("render-cold"):
            drop_caches()
        sample = timed(["nix-store", "--dump", c.path])
        if operation is not None:
            command = f"`nix-store --dump {c.name} > /dev/null`"
            self.row(c, operation, "nix", command).samples.append(sample)
            self.log(c, f"{operation} nix-store --dump", sample)
        return sample

    @staticmethod
    def has_large_files(c: Corpus) -> bool:
        """Whether ``c`` holds files large enough for plain copies (cafs keeps none of less)."""
        return c.name == "large"

    def render_cafs(self, c: Corpus, operation: str | None, plain: bool = False) -> ProcessSample:
        plain = plain or (operation is not None and operation.endswith("-plain"))
        env = cafs_env(self.home(c.name, "render"), plain_copies=plain)
        os.sync()
        if operation is not None and operation.startswith("render-cold"):
            drop_caches()
        sample = timed([*CAFS, "nar", "dump", c.store_path], env=env)
        if operation is not None:
            command = f"`cafs nar dump {c.store_path[:20]}…-{c.name} > /dev/null`"
            self.row(c, operation, "cafs", command).samples.append(sample)
            self.log(c, f"{operation} cafs nar dump", sample)
        return sample

    def before_ingest(self, c: Corpus) -> None:
        """Free the page cache, then warm what the tools read: the NAR and the programs.

        Earlier runs' outputs stay on disk (see ``run``) but their page cache is freed, so
        every run writes into memory the machine has handed out before: on this kind of
        VM, the first write to guest memory the host has not backed yet costs several
        times a normal one (1 GiB restores measured 0.5 s into reused memory, 3.5 s
        into fresh), which would otherwise penalise whichever run comes later.
        """
        os.sync()
        if self.can_drop:
            drop_caches()
            timed([*CAFS, "--version"])
            timed(["nix-store", "--version"])
        read_through(c.nar)
        os.sync()

    def ingest_nix(self, c: Corpus, number: int) -> None:
        dest, _ = self.run_outputs(c.name, number)
        remove(dest)
        self.before_ingest(c)
        with open(c.nar, "rb") as nar_file:
            sample = timed(["nix-store", "--restore", dest], stdin=nar_file)
        start = time.perf_counter()
        os.sync()
        flushed = time.perf_counter() - start
        command = f"`nix-store --restore DIR < {c.nar.name}`"
        self.row(c, "ingest", "nix", command).samples.append(sample)
        with_sync = ProcessSample(sample.seconds + flushed, sample.cpu_seconds, sample.max_rss_kib)
        command = f"`nix-store --restore DIR < {c.nar.name}; sync`"
        self.row(c, "ingest-sync", "nix", command).samples.append(with_sync)
        self.log(c, "ingest nix-store --restore", sample)
        self.log(c, "ingest nix-store --restore + sync", with_sync)
        if number == 0:
            restored = stream_sha256(["nix-store", "--dump", dest])
            if restored != (c.nar_size, c.nar_sha256):
                raise BenchError(f"FAILED: {dest} does not dump back to {c.nar.name}")

    def ingest_cafs(self, c: Corpus, number: int) -> None:
        _, home = self.run_outputs(c.name, number)
        remove(home)
        env = cafs_env(home)
        self.before_ingest(c)
        with tempfile.TemporaryFile() as out:
            cmd = [*CAFS, "nar", "import", str(c.nar), "--name", c.name]
            sample = timed(cmd, env=env, stdout=out)
            out.seek(0)
            printed = out.read().decode().strip()
        if printed != c.store_path:
            raise BenchError(f"cafs nar import {c.nar} printed {printed!r}, not {c.store_path}")
        command = f"`cafs nar import {c.nar.name} --name {c.name}`"
        for operation in ("ingest", "ingest-sync"):
            self.row(c, operation, "cafs", command).samples.append(sample)
        self.log(c, "ingest cafs nar import", sample)
        if number == 0:
            dumped = stream_sha256([*CAFS, "nar", "dump", c.store_path], env)
            if dumped != (c.nar_size, c.nar_sha256):
                raise BenchError(f"FAILED: cafs nar dump after nar import differs: {dumped}")

    # -- driver ------------------------------------------------------------------------

    def run(self) -> None:
        self.ensure_nix()
        self.check_cold()
        if self.cold_note:
            print(self.cold_note, file=sys.stderr, flush=True)
        self.build_corpora()
        self.check_space()
        corpora = list(self.corpora.values())
        for c in corpora:
            self.prepare(c)
        self.measure_startup()
        runs = self.opts.runs
        try:
            print("NAR render, warm", file=sys.stderr, flush=True)
            for c in corpora:
                self.render_nix(c, None)  # untimed: fills the page cache
                self.render_cafs(c, None)
                if self.has_large_files(c):
                    self.render_cafs(c, None, plain=True)
                warm = ["render-warm"] + (["render-warm-plain"] if self.has_large_files(c) else [])
                for _ in range(runs):
                    for operation in warm:
                        self.render_nix(c, operation)
                        self.render_cafs(c, operation)
            if self.cold_note is None:
                print("NAR render, cold", file=sys.stderr, flush=True)
                for c in corpora:
                    cold = ["render-cold"]
                    cold += ["render-cold-plain"] if self.has_large_files(c) else []
                    for _ in range(runs):
                        for operation in cold:
                            self.render_nix(c, operation)
                            self.render_cafs(c, operation)
            print("NAR ingest", file=sys.stderr, flush=True)
            timed([*CAFS, "--version"])  # the interpreter and modules back in the cache
            # Every run writes to its own directory, all deleted only at the end: on ext4
            # without a journal (as here), creating files soon after deleting many scans
            # past each recently freed inode (recently_deleted()), so a restore right
            # after the previous run's rm -rf measured 2-5 times slower, growing by run.
            for c in corpora:
                for number in range(runs):
                    self.ingest_nix(c, number)
                    self.ingest_cafs(c, number)
        finally:
            for c in corpora:
                for number in range(runs):
                    for path in self.run_outputs(c.name, number):
                        remove(path)
        self.source_changed = source_state() != self.source


# -- reporting -------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def report(bench: NarBench, command: str, machine: Machine) -> str:
    opts = bench.opts
    out: list[str] = []
    add = out.append
    add(f"Command: `{command}`")
    add("")
    add(
        f"Machine: {machine.hardware}; work directory on {disk_of(machine)}. "
        f"Python {machine.python}; {bench.nix_version}; cafs measured: {bench.source}."
    )
    if bench.source_changed:
        add("")
        add("WARNING: the cafs sources changed while the benchmark ran; rows may mix versions.")
    add("")
    add(
        f"Medians of {opts.runs} runs; MB/s = NAR bytes (10^6) per second of wall time, "
        "process start to exit. Ratio = cafs throughput ÷ Nix throughput (≥ 1.00 meets "
        '"at least as fast as Nix"). Render output goes to /dev/null; warm = page cache '
        "hot (one untimed run first), cold = `sync; echo 3 > /proc/sys/vm/drop_caches` "
        "before every run. Ingest reads a page-cache-warm NAR made by `nix-store --dump`; "
        "cafs imports into a fresh `CAFS_HOME` and syncs before it exits, Nix restores "
        "into a fresh directory and does not (hence the `+ sync` row); every run's output "
        "is kept until the last run, so no run follows a mass deletion, and the page cache "
        "is dropped (then the NAR and both programs read again) before each ingest run, "
        "so every run writes into reused memory. CPU = user + system "
        "time ÷ wall time; RSS = peak resident set of the process (`/usr/bin/time -f %M`, "
        "max over runs)."
    )
    if bench.cold_note:
        add("")
        add(f"Note: {bench.cold_note}.")
    if bench.startup is not None:
        add("")
        add(
            f"`cafs --version` (interpreter start and imports, warm) takes "
            f"{bench.startup:.2f} s; it is part of every cafs figure."
        )
    for c in bench.corpora.values():
        add("")
        add(
            f"### {c.name}: {c.description}; NAR {c.nar_size / MB:,.1f} MB "
            f"(sha256 {c.nar_sha256[:16]}…)"
        )
        add("")
        header = ["Measurement", "Nix s", "Nix MB/s", "cafs s", "cafs MB/s", "cafs ÷ Nix",
                  "Target", "Nix CPU", "cafs CPU", "Nix CPU s/GiB", "cafs CPU s/GiB",
                  "Nix RSS MiB", "cafs RSS MiB"]  # fmt: skip
        out += table(header, align="lrrrrrlrrrrrr")
        for operation, label in OPERATIONS:
            nix = bench.rows.get((c.name, operation, "nix"))
            cafs = bench.rows.get((c.name, operation, "cafs"))
            if nix is None or cafs is None:
                continue
            ratio = nix.seconds / cafs.seconds
            both = (nix, cafs)
            cells = [label, *(f for r in both for f in (f"{r.seconds:.2f}", f"{r.mb_per_s:,.1f}"))]
            cells += [f"{ratio:.2f}", "met" if ratio >= 1 else "NOT met"]
            cells += [f"{r.cpu_percent:.0f}%" for r in both]
            cells += [f"{r.cpu_s_per_gib:.2f}" for r in both] + [_mib(r.peak_rss_mib) for r in both]
            add(table_row(cells))
    add("")
    add("All runs (seconds):")
    add("")
    out += table(["Corpus", "Measurement", "Command", "Runs (s)"], align="llll")
    labels = dict(OPERATIONS)
    for row in bench.rows.values():
        if row.operation == "ingest-sync" and row.tool == "cafs":
            continue  # the same samples as the ingest row
        runs = ", ".join(f"{s.seconds:.2f}" for s in row.samples)
        add(table_row([row.corpus, labels[row.operation], row.command, runs]))
    add("")
    add(
        "Checked: both renders of each corpus have the NAR file's SHA-256; `cafs import` and "
        "every `cafs nar import` printed the store path Nix computes for it; the first "
        "restore of each tool dumps back to the same NAR."
    )
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Measure cafs nar dump/import against nix-store --dump/--restore."
    )
    parser.add_argument("--large-mib", type=int, default=1024, help="size of the large file")
    add_corpus_options(parser, large_size=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/cafs-bench-nar"))
    parser.add_argument(
        "--no-cold", dest="cold", action="store_false", help="skip the cold render runs"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--output", type=Path, help="write every raw timing here as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.large_mib < 1 or args.files < 1:
        parser.error("--runs, --large-mib and --files must be at least 1")
    return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    args = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "bench/nar.py", *args])
    bench = NarBench(opts)
    try:
        bench.check_workdir()
        try:
            bench.run()
            machine = describe_machine(bench.workdir, CAFS, True)
        finally:
            if not opts.keep:
                bench.cleanup()
    except BenchError as exc:
        return failed(exc)
    text = report(bench, command, machine)
    print(text, end="")
    if opts.output is not None:
        results = {
            "options": {k: str(v) for k, v in asdict(opts).items()},
            "machine": {**asdict(machine), "disk": disk_of(machine)},
            "nix": bench.nix_version,
            "cafs": bench.source,
            "cafs_startup_seconds": bench.startup,
            "cold_note": bench.cold_note,
            "corpora": {name: asdict(c) for name, c in bench.corpora.items()},
            "rows": [asdict(row) for row in bench.rows.values()],
            "report": text,
        }
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

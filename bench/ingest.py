"""Ingest benchmark: ``cafs castore ingest`` against ``nix-store --add`` and disk floors.

One command builds a deterministic corpus (see ``corpus.py``) once, then runs
every measurement ``--runs`` times and reports medians, all in the same
process so the references are measured on the same machine, disk and minute
as cafs:

- ``cafs castore ingest`` (the real CLI, as a subprocess) of the tree and of
  the large file, each into a fresh embedded store (fresh ``CAFS_HOME``);
- ``nix-store --add`` of both (the store path is deleted again afterwards so
  every run does the work), alone and followed by ``sync``: cafs makes what
  it stores durable before it exits, Nix leaves its copy in the page cache;
- ``tar -cf - … | wc -c`` as the cold disk-reading floor. Not ``tar -cf
  /dev/null``: GNU tar notices an archive on /dev/null and skips reading file
  data. ``wc -c`` also proves every byte went through; the pipe is 1 MiB;
- ``cp -a`` + ``sync -f`` of the tree and ``dd … conv=fsync`` of the large
  file as the durable disk-writing floors.

The page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``,
needs root) before every measurement, so each tool reads its input from disk.
After each cafs ingest, ``cafs castore ls -r`` must list exactly the tree's
files, directories and symlinks, and the large file's digest must be the
BLAKE3 of its bytes; the benchmark fails loudly otherwise.

    python bench/ingest.py [--files N --dirs N --large-size SIZE --runs K --workdir DIR]

The corpus is kept in the work directory and reused while its parameters
match (``--clean`` removes everything at the end).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import corpus
from harness import (
    DROP_CACHES,
    MB,
    BenchError,
    Machine,
    OwnedWorkdir,
    Record,
    Sample,
    Stopwatch,
    Timings,
    add_corpus_options,
    cafs_env,
    command_failed,
    describe_machine,
    drop_caches,
    failed,
    remove,
    run,
    source_state,
    table,
    table_row,
    times,
)

# Bump when corpus.py changes its output, so a kept corpus is rebuilt.
CORPUS_FORMAT = 1
LARGE_TARGET_MB_S = 500
TAR_BLOCKING = "2048"  # 1 MiB records: tar's own buffering must not be the bottleneck
PIPE_SIZE = 1 << 20


# -- running -----------------------------------------------------------------------------


def _pipe_size() -> int:
    try:
        return min(PIPE_SIZE, int(Path("/proc/sys/fs/pipe-max-size").read_text()))
    except (OSError, ValueError):
        return -1  # the system default


def run_piped(first: Sequence[str], second: Sequence[str]) -> str:
    """``first | second``; both must succeed (a shell would hide the first one's status).

    The pipe is enlarged to 1 MiB: through the default 64 KiB pipe, moving 1 GiB
    costs seconds of context switches on a small VM, and the "floor" would measure
    the pipe rather than the disk.
    """
    with tempfile.TemporaryFile() as errors:
        producer = subprocess.Popen(
            first, stdout=subprocess.PIPE, stderr=errors, pipesize=_pipe_size()
        )
        assert producer.stdout is not None
        consumer = subprocess.run(
            second, stdin=producer.stdout, capture_output=True, text=True, check=False
        )
        producer.stdout.close()
        status = producer.wait()
        if status != 0:
            errors.seek(0)
            raise command_failed(first, status, errors.read())
    if consumer.returncode != 0:
        raise command_failed(second, consumer.returncode, consumer.stderr)
    return consumer.stdout


# -- what is measured ----------------------------------------------------------------


@dataclass
class Measurement(Timings):
    """One row of the table: the same command, once per run."""

    workload: str  # "tree" or "large"
    label: str
    files: int
    nbytes: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


# -- the benchmark -------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    files: int
    dirs: int
    large_size: int
    runs: int
    workdir: Path
    seed: int
    nix: bool
    cold: bool
    clean: bool
    output: Path | None


class IngestBench(OwnedWorkdir):
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.workdir = opts.workdir.absolute()
        self.tree = self.workdir / "tree"
        self.large = self.workdir / "large.bin"
        self.cafs_home = self.workdir / "cafs-home"
        self.copy = self.workdir / "copy"
        cli = Path(sys.executable).parent / "cafs"
        self.cafs = [str(cli)] if cli.exists() else [sys.executable, "-m", "cafs.cli"]
        self.stats: corpus.TreeStats | None = None
        self.nix_skip_reason: str | None = None
        self.nix_paths: dict[str, str] = {}  # corpus path -> expected store path
        self.nix_added: set[str] = set()
        self.digests: dict[str, set[str]] = {"tree": set(), "large": set()}
        self.store_size: tuple[int, int] | None = None  # objects, bytes (first tree run)
        self.startup: float | None = None
        self.rows: dict[str, Measurement] = {}
        self.source = source_state()
        self.source_changed = False

    # -- setup ---------------------------------------------------------------------

    def build_corpus(self) -> None:
        """Generate the corpus unless an identical one is already in the work directory."""
        opts = self.opts
        params = {"format": CORPUS_FORMAT, "files": opts.files, "dirs": opts.dirs,
                  "large_size": opts.large_size, "seed": opts.seed}  # fmt: skip
        record = Record(self.workdir / "corpus.json", params)
        kept = record.kept()
        intact = (
            self.tree.is_dir()
            and self.large.is_file()
            and self.large.stat().st_size == self.opts.large_size
        )
        if kept is not None and intact:
            self.stats = corpus.TreeStats(**kept["tree"])
            print(f"reusing the corpus in {self.workdir}", flush=True)
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        remove(record.path)
        remove(self.tree)
        remove(self.large)
        start = time.perf_counter()
        print(f"generating the corpus in {self.workdir} ...", flush=True)
        self.stats = corpus.generate_tree(
            self.tree, self.opts.files, self.opts.dirs, seed=self.opts.seed
        )
        corpus.generate_large(self.large, self.opts.large_size, seed=self.opts.seed)
        os.sync()
        record.write(tree=asdict(self.stats))
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)

    def check_cold(self) -> None:
        if not self.opts.cold:
            return
        try:
            drop_caches()
        except OSError as exc:
            raise BenchError(
                f"cannot drop the page cache ({DROP_CACHES}: {exc.strerror}); "
                "run as root, or pass --warm to measure with warm caches"
            ) from exc

    def cold(self) -> None:
        """Flush dirty data, then (unless --warm) empty the page cache."""
        if self.opts.cold:
            drop_caches()
        else:
            os.sync()

    def check_nix(self) -> None:
        """Decide whether the Nix rows can be measured; say why not if they cannot."""
        if not self.opts.nix:
            self.nix_skip_reason = "disabled with --no-nix"
            return
        for tool in ("nix-store", "nix-hash"):
            if shutil.which(tool) is None:
                self.nix_skip_reason = f"{tool} not found on PATH (see scripts/setup-nix.sh)"
                return
        probe = self.workdir / "nix-probe"
        remove(probe)
        probe.mkdir()
        (probe / "file").write_text(f"cafs ingest benchmark probe {time.time_ns()}\n")
        try:
            added = run(["nix-store", "--add", probe]).strip()
            run(["nix-store", "--delete", added])
        except BenchError as exc:
            self.nix_skip_reason = f"nix-store --add does not work here: {exc}"
            return
        finally:
            remove(probe)
        for path in (self.tree, self.large):
            nar_hash = run(["nix-hash", "--type", "sha256", "--base32", path]).strip()
            fixed = ["nix-store", "--print-fixed-path", "--recursive", "sha256"]
            self.nix_paths[str(path)] = run([*fixed, nar_hash, path.name]).strip()

    def measure_startup(self) -> None:
        """The CLI's fixed cost (interpreter and imports), warm, to read small timings by."""
        times = []
        for _ in range(3):
            with Stopwatch() as watch:
                run([*self.cafs, "--version"])
            times.append(watch.sample.seconds)
        self.startup = statistics.median(times)

    # -- measurements --------------------------------------------------------------

    def row(self, key: str, workload: str, label: str) -> Measurement:
        if key not in self.rows:
            assert self.stats is not None
            if workload == "tree":
                files, nbytes = self.stats.files, self.stats.total_bytes
            else:
                files, nbytes = 1, self.opts.large_size
            self.rows[key] = Measurement(workload, label, files, nbytes)
        return self.rows[key]

    def tar_read(self, workload: str, path: Path) -> Sample:
        self.cold()
        tar = ["tar", "-b", TAR_BLOCKING, "-cf", "-", "-C", str(path.parent), path.name]
        with Stopwatch() as watch:
            archived = int(run_piped(tar, ["wc", "-c"]))
        row = self.row(f"{workload}-tar", workload, "`tar -cf -` into `wc -c` (cold read floor)")
        if archived < row.nbytes:
            raise BenchError(
                f"tar archived {archived} bytes, fewer than the {row.nbytes} in {path}"
            )
        row.samples.append(watch.sample)
        return watch.sample

    def tree_copy(self) -> Sample:
        remove(self.copy)
        self.cold()
        with Stopwatch() as watch:
            run(["cp", "-a", self.tree, self.copy])
            run(["sync", "-f", self.copy])
        label = "`cp -a` + `sync -f` (durable write floor)"
        self.row("tree-cp", "tree", label).samples.append(watch.sample)
        remove(self.copy)
        return watch.sample

    def large_dd(self) -> Sample:
        remove(self.copy)
        self.cold()
        with Stopwatch() as watch:
            run(["dd", f"if={self.large}", f"of={self.copy}", "bs=1M", "conv=fsync", "status=none"])
        label = "`dd bs=1M conv=fsync` (durable write floor)"
        self.row("large-dd", "large", label).samples.append(watch.sample)
        remove(self.copy)
        return watch.sample

    def cafs_ingest(self, workload: str, path: Path, first_run: bool) -> Sample:
        remove(self.cafs_home)
        env = cafs_env(self.cafs_home)
        self.cold()
        with Stopwatch() as watch:
            out = run([*self.cafs, "castore", "ingest", path], env)
        self.row(f"{workload}-cafs", workload, "`cafs castore ingest`").samples.append(watch.sample)
        kind = "directory" if workload == "tree" else "file"
        match = re.search(rf": {kind} (\S+) size (\d+)", out)
        if match is None:
            raise BenchError(f"unexpected output from cafs castore ingest {path}: {out!r}")
        self.digests[workload].add(match.group(1))
        if workload == "tree":
            self.verify_listing(match.group(1), env)
            if first_run:
                self.store_size = self.measure_store()
        elif int(match.group(2)) != self.opts.large_size:
            raise BenchError(f"cafs ingested {match.group(2)} bytes of {path}, not all of it")
        remove(self.cafs_home)
        return watch.sample

    def verify_listing(self, digest: str, env: dict[str, str]) -> None:
        """``cafs castore ls -r`` must show every file, directory and symlink of the tree."""
        assert self.stats is not None
        counts = {"file": 0, "executable": 0, "directory": 0, "symlink": 0}
        for line in run([*self.cafs, "castore", "ls", "-r", digest], env).splitlines():
            kind = line.split(maxsplit=1)[0]
            if kind not in counts:
                raise BenchError(f"unexpected line in cafs castore ls -r: {line!r}")
            counts[kind] += 1
        found = (
            counts["file"] + counts["executable"],
            counts["executable"],
            counts["directory"],
            counts["symlink"],
        )
        s = self.stats
        wanted = (s.files, s.executables, s.dirs, s.symlinks)
        if found != wanted:
            raise BenchError(
                "FAILED: cafs castore ls -r lists (files, executables, directories, symlinks) = "
                f"{found}, the tree has {wanted}"
            )

    def measure_store(self) -> tuple[int, int]:
        objects = size = 0
        for dirpath, _, names in os.walk(self.cafs_home / "objects"):
            for name in names:
                objects += 1
                size += os.lstat(os.path.join(dirpath, name)).st_size
        size += os.path.getsize(self.cafs_home / "directories.sqlite")
        return objects, size

    def nix_add(self, workload: str, path: Path) -> Sample:
        expected = self.nix_paths[str(path)]
        if os.path.lexists(expected):  # left by an interrupted run: adding would be free
            run(["nix-store", "--delete", expected])
        self.cold()
        with Stopwatch() as watch:
            added = run(["nix-store", "--add", path]).strip()
        self.nix_added.add(added)
        with Stopwatch() as flush:
            os.sync()
        if added != expected:
            raise BenchError(f"nix-store --add {path} gave {added}, expected {expected}")
        self.row(f"{workload}-nix", workload, "`nix-store --add`").samples.append(watch.sample)
        both = Sample(
            watch.sample.seconds + flush.sample.seconds,
            watch.sample.cpu_seconds + flush.sample.cpu_seconds,
        )
        label = "`nix-store --add` + `sync`"
        self.row(f"{workload}-nix-sync", workload, label).samples.append(both)
        self.delete_nix(added)
        return watch.sample

    def delete_nix(self, store_path: str) -> None:
        run(["nix-store", "--delete", store_path])
        if os.path.lexists(store_path):
            raise BenchError(f"{store_path} still exists after nix-store --delete")
        self.nix_added.discard(store_path)

    def check_large_digest(self) -> None:
        """The large file's digest from cafs must be BLAKE3 of its bytes (computed here)."""
        import blake3  # cafs's own dependency; only needed for this check

        from cafs.castore.digest import Digest

        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        with open(self.large, "rb") as f:
            while block := f.read(64 << 20):
                hasher.update(block)
        wanted = str(Digest(hasher.digest()))
        if self.digests["large"] != {wanted}:
            raise BenchError(
                f"cafs gave digests {self.digests['large']} for {self.large}, BLAKE3 is {wanted}"
            )

    # -- driver ----------------------------------------------------------------------

    def run(self) -> None:
        self.check_workdir()
        self.check_cold()
        self.build_corpus()
        self.check_nix()
        if self.nix_skip_reason:
            print(f"skipping the Nix rows: {self.nix_skip_reason}", flush=True)
        self.measure_startup()
        steps: list[tuple[str, Callable[[bool], Sample]]] = [
            ("tree: tar", lambda _: self.tar_read("tree", self.tree)),
            ("tree: cp -a + sync", lambda _: self.tree_copy()),
            ("tree: cafs", lambda first: self.cafs_ingest("tree", self.tree, first)),
            ("large: tar", lambda _: self.tar_read("large", self.large)),
            ("large: dd", lambda _: self.large_dd()),
            ("large: cafs", lambda first: self.cafs_ingest("large", self.large, first)),
        ]
        if not self.nix_skip_reason:
            steps.insert(3, ("tree: nix-store --add", lambda _: self.nix_add("tree", self.tree)))
            steps.append(("large: nix-store --add", lambda _: self.nix_add("large", self.large)))
        try:
            for number in range(self.opts.runs):
                print(f"run {number + 1}/{self.opts.runs}", flush=True)
                for name, step in steps:
                    sample = step(number == 0)
                    print(f"  {name:<24} {sample.seconds:8.2f} s", flush=True)
        finally:
            for store_path in sorted(self.nix_added):
                run(["nix-store", "--delete", store_path])
            remove(self.cafs_home)
            remove(self.copy)
        self.source_changed = source_state() != self.source
        if len(self.digests["tree"]) != 1:
            raise BenchError(f"the tree's digest differed between runs: {self.digests['tree']}")
        self.check_large_digest()

    def owned(self) -> list[Path]:
        """Everything the benchmark may create in the work directory."""
        names = ("corpus.json", "ingest.json", "nix-probe")
        extra = [self.workdir / n for n in names]
        return [self.tree, self.large, self.cafs_home, self.copy, *extra]


# -- reporting -----------------------------------------------------------------------


def _ratio(bench: IngestBench, cafs_key: str, ref_key: str) -> str:
    """cafs throughput ÷ reference throughput (= reference time ÷ cafs time), or n/a."""
    cafs, ref = bench.rows.get(cafs_key), bench.rows.get(ref_key)
    if cafs is None or ref is None:
        return "n/a"
    return times(ref.seconds / cafs.seconds)


def report(bench: IngestBench, command: str, machine: Machine) -> str:
    """The results as a markdown section (also readable as plain text)."""
    assert bench.stats is not None
    s, opts = bench.stats, bench.opts
    out: list[str] = []
    add = out.append
    add(f"Command: `{command}`")
    add("")
    nix_fs = f"; Nix store on {machine.nix_store_fs}" if machine.nix_store_fs else ""
    add(
        f"Machine: {machine.hardware}; work directory on {machine.workdir_fs}{nix_fs}. "
        f"Python {machine.python}; " + "; ".join(machine.tools.values()) + "."
    )
    add("")
    add(f"cafs measured: {bench.source}.")
    if bench.source_changed:
        add("WARNING: the cafs sources changed while the benchmark ran; rows may mix versions.")
    add("")
    add(
        f"Corpus (seed {opts.seed}): a tree of {s.files:,} files ({s.executables} executable, "
        f"{s.duplicates:,} duplicates of other files), {s.dirs:,} directories and "
        f"{s.symlinks} symlinks, {s.total_bytes / MB:,.1f} MB of file data "
        f"({s.unique_bytes / MB:,.1f} MB distinct); one random file of "
        f"{opts.large_size / MB:,.1f} MB."
    )
    add("")
    cache = (
        "The page cache was dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every "
        "measurement, so every tool read its input from disk."
        if opts.cold
        else "Caches were NOT dropped (--warm): inputs may have been read from memory."
    )
    add(
        f"{cache} Each figure is the median of {opts.runs} runs; MB = 10^6 bytes; files/s "
        "and MB/s count every regular file of the tree, duplicates included. CPU is the "
        "user + system time of the measured processes as a share of one core."
    )
    add("")
    header = ["Input", "Command", "Median s", "Files/s", "MB/s", "CPU", "Runs (s)"]
    out += table(header, align="llrrrrl")
    for m in bench.rows.values():
        files_s = f"{m.files_per_s:,.0f}" if m.workload == "tree" else ""
        runs = ", ".join(f"{x.seconds:.2f}" for x in m.samples)
        cells = [m.workload, m.label, f"{m.seconds:.2f}", files_s, f"{m.mb_per_s:,.1f}"]
        add(table_row([*cells, f"{m.cpu_percent:.0f}%", runs]))
    add("")
    if bench.nix_skip_reason:
        add(f"Nix rows skipped: {bench.nix_skip_reason}.")
        add("")
    add("Ratios (cafs throughput ÷ reference throughput; above 1 means cafs is faster):")
    add("")
    references = ["`nix-store --add`", "`nix-store --add` + `sync`", "read floor"]
    out += table(["Input", *(f"vs {ref}" for ref in references), "vs durable write floor"])
    for workload, floor in (("tree", "tree-cp"), ("large", "large-dd")):
        refs = [f"{workload}-{ref}" for ref in ("nix", "nix-sync", "tar")] + [floor]
        add(table_row([workload, *(_ratio(bench, f"{workload}-cafs", ref) for ref in refs)]))
    add("")
    large = bench.rows["large-cafs"]
    dd = bench.rows["large-dd"]
    met = "met" if large.mb_per_s >= LARGE_TARGET_MB_S else "NOT met"
    add(
        f"- Target large-file ingest ≥ {LARGE_TARGET_MB_S} MB/s: {met} "
        f"({large.mb_per_s:,.1f} MB/s; durable write floor `dd conv=fsync` "
        f"{dd.mb_per_s:,.1f} MB/s, cold read floor {bench.rows['large-tar'].mb_per_s:,.1f} MB/s)."
    )
    tree = bench.rows["tree-cafs"]
    nix = bench.rows.get("tree-nix")
    if nix is None:
        add("- Target tree ingest at least as fast as `nix-store --add`: not measured (no Nix).")
    else:
        met = "met" if tree.seconds <= nix.seconds else "NOT met"
        add(
            f"- Target tree ingest at least as fast as `nix-store --add`: {met} "
            f"({tree.files_per_s:,.0f} files/s vs {nix.files_per_s:,.0f} files/s)."
        )
    add("")
    if bench.store_size is not None:
        objects, size = bench.store_size
        add(
            f"The tree's cafs store held {objects:,} object files, {size / MB:,.1f} MB "
            f"(apparent size, SQLite directory database included)."
        )
    if bench.startup is not None:
        add(f"`cafs --version` (interpreter start and imports, warm) takes {bench.startup:.2f} s.")
    add(
        "Checked: `cafs castore ls -r` listed every file, executable, directory and symlink; "
        "the tree's root digest was the same in every run; the large file's digest is the "
        "BLAKE3 of its bytes"
        + ("; `nix-store --add` gave the expected fixed-output paths." if bench.nix_paths else ".")
    )
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Measure cafs castore ingest against nix-store --add, tar and dd."
    )
    add_corpus_options(parser)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "cafs-bench-ingest",
        help="corpus, stores and copies go here (default: $TMPDIR/cafs-bench-ingest)",
    )
    parser.add_argument("--no-nix", dest="nix", action="store_false", help="skip nix-store")
    parser.add_argument(
        "--warm", dest="cold", action="store_false", help="do not drop the page cache"
    )
    parser.add_argument("--output", type=Path, help="write the markdown report here too")
    parser.add_argument("--clean", action="store_true", help="delete the work directory after")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    bench = IngestBench(opts)
    args = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "bench/ingest.py", *args])
    try:
        bench.run()
        machine = describe_machine(bench.workdir, bench.cafs, bench.nix_skip_reason is None)
    except BenchError as exc:
        return failed(exc)
    finally:
        if opts.clean:
            bench.cleanup()
    text = report(bench, command, machine)
    print()
    print(text, end="")
    results = {
        "options": {k: str(v) for k, v in asdict(opts).items()},
        "machine": asdict(machine),
        "rows": {k: asdict(m) for k, m in bench.rows.items()},
        "report": text,
    }
    # Raw samples next to the report, or in the work directory (unless it is cleaned away).
    if opts.output is not None:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(text)
        opts.output.with_suffix(".json").write_text(json.dumps(results, indent=2))
    elif not opts.clean:
        (bench.workdir / "ingest.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

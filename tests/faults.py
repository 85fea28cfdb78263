"""Fault trials: a cafs command killed with SIGKILL at a random moment, then the store checked.

A trial runs one writing command (``castore ingest``, ``import``, ``nar
import``, ``copy`` or ``gc``) on a store, kills it after a random delay within
the time the command takes, and then asks ``cafs verify`` whether everything
stored is sound and no PathInfo names missing content. It then runs the same
command to completion, which must succeed: a killed writer leaves nothing in
the way of the next. ``make test`` runs a few trials; ``bench/faults.py``
runs hundreds and reports the figures.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.process import CAFS, cafs, store_env

OPERATIONS = ("castore-ingest", "import", "nar-import", "copy", "gc")


@dataclass
class Workload:
    """What each operation works on: trees, a NAR, a closure file (for copy)."""

    trees: list[Path]
    nar: Path
    closure: Path | None = None

    def command(self, operation: str) -> list[str]:
        if operation == "castore-ingest":
            return ["castore", "ingest", *map(str, self.trees)]
        if operation == "import":
            return ["import", *map(str, self.trees)]
        if operation == "nar-import":
            return ["nar", "import", str(self.nar), "--name", "faulted"]
        if operation == "copy":
            if self.closure is None:
                raise ValueError("copy needs a closure file of paths in /nix/store")
            return ["copy", str(self.closure)]
        if operation == "gc":
            return ["gc", "--grace", "0"]
        raise ValueError(f"unknown operation {operation!r}")


def make_workload(root: Path, seed: int, files: int = 300, big: int = 6 << 20) -> Workload:
    """Trees of small files and one large file, and a NAR of one tree (made by cafs itself)."""
    rng = random.Random(seed)
    trees = []
    for t in range(2):
        tree = root / f"tree{seed}-{t}"
        for i in range(files):
            folder = tree / f"d{i % 17}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i}").write_bytes(rng.randbytes(rng.randrange(0, 6000)))
        (tree / "large").write_bytes(rng.randbytes(big))
        trees.append(tree)
    home = root / f"nar-maker-{seed}"
    path = cafs("import", str(trees[0]), home=home).stdout.strip()
    nar = root / f"tree{seed}.nar"
    with open(nar, "wb") as out:
        subprocess.run([*CAFS, "nar", "dump", path], env=store_env(home), stdout=out, check=True)
    return Workload(trees, nar)


@dataclass
class TrialResult:
    operation: str
    delay: float
    killed: bool  # False: the command had already finished
    verify_ok: bool
    rerun_ok: bool
    problems: str = ""
    verify_seconds: float = 0.0


@dataclass
class Trials:
    results: list[TrialResult] = field(default_factory=list)

    def failures(self) -> list[TrialResult]:
        return [r for r in self.results if not (r.verify_ok and r.rerun_ok)]


def prepare(operation: str, workload: Workload, home: Path) -> None:
    """Put into a fresh store what ``operation`` needs: for gc, live and dead content."""
    if operation == "gc":
        cafs("import", str(workload.trees[0]), home=home)
        cafs("castore", "ingest", str(workload.trees[1]), home=home)


def timed(operation: str, workload: Workload, home: Path) -> float:
    """How long ``operation`` takes to run to completion on a fresh store."""
    prepare(operation, workload, home)
    started = time.monotonic()
    cafs(*workload.command(operation), home=home)
    return time.monotonic() - started


def trial(
    operation: str, workload: Workload, home: Path, span: float, rng: random.Random
) -> TrialResult:
    """On a fresh store, start ``operation``, SIGKILL it after a random delay in [0, span),
    then check the store and run the operation again to completion."""
    prepare(operation, workload, home)
    delay = rng.uniform(0, span)
    process = subprocess.Popen(
        [*CAFS, *workload.command(operation)],
        env=store_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(delay)
        killed = process.poll() is None
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    started = time.monotonic()
    verify = cafs("verify", home=home, check=False)
    took = time.monotonic() - started
    rerun = cafs(*workload.command(operation), home=home, check=False)
    problems = verify.stdout + verify.stderr if verify.returncode else ""
    if rerun.returncode:
        problems += f"\nrerun of {operation} failed: {rerun.stderr.strip()}"
    if verify.returncode == 0 and rerun.returncode == 0:
        after = cafs("verify", "--nar", home=home, check=False)
        if after.returncode:
            problems += f"\nafter the rerun: {after.stdout}{after.stderr}"
            verify_ok = False
        else:
            verify_ok = True
    else:
        verify_ok = verify.returncode == 0
    shutil.rmtree(home, ignore_errors=True)
    return TrialResult(operation, delay, killed, verify_ok, rerun.returncode == 0, problems, took)


def run_trials(
    operations: list[str],
    workload: Workload,
    workdir: Path,
    per_operation: int,
    seed: int,
    progress: Callable[[TrialResult], None] = lambda result: None,
) -> Trials:
    """``per_operation`` trials of each operation, interleaved, each on a fresh store."""
    rng = random.Random(seed)
    spans = {}
    for operation in operations:
        home = workdir / f"timing-{operation}"
        spans[operation] = max(0.2, timed(operation, workload, home))
        shutil.rmtree(home, ignore_errors=True)
    trials = Trials()
    for index in range(per_operation * len(operations)):
        operation = operations[index % len(operations)]
        home = workdir / f"trial-{index}"
        result = trial(operation, workload, home, spans[operation], rng)
        trials.results.append(result)
        progress(result)
    return trials

"""Fault trials by the hundred: writers SIGKILLed at random moments, then the store checked.

Each trial takes a fresh store, starts one writing command (``castore ingest``,
``import``, ``nar import``, ``gc``, and ``copy`` when a Nix store is at hand),
kills it with SIGKILL after a random delay within the time that command takes
uninterrupted, and then:

1. ``cafs verify`` must find nothing wrong (every object sound, no PathInfo
   naming missing content);
2. the same command, run again, must succeed;
3. ``cafs verify --nar`` must then find nothing wrong either.

Plus one disk-full trial per operation: the store on a small tmpfs, the
command must fail with a one-line error (exit code 7) and leave a store that
verifies.

    python bench/faults.py [--trials N (per operation, default 25)] [--seed S]
                           [--files N] [--workdir DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    add_report_options,
    describe_machine,
    lacks_root,
    publish,
    remove,
    source_state,
    table,
)

from tests.faults import (
    OPERATIONS,
    TrialResult,
    Workload,
    make_workload,
    run_trials,
)
from tests.process import CAFS, cafs

TMPFS_SIZE = "4m"


def nix_closure(workdir: Path, workload: Workload) -> Path | None:
    """A closure file of a tree put into /nix/store by Nix, for copy trials; None without Nix."""
    if shutil.which("nix-store") is None:
        return None
    added = subprocess.run(
        ["nix-store", "--add", str(workload.trees[0])], capture_output=True, text=True
    )
    if added.returncode != 0:
        return None
    path = added.stdout.strip()
    nar = subprocess.run(["nix-store", "--dump", path], capture_output=True, check=True).stdout
    entry = {
        "path": path,
        "narHash": "sha256-" + base64.b64encode(hashlib.sha256(nar).digest()).decode(),
        "narSize": len(nar),
        "references": [],
    }
    closure = workdir / "closure.json"
    closure.write_text(json.dumps({"closure": [entry]}))
    return closure


def disk_full(operation: str, workload: Workload, workdir: Path) -> str:
    """Run ``operation`` with the store on a tmpfs too small for it; what happened."""
    mountpoint = workdir / f"full-{operation}"
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mountpoint)], check=True
    )
    try:
        if operation == "gc":
            return "n/a (gc frees space)"
        result = cafs(*workload.command(operation), home=mountpoint, check=False)
        lines = result.stderr.strip().splitlines()
        verdict = f"exit {result.returncode}: {lines[-1] if lines else '(no message)'}"
        verify = cafs("verify", home=mountpoint, check=False)
        verdict += "; store verifies" if verify.returncode == 0 else "; VERIFY FAILED"
        return verdict
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=25, help="trials per operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=400, help="small files per tree")
    add_report_options(parser, Path("/var/tmp/cafs-bench-faults"))
    opts = parser.parse_args()
    if lacks_root("fault trials mount a tmpfs: run as root"):
        return 1
    work = opts.workdir.absolute()
    remove(work)
    work.mkdir(parents=True)
    workload = make_workload(work / "work", seed=opts.seed, files=opts.files)
    workload.closure = nix_closure(work, workload)
    operations = [op for op in OPERATIONS if op != "copy" or workload.closure is not None]

    def progress(result: TrialResult) -> None:
        mark = "ok" if result.verify_ok and result.rerun_ok else "FAIL"
        when = "killed" if result.killed else "finished first"
        print(f"{result.operation:15} {result.delay:6.2f}s {when:15} {mark}", file=sys.stderr)

    trials = run_trials(operations, workload, work / "stores", opts.trials, opts.seed, progress)
    by_op: dict[str, list[TrialResult]] = defaultdict(list)
    for result in trials.results:
        by_op[result.operation].append(result)
    rows = []
    for operation in operations:
        results = by_op[operation]
        verify_times = sorted(r.verify_seconds for r in results)
        rows.append(
            [
                operation,
                str(len(results)),
                str(sum(r.killed for r in results)),
                str(sum(not r.verify_ok for r in results)),
                str(sum(not r.rerun_ok for r in results)),
                f"{verify_times[len(verify_times) // 2]:.2f}",
                disk_full(operation, workload, work),
            ]
        )
    machine = describe_machine(work, CAFS, nix=False)
    lines = [
        "## Fault trials",
        "",
        f"cafs: {source_state()}; machine: {machine.hardware}",
        f"seed {opts.seed}, {opts.files} small files per tree, tmpfs of {TMPFS_SIZE} for disk-full",
        "",
        *table(
            [
                "operation",
                "trials",
                "killed mid-run",
                "verify failed",
                "rerun failed",
                "verify s (median)",
                "disk full",
            ],
            rows,
            align="lrrrrrl",
        ),
    ]
    for failure in trials.failures():
        lines += ["", f"FAILED {failure.operation} at {failure.delay:.2f}s:", failure.problems]
    publish("\n".join(lines), opts.output)
    return 1 if trials.failures() else 0


if __name__ == "__main__":
    sys.exit(main())

"""A few fault trials in every test run: writers SIGKILLed at random moments leave a sound store.

``bench/faults.py`` runs the same trials by the hundred (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.faults import make_workload, run_trials
from tests.process import cafs


def test_killed_writers_leave_a_sound_store(tmp_path: Path) -> None:
    workload = make_workload(tmp_path / "work", seed=1, files=150, big=4 << 20)
    operations = ["castore-ingest", "import", "nar-import", "gc"]
    trials = run_trials(operations, workload, tmp_path / "stores", per_operation=2, seed=7)
    assert len(trials.results) == 8
    assert any(result.killed for result in trials.results), "no kill landed mid-command"
    failures = trials.failures()
    assert failures == [], "\n".join(f"{f.operation}: {f.problems}" for f in failures)


def test_a_full_disk_is_a_clear_error_and_stores_nothing_half(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root)")
    workload = make_workload(tmp_path / "work", seed=2, files=50, big=6 << 20)
    home = tmp_path / "full"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(home)], check=True)
    try:
        for operation in ("import", "nar-import"):
            result = cafs(*workload.command(operation), home=home, check=False)
            assert result.returncode == 7, result.stderr
            message = result.stderr.strip().splitlines()
            assert len(message) == 1 and "No space left on device" in message[0]
            assert cafs("verify", home=home, check=False).returncode == 0
        # Neither import left a PathInfo behind.
        with contextlib.closing(sqlite3.connect(home / "pathinfo.sqlite")) as db:
            assert db.execute("SELECT count(*) FROM pathinfos").fetchone()[0] == 0
    finally:
        if subprocess.run(["umount", str(home)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(home)], check=False)

"""Running the ``cafs`` command as a user does: a real process on a real store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

CAFS = [sys.executable, "-m", "cafs.cli"]


def store_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a cafs process on the embedded store at ``home``."""
    env = {**os.environ, "CAFS_HOME": str(home)}
    for var in ("BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR", "PATH_INFO_SERVICE_ADDR"):
        env.pop(var, None)
    return {**env, **extra}


def cafs(
    *args: str, home: Path, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run cafs to completion; text output."""
    return subprocess.run(
        [*CAFS, *args],
        env=store_env(home, **env),
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


def cafs_bytes(*args: str, home: Path, **env: str) -> bytes:
    """Run cafs to completion; its standard output as bytes."""
    return subprocess.run(
        [*CAFS, *args], env=store_env(home, **env), capture_output=True, check=True, timeout=300
    ).stdout


def stop_process(
    process: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float = 30.0
) -> int:
    """Send ``signum``, wait up to ``timeout``, then SIGKILL; the exit code."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    return process.returncode

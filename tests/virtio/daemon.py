"""``cafs virtiofs`` / ``cafs castore virtiofs`` as real processes, stopped by PID."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.process import CAFS, stop_process, store_env

START_TIMEOUT = 30.0


@dataclass
class VirtiofsDaemon:
    process: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        return stop_process(self.process, signum, timeout)


def spawn_virtiofs(home: Path, socket: Path, *args: str, log: Path | None = None) -> VirtiofsDaemon:
    """Start a virtiofs daemon (``args``: the command after ``cafs``, without SOCKET) and
    wait until it listens; raises with its log if it does not."""
    log = log or home.parent / f"virtiofs-{time.monotonic_ns()}.log"
    home.mkdir(parents=True, exist_ok=True)
    command = [*CAFS, "--log-level", "DEBUG", *args, str(socket)]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, env=store_env(home), stdout=subprocess.DEVNULL, stderr=log_file
        )
    daemon = VirtiofsDaemon(process, socket, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if "over virtiofs at" in daemon.log_text():
            return daemon
        if process.poll() is not None:
            break
        time.sleep(0.02)
    daemon.stop(signal.SIGKILL)
    raise RuntimeError(f"cafs virtiofs did not start:\n{daemon.log_text()}")


@contextlib.contextmanager
def running_virtiofs(home: Path, socket: Path, *args: str) -> Iterator[VirtiofsDaemon]:
    """A daemon for the duration of the block, stopped by PID however the block ends."""
    daemon = spawn_virtiofs(home, socket, *args)
    try:
        yield daemon
    finally:
        daemon.stop(signal.SIGKILL)

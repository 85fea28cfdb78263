"""Running ``cafs daemon`` as a real process for tests, and stopping it by PID."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.process import CAFS, stop_process, store_env

READY = re.compile(r"listening on (\S+) \(pid (\d+)\)")
START_TIMEOUT = 30.0


@dataclass
class Daemon:
    """A running daemon: its URL, process and log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    args: list[str]
    home: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """Stop it the hard way (no graceful shutdown), as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        return stop_process(self.process, signal.SIGTERM, timeout)


def spawn_daemon(
    home: Path,
    listen: str,
    *service_args: str,
    log_level: str = "INFO",
    log: Path | None = None,
) -> Daemon:
    """Start ``cafs daemon`` and wait until it listens; raises with its log if it does not."""
    log = log or home / f"daemon-{time.monotonic_ns()}.log"
    home.mkdir(parents=True, exist_ok=True)
    args = [*CAFS, "--log-level", log_level, "daemon", "--listen-address", listen, *service_args]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            args, env=store_env(home), stdout=subprocess.DEVNULL, stderr=log_file
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = READY.search(log.read_text(errors="replace"))
        if found:
            return Daemon(found.group(1), process, log, args, home)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait(timeout=30)
    raise RuntimeError(f"cafs daemon did not start:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_daemon(
    home: Path, listen: str, *service_args: str, log_level: str = "INFO"
) -> Iterator[Daemon]:
    """A daemon for the duration of the block, stopped by PID however the block ends."""
    daemon = spawn_daemon(home, listen, *service_args, log_level=log_level)
    try:
        yield daemon
    finally:
        daemon.terminate()


def file_services(root: Path) -> tuple[str, ...]:
    """Service flags for a daemon storing under ``root``: chunked blobs in an object store,
    SQLite for directories and PathInfos."""
    return (
        "--blob-service-addr",
        "objectstore+file://" + quote(str(root / "objects")),
        "--directory-service-addr",
        "sqlite://" + quote(str(root / "directories.sqlite")),
        "--path-info-service-addr",
        "sqlite://" + quote(str(root / "pathinfo.sqlite")),
    )


MEMORY_SERVICES = (
    "--blob-service-addr",
    "objectstore+memory:///",
    "--directory-service-addr",
    "memory://",
    "--path-info-service-addr",
    "memory://",
)


_sockets = itertools.count()


def socket_path(tmp: Path) -> str:
    """A fresh unix socket path (one per call) short enough for sun_path (108 bytes)."""
    name = f"cafs-{next(_sockets)}.sock"
    path = tmp / name
    if len(os.fsencode(path)) < 100:
        return str(path)
    import tempfile

    return str(Path(tempfile.mkdtemp(prefix="cafs-")) / name)

"""``cafs nar-bridge`` as a real process for tests, stopped by PID."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.process import CAFS, stop_process, store_env

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class BridgeProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        return stop_process(self.process, signum, timeout)


@contextlib.contextmanager
def running_bridge(home: Path, *args: str) -> Iterator[BridgeProcess]:
    """``cafs nar-bridge`` on a free port of 127.0.0.1 for the block, stopped by PID after."""
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"nar-bridge-{time.monotonic_ns()}.log"
    address = f"127.0.0.1:{free_port()}"
    command = [*CAFS, "nar-bridge", "--listen-address", address, *args]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, env=store_env(home), stdout=subprocess.DEVNULL, stderr=log_file
        )
    bridge = BridgeProcess(f"http://{address}", process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "listening on" not in bridge.log_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cafs nar-bridge did not start:\n{bridge.log_text()}")
            time.sleep(0.02)
        yield bridge
    finally:
        bridge.stop()

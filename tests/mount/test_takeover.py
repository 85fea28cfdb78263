"""Restart without unmount: a live mount passed to a new cafs, gracefully and after SIGKILL.

While one reader streams the 100 MiB file (slowly, so it spans every switch)
and another walks the tree and reads every file again and again, the mount
daemon is replaced by a successor that asks it to hand over, and then that
successor is SIGKILLed and a third takes over. Neither reader may see an
error or a wrong byte, and the mount is never gone from the mount table.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.mount.conftest import Corpus, force_unmount, is_mounted, require_fuse, wait_mounted
from tests.mount.conftest import Mount as MountProcess
from tests.process import CAFS, store_env


@dataclass
class Readers:
    source: Path
    root: Path
    errors: list[str] = field(default_factory=list)
    big_bytes: int = 0
    walks: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def stream_big(self) -> None:
        expected = hashlib.sha256((self.source / "big").read_bytes()).hexdigest()
        digest = hashlib.sha256()
        try:
            with open(self.root / "big", "rb") as f:
                while piece := f.read(1 << 20):
                    digest.update(piece)
                    self.big_bytes += len(piece)
                    time.sleep(0.02)  # slow enough to span the switches
        except OSError as exc:
            self.errors.append(f"big: {exc}")
            return
        if digest.hexdigest() != expected:
            self.errors.append("big: wrong bytes")

    def walk(self) -> None:
        while not self.stop.is_set():
            try:
                for path in sorted(self.source.rglob("*")):
                    if path.parent.name == "many" and not path.name.endswith("7"):
                        continue  # a tenth of the 5,000 entries is plenty per walk
                    twin = self.root / path.relative_to(self.source)
                    if path.is_symlink():
                        if os.readlink(twin) != os.readlink(path):
                            self.errors.append(f"{twin}: wrong target")
                    elif path.is_file() and path.name != "big":
                        if twin.read_bytes() != path.read_bytes():
                            self.errors.append(f"{twin}: wrong bytes")
                    elif path.is_dir():
                        os.listdir(twin)
            except OSError as exc:
                self.errors.append(f"walk: {exc}")
                return
            self.walks += 1


def start(corpus: Corpus, mountpoint: Path, handover: Path, log: Path, *flags: str) -> MountProcess:
    with open(log, "ab") as err:
        process = subprocess.Popen(
            [*CAFS, "castore", "mount", corpus.digest, str(mountpoint),
             "--handover-dir", str(handover), *flags],
            env=store_env(corpus.home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
    return MountProcess(mountpoint, process, log)


def wait_serving(mount: MountProcess, count: int, timeout: float = 60) -> None:
    """Until the log says ``serving`` ``count`` times (each process says it once)."""
    deadline = time.monotonic() + timeout
    while mount.stderr().count("serving directory") < count:
        if mount.process.poll() is not None:
            raise AssertionError(f"cafs exited with {mount.process.returncode}: {mount.stderr()}")
        assert time.monotonic() < deadline, mount.stderr()
        time.sleep(0.05)


def clean_up(processes: list[subprocess.Popen[bytes]], mountpoint: Path, handover: Path) -> None:
    """Kill what is left of a test's mount processes, the mount, and its keeper."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
    # A keeper left behind lets go once the mount is gone.
    force_unmount(mountpoint)
    subprocess.run(["pkill", "-f", f"cafs.fuse.handover {handover}"], check=False)


def test_takeover_gracefully_and_after_sigkill(corpus: Corpus, tmp_path: Path) -> None:
    require_fuse()
    mountpoint, handover, log = tmp_path / "m", tmp_path / "handover", tmp_path / "mount.log"
    mountpoint.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    readers = Readers(corpus.source, mountpoint)
    threads = [threading.Thread(target=readers.stream_big), threading.Thread(target=readers.walk)]
    try:
        first = start(corpus, mountpoint, handover, log)
        processes.append(first.process)
        wait_mounted(first)
        wait_serving(first, 1)
        for thread in threads:
            thread.start()
        time.sleep(0.5)

        # An upgrade: the successor asks, the first hands over and leaves.
        second = start(corpus, mountpoint, handover, log, "--takeover")
        processes.append(second.process)
        assert first.process.wait(timeout=60) == 0
        wait_serving(second, 2)
        assert is_mounted(mountpoint)
        assert "handed" in first.stderr() and "which handed over" in second.stderr()
        done_before = readers.big_bytes
        time.sleep(0.7)

        # A crash: SIGKILL, then a third takes the connection from the keeper.
        second.process.send_signal(signal.SIGKILL)
        second.process.wait(timeout=30)
        time.sleep(0.5)  # requests queue in the kernel meanwhile
        assert is_mounted(mountpoint)
        third = start(corpus, mountpoint, handover, log, "--takeover")
        processes.append(third.process)
        wait_serving(third, 3)
        assert "a predecessor that is gone" in third.stderr()

        threads[0].join(timeout=120)
        readers.stop.set()
        threads[1].join(timeout=120)
        assert readers.errors == []
        assert readers.big_bytes == (corpus.source / "big").stat().st_size
        assert done_before < readers.big_bytes  # the stream went on across both switches
        assert readers.walks >= 1

        # A real stop unmounts, and the keeper goes with the connection.
        third.process.send_signal(signal.SIGTERM)
        assert third.process.wait(timeout=60) == 0
        assert not is_mounted(mountpoint)
        deadline = time.monotonic() + 10
        while (handover / "keeper.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (handover / "keeper.sock").exists()
    finally:
        readers.stop.set()
        clean_up(processes, mountpoint, handover)
        for thread in threads:
            thread.join(timeout=30)


def test_takeover_without_a_live_mount_is_a_clear_error(corpus: Corpus, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    result = subprocess.run(
        [*CAFS, "castore", "mount", corpus.digest, str(tmp_path / "m"),
         "--handover-dir", str(tmp_path / "nothing"), "--takeover"],
        env=store_env(corpus.home), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no live mount to take over" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

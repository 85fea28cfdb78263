"""Real kernel mounts: a ``cafs castore mount`` process per mount, unmounted by path."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.process import CAFS, cafs, store_env

MOUNT_TIMEOUT = 30.0

BIG_SIZE = 100 * 1024 * 1024
MANY = 5000


def require_fuse() -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.fail("FUSE is not available: /dev/fuse and fusermount3 (package fuse3) are needed")


def is_mounted(path: Path) -> bool:
    """From the mount table, so a mount whose daemon died still counts."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            where = line.split()[1].replace("\\040", " ")
            if where == target:
                return True
    return False


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@dataclass
class Mount:
    path: Path
    process: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the daemon and wait for it; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)


def wait_mounted(mount: Mount) -> None:
    """Until ``mount`` is in the mount table; fails if its daemon exits or takes too long."""
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not is_mounted(mount.path):
        if mount.process.poll() is not None:
            raise AssertionError(f"cafs exited with {mount.process.returncode}: {mount.stderr()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not mounted after {MOUNT_TIMEOUT}s: {mount.stderr()}")
        time.sleep(0.05)


def mounted(
    digest: str,
    mountpoint: Path,
    home: Path,
    *flags: str,
    log_level: str = "INFO",
    env: Mapping[str, str] | None = None,
) -> contextlib.AbstractContextManager[Mount]:
    """``cafs castore mount DIGEST`` at ``mountpoint``, live until the block ends."""
    command = ["castore", "mount", digest]
    return mounted_command(command, mountpoint, home, *flags, log_level=log_level, env=env)


def mounted_store(
    mountpoint: Path,
    home: Path,
    *flags: str,
    log_level: str = "INFO",
    env: Mapping[str, str] | None = None,
) -> contextlib.AbstractContextManager[Mount]:
    """``cafs mount`` (the store mode) at ``mountpoint``, live until the block ends."""
    return mounted_command(["mount"], mountpoint, home, *flags, log_level=log_level, env=env)


@contextlib.contextmanager
def mounted_command(
    command: list[str],
    mountpoint: Path,
    home: Path,
    *flags: str,
    log_level: str = "INFO",
    env: Mapping[str, str] | None = None,
) -> Iterator[Mount]:
    """Run a mount command, wait until the mount is live, always unmount.

    ``env`` adds to the environment of the mount process (service URLs such
    as ``BLOB_SERVICE_ADDR``, say); ``flags`` follow the mountpoint.
    """
    require_fuse()
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [*CAFS, "--log-level", log_level, *command, str(mountpoint), *flags],
            env=store_env(home, **(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    mount = Mount(mountpoint, process, log)
    try:
        wait_mounted(mount)
        os.stat(mountpoint)  # the first request is answered: the mount is live
        yield mount
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        force_unmount(mountpoint)


def expect_errno(code: int, func: object, *args: object) -> None:
    """``func(*args)`` fails with exactly errno ``code``."""
    with pytest.raises(OSError, match=rf"\[Errno {code}\]"):
        func(*args)  # type: ignore[operator]


def ingest(tree: Path, home: Path) -> str:
    """Ingest ``tree`` with the cafs command; the root digest."""
    line = cafs("castore", "ingest", str(tree), home=home).stdout
    return line.split()[2]


def make_corpus(root: Path) -> Path:
    """Every kind of node the filesystem serves, with known contents."""
    root.mkdir()
    (root / "hello.txt").write_bytes(b"Hello World!")
    (root / "empty-file").write_bytes(b"")
    exe = root / "hello-exe"
    exe.write_bytes(b"Hello World!")
    exe.chmod(0o755)
    (root / "script").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "script").chmod(0o755)
    (root / "a").mkdir()
    (root / "a" / "dup.txt").write_bytes(b"Hello World!")
    (root / "a" / "link-to-hello").symlink_to("../hello.txt")
    (root / "link-to-hello").symlink_to("hello.txt")
    (root / "dangling").symlink_to("/nix/store/somewhereelse")
    (root / "twin1").mkdir()
    (root / "twin2").mkdir()
    for twin in ("twin1", "twin2"):
        (root / twin / "same").write_bytes(b"twins")
    (root / "empty-dir").mkdir()
    deep = root
    for level in range(25):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"at the bottom")
    (root / "names with spaces é ü ☃").write_bytes(b"unicode\n")
    many = root / "many"
    many.mkdir()
    for i in range(MANY):
        (many / f"entry-{i:05d}").write_bytes(f"{i}\n".encode())
    (root / "one-mib").write_bytes(os.urandom(1024 * 1024))
    with open(root / "big", "wb") as f:
        for _ in range(BIG_SIZE // (4 * 1024 * 1024)):
            f.write(os.urandom(4 * 1024 * 1024))
    return root


@dataclass(frozen=True)
class Corpus:
    source: Path
    home: Path
    digest: str


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    base = tmp_path_factory.mktemp("corpus")
    source = make_corpus(base / "tree")
    home = base / "home"
    return Corpus(source, home, ingest(source, home))


@pytest.fixture(scope="module")
def mount(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """The corpus, mounted with the default flags, shared by a module's tests."""
    with mounted(corpus.digest, tmp_path_factory.mktemp("mnt") / "m", corpus.home) as m:
        yield m

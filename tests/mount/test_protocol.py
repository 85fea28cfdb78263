"""The FUSE protocol on a real mount: what the kernel caches, FORGET, unprivileged mounts, load."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.mount.conftest import (
    BIG_SIZE,
    MANY,
    MOUNT_TIMEOUT,
    Corpus,
    Mount,
    force_unmount,
    ingest,
    is_mounted,
    mounted,
    require_fuse,
    wait_mounted,
)
from tests.process import CAFS, store_env

STATUS = re.compile(r"status: inodes held=(\d+) known=(\d+) in_flight=\d+ requests: (.*)")


def status(mount: Mount) -> tuple[int, dict[str, int]]:
    """Ask the daemon for its status line (SIGUSR1): inodes held, requests by opcode."""
    before = len(STATUS.findall(mount.stderr()))
    mount.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = STATUS.findall(mount.stderr())
        if len(lines) > before:
            held, _, counts = lines[-1]
            requests = dict(item.split("=") for item in counts.split() if "=" in item)
            return int(held), {name: int(n) for name, n in requests.items()}
        time.sleep(0.02)
    raise AssertionError(f"no status line: {mount.stderr()}")


def walk(root: Path) -> int:
    """List every directory and lstat every entry, as find(1) does; the entries seen."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            seen += 1
    return seen


def drop_kernel_caches() -> None:
    """Drop the dentry and inode caches: the kernel then FORGETs what it held."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")


def test_a_warm_walk_never_reaches_cafs(corpus: Corpus, tmp_path: Path) -> None:
    # Not twin1/twin2: two directories sharing one inode cannot both stay in
    # the kernel's dentry cache (a directory has one alias), so each walk
    # looks them up again.
    with mounted(corpus.digest, tmp_path / "m", corpus.home) as m:
        trees = [m.path / "many", m.path / "a", m.path / "d0"]
        first = sum(map(walk, trees))
        assert first > MANY
        _, cold = status(m)
        assert cold.get("READDIRPLUS", 0) > 0
        assert sum(map(walk, trees)) == first
        _, warm = status(m)
        # Listings, entries and attributes all come from the kernel's caches.
        assert warm == cold, {k: warm.get(k, 0) - cold.get(k, 0) for k in warm}
        # One OPENDIR, answered ENOSYS: the kernel opens directories itself from then on.
        assert warm.get("OPENDIR") == 1 and "RELEASEDIR" not in warm


def test_forget_frees_inodes_and_lookups_after_it_read_the_right_bytes(
    corpus: Corpus, tmp_path: Path
) -> None:
    with mounted(corpus.digest, tmp_path / "m", corpus.home) as m:
        many = m.path / "many"
        assert walk(many) == MANY
        held_after_walk, _ = status(m)
        assert held_after_walk >= MANY
        drop_kernel_caches()
        deadline = time.monotonic() + 20
        held, requests = status(m)
        while held > held_after_walk // 10 and time.monotonic() < deadline:
            time.sleep(0.1)
            held, requests = status(m)
        assert held < held_after_walk // 10, (held, held_after_walk)
        assert requests.get("FORGET", 0) + requests.get("BATCH_FORGET", 0) > 0
        # Looked up again, every path has an inode and its own contents.
        for i in random.Random(3).sample(range(MANY), 200):
            name = f"entry-{i:05d}"
            assert (many / name).read_bytes() == (corpus.source / "many" / name).read_bytes()
        assert os.stat(many / "entry-00000").st_ino == os.stat(many / "entry-00000").st_ino
        assert walk(many) == MANY


def test_sixteen_readers_and_a_walker_see_no_wrong_byte(corpus: Corpus, tmp_path: Path) -> None:
    source = (corpus.source / "big").read_bytes()
    with mounted(corpus.digest, tmp_path / "m", corpus.home) as m:
        stop = threading.Event()

        def walker() -> int:
            walks = 0
            while not stop.is_set():
                walk(m.path / "many")
                drop_kernel_caches()
                walks += 1
            return walks

        def reader(seed: int) -> int:
            rng = random.Random(seed)
            fd = os.open(m.path / "big", os.O_RDONLY | os.O_DIRECT)
            try:
                for _ in range(30):
                    offset, size = rng.randrange(BIG_SIZE), rng.randrange(1, 1 << 20)
                    assert os.pread(fd, size, offset) == source[offset : offset + size]
            finally:
                os.close(fd)
            return 30

        with ThreadPoolExecutor(17) as pool:
            walking = pool.submit(walker)
            try:
                assert sum(pool.map(reader, range(16))) == 16 * 30
            finally:
                stop.set()
            assert walking.result() >= 1


def test_sigterm_with_reads_in_flight_ends_cleanly(corpus: Corpus, tmp_path: Path) -> None:
    source_digest = hashlib.sha256((corpus.source / "big").read_bytes()).hexdigest()
    with mounted(corpus.digest, tmp_path / "m", corpus.home) as m:
        outcomes: list[str] = []

        def reader() -> None:
            digest = hashlib.sha256()
            try:
                with open(m.path / "big", "rb", buffering=0) as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
            except OSError as exc:
                outcomes.append(errno.errorcode.get(exc.errno or 0, str(exc)))
                return
            outcomes.append("complete" if digest.hexdigest() == source_digest else "WRONG")

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        assert m.stop(signal.SIGTERM) == 0
        for thread in threads:
            thread.join(timeout=30)
        assert not is_mounted(m.path)
        assert len(outcomes) == 4 and "WRONG" not in outcomes, outcomes
        assert "unmounted" in m.stderr()


# -- unprivileged mounts through fusermount3 ----------------------------------------------

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def as_nobody(*command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*NOBODY, *command], capture_output=True, timeout=60, check=False)


@contextlib.contextmanager
def user_allow_other() -> Iterator[None]:
    """``user_allow_other`` in /etc/fuse.conf for the block, as it was afterwards."""
    conf = Path("/etc/fuse.conf")
    before = conf.read_bytes() if conf.exists() else None
    conf.write_bytes((before or b"") + b"\nuser_allow_other\n")
    try:
        yield
    finally:
        if before is None:
            conf.unlink()
        else:
            conf.write_bytes(before)


@contextlib.contextmanager
def mounted_as_nobody(tmp_path: Path, *flags: str) -> Iterator[tuple[Path, Path]]:
    """A small tree mounted by ``nobody`` through fusermount3; (mountpoint, source)."""
    require_fuse()
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.fail("these tests switch to the user nobody: they need root and setpriv")
    with fuse_device_for_everyone():
        yield from _mounted_as_nobody(tmp_path, *flags)


@contextlib.contextmanager
def fuse_device_for_everyone() -> Iterator[None]:
    """/dev/fuse mode 0666, as distributions ship it, for the block (fusermount3 opens it
    as the calling user)."""
    before = os.stat("/dev/fuse").st_mode & 0o7777
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)


def _mounted_as_nobody(tmp_path: Path, *flags: str) -> Iterator[tuple[Path, Path]]:
    base = tmp_path / "nobody"
    base.mkdir()
    tree = base / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "file").write_bytes(b"served to nobody\n")
    (tree / "sub" / "inner").write_bytes(os.urandom(300_000))
    home = base / "home"
    digest = ingest(tree, home)
    mountpoint = base / "m"
    mountpoint.mkdir()
    shutil.chown(mountpoint, "nobody", "nogroup")
    for path in [home, *home.rglob("*")]:
        shutil.chown(path, "nobody", "nogroup")
    for parent in [base, *base.parents]:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o711)  # traversable by nobody
    log = base / "mount.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [*NOBODY, *CAFS, "castore", "mount", digest, str(mountpoint), *flags],
            env=store_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_mounted(Mount(mountpoint, process, log))
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while "serving" not in log.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"never served: {log.read_text()}")
            time.sleep(0.05)
        yield mountpoint, tree
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
        assert not is_mounted(mountpoint)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        force_unmount(mountpoint)


def test_an_unprivileged_mount_is_its_owners_alone(tmp_path: Path) -> None:
    with mounted_as_nobody(tmp_path) as (mountpoint, tree):
        fstype = next(
            line.split()[2]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1] == str(mountpoint)
        )
        assert fstype == "fuse.cafs"
        read = as_nobody("cat", str(mountpoint / "file"), str(mountpoint / "sub" / "inner"))
        assert read.returncode == 0, read.stderr
        assert read.stdout == (tree / "file").read_bytes() + (tree / "sub" / "inner").read_bytes()
        # Without --allow-other, not even root may look inside.
        with pytest.raises(PermissionError):
            os.stat(mountpoint / "file")


def test_an_unprivileged_mount_with_allow_other(tmp_path: Path) -> None:
    with user_allow_other(), mounted_as_nobody(tmp_path, "--allow-other") as (mountpoint, tree):
        assert (mountpoint / "file").read_bytes() == (tree / "file").read_bytes()
        assert (mountpoint / "sub" / "inner").read_bytes() == (tree / "sub" / "inner").read_bytes()


def test_allow_other_refused_without_user_allow_other(tmp_path: Path) -> None:
    conf = Path("/etc/fuse.conf")
    if conf.exists() and re.search(rb"^\s*user_allow_other", conf.read_bytes(), re.M):
        pytest.fail("/etc/fuse.conf allows allow_other for everyone; this test needs it not to")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"x")
    home = tmp_path / "home"
    digest = ingest(tree, home)
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    shutil.chown(mountpoint, "nobody", "nogroup")
    for parent in [tmp_path, *tmp_path.parents]:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o711)
    for path in [home, *home.rglob("*")]:
        shutil.chown(path, "nobody", "nogroup")
    with fuse_device_for_everyone():
        done = subprocess.run(
            [*NOBODY, *CAFS, "castore", "mount", digest, str(mountpoint), "--allow-other"],
            env=store_env(home),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    force_unmount(mountpoint)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot mount at {mountpoint}: "), done.stderr
    assert "user_allow_other" in done.stderr and done.stderr.count("\n") == 1

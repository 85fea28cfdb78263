"""Plain copies of large blobs, and the kernel reading them itself (FUSE passthrough)."""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cafs.castore.digest import Digest
from tests.mount.conftest import (
    Corpus,
    Mount,
    ingest,
    is_mounted,
    mounted,
    mounted_store,
    require_fuse,
    wait_mounted,
)
from tests.mount.test_protocol import status
from tests.mount.test_takeover import clean_up, start, wait_serving
from tests.process import CAFS, cafs, cafs_bytes, store_env

SIZE = 6 * 1024 * 1024 + 4321
COPY_TIMEOUT = 60.0


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, bytes, str]:
    """A fresh store holding one large random file; (home, its bytes, the root digest)."""
    source = tmp_path / "tree"
    source.mkdir()
    data = os.urandom(SIZE)
    (source / "large").write_bytes(data)
    (source / "small").write_bytes(b"small files are never copied")
    home = tmp_path / "home"
    return home, data, ingest(source, home)


def import_path_of(data: bytes, home: Path, tmp_path: Path) -> str:
    """A store path holding ``data`` as ``large`` beside a small file; its absolute path."""
    source = tmp_path / "pathtree"
    source.mkdir()
    (source / "large").write_bytes(data)
    (source / "small").write_bytes(b"x" * 100)
    return cafs("import", str(source), home=home).stdout.strip()


def plain_copy(home: Path, data: bytes) -> Path:
    return home / "plain" / Digest.of(data).hex()


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + COPY_TIMEOUT
    while not path.exists():
        assert time.monotonic() < deadline, f"no plain copy at {path}"
        time.sleep(0.05)


def drop_page_cache() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")


def wait_released(mount: Mount, at_least: int) -> None:
    """Until the daemon saw ``at_least`` RELEASEs (the kernel sends them after close)."""
    deadline = time.monotonic() + 10
    while status(mount)[1].get("RELEASE", 0) < at_least:
        assert time.monotonic() < deadline, "the kernel sent no RELEASE"
        time.sleep(0.05)


def test_a_file_read_once_is_read_by_the_kernel_from_its_plain_copy(
    tree: tuple[Path, bytes, str], tmp_path: Path
) -> None:
    home, data, digest = tree
    expected = hashlib.sha256(data).digest()
    with mounted(digest, tmp_path / "m", home) as m:
        large = m.path / "large"
        with open(large, "rb") as first:
            assert first.read(1000) == data[:1000]
            with open(large, "rb") as second:
                assert hashlib.sha256(second.read()).digest() == expected
            # A copy is made once a reader is done with the blob.
            wait_for(plain_copy(home, data))
            # The copy is there, but this inode is open through the page cache:
            # another open must be answered the same way, not refused.
            with open(large, "rb") as third:
                third.seek(SIZE - 5000)
                assert third.read() == data[-5000:]
            assert first.read() == data[1000:]
        wait_released(m, 3)
        drop_page_cache()
        _, before = status(m)
        with open(large, "rb") as again, open(large, "rb") as fourth:
            assert hashlib.sha256(again.read()).digest() == expected
            with mmap.mmap(fourth.fileno(), 0, prot=mmap.PROT_READ) as mapped:
                assert mapped[1_000_000:1_100_000] == data[1_000_000:1_100_000]
            fourth.seek(12345)
            assert fourth.read(54321) == data[12345 : 12345 + 54321]
        _, after = status(m)
        assert (m.path / "small").read_bytes() == b"small files are never copied"
    if os.geteuid() == 0:
        # Passthrough: the kernel read the backing file; no READ reached cafs.
        assert after.get("READ", 0) == before.get("READ", 0), (before, after)
    else:
        # Without the privilege to register backing files, reads go through cafs.
        assert after.get("READ", 0) > before.get("READ", 0)
    assert not plain_copy(home, data).with_suffix(".tmp").exists()
    assert sorted(os.listdir(home / "plain")) == [Digest.of(data).hex()]


def test_plain_copies_can_be_turned_off(tree: tuple[Path, bytes, str], tmp_path: Path) -> None:
    home, data, digest = tree
    with mounted(digest, tmp_path / "m", home, "--plain-cache-size", "0") as m:
        assert (m.path / "large").read_bytes() == data
        time.sleep(1)
    assert not plain_copy(home, data).exists()


def test_nar_dump_reads_plain_copies_and_can_leave_them(
    tree: tuple[Path, bytes, str], tmp_path: Path
) -> None:
    home, data, _ = tree
    store_path = import_path_of(data, home, tmp_path)
    plain = plain_copy(home, data)
    before = cafs_bytes("nar", "dump", store_path, home=home)
    assert not plain.exists()  # a plain dump leaves nothing behind
    filled = cafs_bytes("nar", "dump", "--fill-plain-cache", store_path, home=home)
    assert plain.exists()
    # Read from the copy (sendfile), the NAR is the same, to a pipe and to a file.
    after = cafs_bytes("nar", "dump", store_path, home=home)
    assert before == filled == after
    out = tmp_path / "out.nar"
    with open(out, "wb") as f:
        subprocess.run(
            [*CAFS, "nar", "dump", store_path], env=store_env(home), stdout=f, check=True
        )
    assert out.read_bytes() == before
    # A copy that no longer fits its file node is an error, never a wrong NAR.
    plain.chmod(0o644)
    with open(plain, "ab") as f:
        f.write(b"!")
    broken = subprocess.run(
        [*CAFS, "nar", "dump", store_path], env=store_env(home), capture_output=True
    )
    assert broken.returncode != 0
    assert b"holds" in broken.stderr
    # A copy is trusted as the disk holds it: `cafs verify` hashes every copy, and
    # `--repair` removes a bad one (the store itself still has the blob).
    plain.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    verify = cafs("verify", home=home, check=False)
    assert verify.returncode == 5, verify
    assert f"plain\t{Digest.of(data).hex()}\tdoes not hash to its name" in verify.stdout
    repaired = cafs("verify", "--repair", home=home, check=False)
    assert "removed 1 corrupt plain copies" in repaired.stderr
    assert not plain.exists()
    assert cafs("verify", home=home).returncode == 0
    assert cafs_bytes("nar", "dump", store_path, home=home) == before


def test_the_store_mount_uses_plain_copies_too(
    tree: tuple[Path, bytes, str], tmp_path: Path
) -> None:
    home, data, _ = tree
    store_path = import_path_of(data, home, tmp_path)
    cafs_bytes("nar", "dump", "--fill-plain-cache", store_path, home=home)
    with mounted_store(tmp_path / "m", home) as m:
        _, before = status(m)
        large = m.path / os.path.basename(store_path) / "large"
        assert hashlib.sha256(large.read_bytes()).digest() == hashlib.sha256(data).digest()
        _, after = status(m)
    if os.geteuid() == 0:
        assert after.get("READ", 0) == before.get("READ", 0), (before, after)


def test_a_successor_answers_opens_in_the_mode_its_predecessor_left(tmp_path: Path) -> None:
    """After a takeover an inode open through a backing file keeps it, one open through the
    page cache stays there: the kernel refuses an open in the other mode (EIO)."""
    require_fuse()
    source = tmp_path / "tree"
    source.mkdir()
    datas = {name: os.urandom(SIZE) for name in ("one", "two")}
    for name, data in datas.items():
        (source / name).write_bytes(data)
    home = tmp_path / "home"
    corpus = Corpus(source, home, ingest(source, home))
    mountpoint, handover, log = tmp_path / "m", tmp_path / "handover", tmp_path / "mount.log"
    mountpoint.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        first = start(corpus, mountpoint, handover, log)
        processes.append(first.process)
        wait_mounted(first)
        wait_serving(first, 1)
        assert (mountpoint / "one").read_bytes() == datas["one"]
        wait_for(plain_copy(home, datas["one"]))
        with open(mountpoint / "one", "rb") as one, open(mountpoint / "two", "rb") as two:
            # "one" is open through its backing file, "two" (no copy yet) through cafs.
            assert two.read(1000) == datas["two"][:1000]
            assert (mountpoint / "two").read_bytes() == datas["two"]
            wait_for(plain_copy(home, datas["two"]))
            second = start(corpus, mountpoint, handover, log, "--takeover")
            processes.append(second.process)
            assert first.process.wait(timeout=60) == 0
            wait_serving(second, 2)
            for name, data in datas.items():
                assert (mountpoint / name).read_bytes() == data
            assert one.read() == datas["one"]
            assert two.read() == datas["two"][1000:]
        assert "passthrough" not in second.stderr().lower(), second.stderr()
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=60) == 0
        assert not is_mounted(mountpoint)
    finally:
        clean_up(processes, mountpoint, handover)

"""Mounting with each flag, holes in the store, shutting down, and mount errors."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from cafs.castore.digest import Digest
from tests.mount.conftest import Corpus, expect_errno, ingest, is_mounted, mounted
from tests.process import cafs


def small_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "file").write_bytes(b"file contents")
    (root / "other").write_bytes(b"other contents")
    (root / "sub" / "inner").write_bytes(b"inner")
    return root


def test_root_listing_needs_list_root(corpus: Corpus, tmp_path: Path) -> None:
    with mounted(corpus.digest, tmp_path / "m", corpus.home, "--no-list-root") as m:
        expect_errno(errno.EPERM, os.listdir, m.path)
        assert (m.path / "hello.txt").read_bytes() == b"Hello World!"
        assert "hello.txt" not in os.listdir(m.path / "a")  # deeper listings still work
    with mounted(corpus.digest, tmp_path / "m2", corpus.home, "--list-root") as m:
        assert sorted(os.listdir(m.path)) == sorted(os.listdir(corpus.source))


def test_xattrs_can_be_turned_off(corpus: Corpus, tmp_path: Path) -> None:
    with mounted(corpus.digest, tmp_path / "m", corpus.home, "--no-show-xattr") as m:
        # The daemon answers ENOSYS; the kernel reports "not supported" from then on.
        expect_errno(
            errno.EOPNOTSUPP, os.getxattr, m.path / "hello.txt", "user.tvix.castore.blob.digest"
        )
        expect_errno(errno.EOPNOTSUPP, os.listxattr, m.path / "hello.txt")
        assert (m.path / "hello.txt").read_bytes() == b"Hello World!"


def test_holes_in_the_store_are_eio_and_the_mount_stays_up(tmp_path: Path) -> None:
    home = tmp_path / "home"
    digest = ingest(small_tree(tmp_path / "tree"), home)
    # Remove one blob's object and one directory from the store.
    blob = Digest.of(b"file contents").hex()
    for object_file in (home / "objects").rglob(blob):
        object_file.unlink()
    sub = cafs("castore", "ls", digest, home=home).stdout
    sub_digest = Digest.parse(
        next(line.split()[1] for line in sub.splitlines() if line.endswith("sub/"))
    )
    with sqlite3.connect(home / "directories.sqlite") as db:
        db.execute("DELETE FROM directories WHERE digest = ?", (bytes(sub_digest),))
    db.close()
    with mounted(digest, tmp_path / "m", home) as m:
        expect_errno(errno.EIO, (m.path / "file").read_bytes)
        expect_errno(errno.EIO, os.listdir, m.path / "sub")
        expect_errno(errno.EIO, os.stat, m.path / "sub" / "inner")
        assert (m.path / "other").read_bytes() == b"other contents"
        expect_errno(errno.EIO, (m.path / "file").read_bytes)
        assert m.process.poll() is None
        assert "not in the blob service" in m.stderr()
        assert f"directory={sub_digest}" in m.stderr()


def test_a_corrupt_blob_is_eio_never_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    digest = ingest(small_tree(tmp_path / "tree"), home)
    blob = Digest.of(b"other contents").hex()
    target = next(iter((home / "objects").rglob(blob)))
    good = Digest.of(b"file contents").hex()
    # Put another (valid) chunk's bytes under this digest.
    target.write_bytes(next(iter((home / "objects").rglob(good))).read_bytes())
    with mounted(digest, tmp_path / "m", home) as m:
        expect_errno(errno.EIO, (m.path / "other").read_bytes)
        assert (m.path / "file").read_bytes() == b"file contents"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(corpus: Corpus, tmp_path: Path, signum: int) -> None:
    with mounted(corpus.digest, tmp_path / "m", corpus.home) as m:
        busy = os.open(m.path / "hello.txt", os.O_RDONLY)  # an open file does not hold it up
        try:
            assert os.read(busy, 100) == b"Hello World!"
            assert m.stop(signum) == 0
            assert not is_mounted(m.path)
        finally:
            with contextlib.suppress(OSError):  # the file outlived its filesystem
                os.close(busy)
        assert "unmounted" in m.stderr()


def test_external_unmount_ends_the_daemon(corpus: Corpus, tmp_path: Path) -> None:
    with mounted(corpus.digest, tmp_path / "m", corpus.home) as m:
        subprocess.run(["fusermount3", "-u", str(m.path)], check=True)
        assert m.process.wait(timeout=30) == 0
        assert not is_mounted(m.path)


def test_log_lines_carry_inode_handle_and_digest(corpus: Corpus, tmp_path: Path) -> None:
    with mounted(corpus.digest, tmp_path / "m", corpus.home, log_level="DEBUG") as m:
        (m.path / "hello.txt").read_bytes()
        ino = os.stat(m.path / "hello.txt").st_ino
    blob = Digest.of(b"Hello World!")
    assert any(
        f"open ino={ino} fh=" in line and f"blob={blob}" in line for line in m.stderr().splitlines()
    ), m.stderr()


def test_mount_errors_are_one_line(corpus: Corpus, tmp_path: Path) -> None:
    missing = cafs(
        "castore", "mount", corpus.digest, str(tmp_path / "nope"), home=corpus.home, check=False
    )
    assert missing.returncode == 1
    assert missing.stderr == f"error: mountpoint {tmp_path / 'nope'} does not exist\n"

    (tmp_path / "file").write_bytes(b"")
    not_dir = cafs(
        "castore", "mount", corpus.digest, str(tmp_path / "file"), home=corpus.home, check=False
    )
    assert not_dir.returncode == 1 and "is not a directory" in not_dir.stderr

    unknown = str(Digest.of(b"no such directory"))
    absent = cafs("castore", "mount", unknown, str(tmp_path), home=corpus.home, check=False)
    assert absent.returncode == 3  # not found (README: exit codes)
    assert absent.stderr == f"error: directory {unknown} not found\n"

    bad = cafs("castore", "mount", "b3:xyz", str(tmp_path), home=corpus.home, check=False)
    assert bad.returncode == 4 and bad.stderr.startswith("error: ")  # invalid input

    with mounted(corpus.digest, tmp_path / "m", corpus.home) as m:
        busy = cafs("castore", "mount", corpus.digest, str(m.path), home=corpus.home, check=False)
        assert busy.returncode == 1
        assert busy.stderr == f"error: mountpoint {m.path} is busy: something is mounted there\n"
        assert (m.path / "hello.txt").read_bytes() == b"Hello World!"

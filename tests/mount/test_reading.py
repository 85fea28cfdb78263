"""Reading a real mount: every node kind, attributes, listings, reads, xattrs, errno."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import random
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cafs.castore.digest import Digest
from tests.mount.conftest import BIG_SIZE, MANY, Corpus, Mount, expect_errno

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.getxattr.restype = ctypes.c_ssize_t
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.listxattr.restype = ctypes.c_ssize_t

BLOB_XATTR = "user.tvix.castore.blob.digest"
DIRECTORY_XATTR = "user.tvix.castore.directory.digest"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_tree_matches_the_source(corpus: Corpus, mount: Mount) -> None:
    """Every path: same kind, permissions, size, contents and link target."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(corpus.source):
        rel = Path(dirpath).relative_to(corpus.source)
        mounted_dir = mount.path / rel
        assert sorted(os.listdir(mounted_dir)) == sorted(dirnames + filenames)
        for name in dirnames + filenames:
            src = Path(dirpath) / name
            dst = mounted_dir / name
            s, d = os.lstat(src), os.lstat(dst)
            seen += 1
            assert stat.S_IFMT(s.st_mode) == stat.S_IFMT(d.st_mode), dst
            assert d.st_uid == 0 and d.st_gid == 0
            assert int(d.st_mtime) == 1
            if stat.S_ISLNK(s.st_mode):
                assert os.readlink(dst) == os.readlink(src)
                assert d.st_size == len(os.fsencode(os.readlink(src)))
                assert d.st_nlink == 1
            elif stat.S_ISREG(s.st_mode):
                exe = bool(s.st_mode & 0o100)
                assert stat.S_IMODE(d.st_mode) == (0o555 if exe else 0o444), dst
                assert d.st_size == s.st_size and d.st_nlink == 1
                assert d.st_blocks == -(-s.st_size // 512)
                if s.st_size <= 1 << 20:
                    assert dst.read_bytes() == src.read_bytes(), dst
            else:
                assert stat.S_IMODE(d.st_mode) == 0o555
                subdirs = sum(1 for e in os.scandir(src) if e.is_dir(follow_symlinks=False))
                assert d.st_nlink == 2 + subdirs, dst
    assert seen > MANY


def test_large_files_compare_byte_for_byte(corpus: Corpus, mount: Mount) -> None:
    for name in ("one-mib", "big"):
        assert (mount.path / name).stat().st_size == (corpus.source / name).stat().st_size
        assert sha256_of(mount.path / name) == sha256_of(corpus.source / name)
    assert (mount.path / "big").stat().st_size == BIG_SIZE
    assert (mount.path / "empty-file").read_bytes() == b""


def test_deep_and_empty_directories(corpus: Corpus, mount: Mount) -> None:
    deep = mount.path.joinpath(*(f"d{i}" for i in range(25)))
    assert (deep / "leaf").read_bytes() == b"at the bottom"
    assert os.listdir(mount.path / "empty-dir") == []
    assert os.stat(mount.path / "empty-dir").st_size == 0


def test_root_attributes(mount: Mount) -> None:
    root = os.stat(mount.path)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o555
    assert root.st_ino == 1 and root.st_mtime == 0
    assert root.st_nlink == 2 + sum(1 for e in os.scandir(mount.path) if e.is_dir())


def test_content_equal_nodes_share_an_inode(mount: Mount) -> None:
    ino = lambda p: os.lstat(mount.path / p).st_ino  # noqa: E731
    assert ino("hello.txt") == ino("a/dup.txt")
    assert ino("hello-exe") != ino("hello.txt")  # same bytes, different mode
    assert ino("twin1") == ino("twin2")
    assert ino("twin1/same") == ino("twin2/same")
    assert ino("link-to-hello") != ino("a/link-to-hello")  # different targets


def read_dirents(path: Path) -> list[tuple[bytes, int]]:
    """(name, d_type) in readdir order, straight from getdents."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    out: list[tuple[bytes, int]] = []
    buf = ctypes.create_string_buffer(4096)
    try:
        while True:
            n = libc.syscall(217, fd, buf, len(buf))  # getdents64
            if n < 0:
                raise OSError(ctypes.get_errno(), "getdents64")
            if n == 0:
                return out
            pos = 0
            while pos < n:
                reclen = int.from_bytes(buf.raw[pos + 16 : pos + 18], "little")
                d_type = buf.raw[pos + 18]
                name = buf.raw[pos + 19 : pos + reclen].split(b"\0", 1)[0]
                out.append((name, d_type))
                pos += reclen
    finally:
        os.close(fd)


def test_directory_entries_carry_their_type(mount: Mount) -> None:
    types = dict(read_dirents(mount.path))
    assert types[b"hello.txt"] == 8  # DT_REG
    assert types[b"hello-exe"] == 8
    assert types[b"a"] == 4  # DT_DIR
    assert types[b"link-to-hello"] == 10  # DT_LNK
    assert types[b"dangling"] == 10


def test_large_directory_lists_every_name_once_in_order(mount: Mount) -> None:
    """5,000 entries span many readdir buffers: none lost or repeated at a boundary."""
    names = [name for name, _ in read_dirents(mount.path / "many")]
    assert names == sorted(f"entry-{i:05d}".encode() for i in range(MANY))
    assert len(os.listdir(mount.path / "many")) == MANY


def test_reads_at_odd_offsets_and_across_chunk_boundaries(corpus: Corpus, mount: Mount) -> None:
    source = (corpus.source / "big").read_bytes()
    rng = random.Random(7)
    # O_DIRECT passes the reader's exact offsets and sizes through to cafs.
    fd = os.open(mount.path / "big", os.O_RDONLY | os.O_DIRECT)
    try:
        cases = [(0, 1), (1, 4095), (4097, 1_000_001), (BIG_SIZE - 3, 10), (BIG_SIZE, 5)]
        # FastCDC cuts chunks between 64 KiB and 1 MiB: reads spanning 2 MiB
        # cross at least one boundary wherever they start.
        cases += [
            (rng.randrange(BIG_SIZE - 1), rng.choice([3, 65_537, 2_097_153])) for _ in range(40)
        ]
        for offset, size in cases:
            assert os.pread(fd, size, offset) == source[offset : offset + size], (offset, size)
    finally:
        os.close(fd)


def test_sixteen_threads_read_concurrently(corpus: Corpus, mount: Mount) -> None:
    source = (corpus.source / "big").read_bytes()
    small = sorted((corpus.source / "many").iterdir())[:800]

    def worker(seed: int) -> int:
        rng = random.Random(seed)
        checked = 0
        fd = os.open(mount.path / "big", os.O_RDONLY | os.O_DIRECT)
        try:
            for _ in range(40):
                offset, size = rng.randrange(BIG_SIZE), rng.randrange(1, 300_000)
                assert os.pread(fd, size, offset) == source[offset : offset + size]
                checked += 1
        finally:
            os.close(fd)
        for path in rng.sample(small, 50):
            assert (mount.path / "many" / path.name).read_bytes() == path.read_bytes()
            checked += 1
        return checked

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(worker, range(16))) == 16 * 90


def fuse_bytes_sent(mount: Mount) -> int:
    """Bytes the daemon has written (its replies to the kernel, logs aside)."""
    with open(f"/proc/{mount.process.pid}/io") as io:
        fields = dict(line.split(": ") for line in io.read().splitlines())
    return int(fields["wchar"])


def test_a_second_read_is_served_by_the_kernel(mount: Mount) -> None:
    path = mount.path / "one-mib"
    first = path.read_bytes()
    before = fuse_bytes_sent(mount)
    for _ in range(3):
        assert path.read_bytes() == first
    assert fuse_bytes_sent(mount) - before < len(first) // 4


def test_xattrs_expose_digests(corpus: Corpus, mount: Mount) -> None:
    hello = os.getxattr(mount.path / "hello.txt", BLOB_XATTR)
    assert hello == str(Digest.of(b"Hello World!")).encode()
    assert os.getxattr(mount.path, DIRECTORY_XATTR) == corpus.digest.encode()
    a = os.getxattr(mount.path / "a", DIRECTORY_XATTR)
    assert a.startswith(b"b3:") and len(a) == 47
    assert os.listxattr(mount.path / "hello.txt") == [BLOB_XATTR]
    assert os.listxattr(mount.path / "a") == [DIRECTORY_XATTR]
    assert os.listxattr(mount.path / "link-to-hello", follow_symlinks=False) == []
    for path, name, follow in [
        (mount.path / "hello.txt", DIRECTORY_XATTR, True),
        (mount.path / "a", BLOB_XATTR, True),
        (mount.path / "link-to-hello", BLOB_XATTR, False),
        (mount.path / "hello.txt", "user.other", True),
    ]:
        with pytest.raises(OSError, match=rf"\[Errno {errno.ENODATA}\]"):
            os.getxattr(path, name, follow_symlinks=follow)

    # The size-0 probe answers the length; a buffer one byte short is ERANGE.
    path = os.fsencode(mount.path / "hello.txt")
    assert libc.getxattr(path, BLOB_XATTR.encode(), None, 0) == 47
    buf = ctypes.create_string_buffer(46)
    assert libc.getxattr(path, BLOB_XATTR.encode(), buf, 46) == -1
    assert ctypes.get_errno() == errno.ERANGE
    names = BLOB_XATTR.encode() + b"\0"
    assert libc.listxattr(path, None, 0) == len(names)
    assert libc.listxattr(path, buf, 5) == -1 and ctypes.get_errno() == errno.ERANGE


def test_writes_are_refused_read_only(mount: Mount) -> None:
    m = mount.path
    expect_errno(errno.EROFS, os.open, m / "hello.txt", os.O_WRONLY)
    expect_errno(errno.EROFS, os.open, m / "hello.txt", os.O_RDWR)
    expect_errno(errno.EROFS, os.open, m / "new", os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.EROFS, os.mkdir, m / "newdir")
    expect_errno(errno.EROFS, os.unlink, m / "hello.txt")
    expect_errno(errno.EROFS, os.rmdir, m / "empty-dir")
    expect_errno(errno.EROFS, os.rename, m / "hello.txt", m / "moved")
    expect_errno(errno.EROFS, os.symlink, "x", m / "newlink")
    expect_errno(errno.EROFS, os.link, m / "hello.txt", m / "hardlink")
    expect_errno(errno.EROFS, os.chmod, m / "hello.txt", 0o777)
    expect_errno(errno.EROFS, os.truncate, m / "hello.txt", 0)
    expect_errno(errno.EROFS, os.setxattr, m / "hello.txt", "user.x", b"1")
    expect_errno(errno.EROFS, os.utime, m / "hello.txt", (5, 5))
    assert (m / "hello.txt").read_bytes() == b"Hello World!"


def test_lookup_and_type_errors(mount: Mount) -> None:
    m = mount.path
    expect_errno(errno.ENOENT, os.stat, m / "no-such-file")
    expect_errno(errno.ENOENT, os.stat, m / "a" / "no-such-file")
    expect_errno(errno.ENOTDIR, os.stat, m / "hello.txt" / "x")
    expect_errno(errno.ENOTDIR, os.listdir, m / "hello.txt")
    expect_errno(errno.EINVAL, os.readlink, m / "hello.txt")
    expect_errno(errno.EINVAL, os.readlink, m / "a")
    expect_errno(errno.ENOENT, os.stat, m / "dangling")  # its target is outside
    assert os.readlink(m / "dangling") == "/nix/store/somewhereelse"
    assert (m / "link-to-hello").read_bytes() == b"Hello World!"


def test_statfs(mount: Mount) -> None:
    info = os.statvfs(mount.path)
    assert info.f_namemax == 255
    assert info.f_flag & os.ST_RDONLY
    assert info.f_files > MANY

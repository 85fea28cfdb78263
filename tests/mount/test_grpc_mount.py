"""Mounting over gRPC: a ``cafs daemon`` process holds the store, mount processes read it.

The daemon keeps its blobs in an object store on disk (so multi-MiB files are
chunked) and its directories and PathInfos in SQLite files, all in a
temporary directory. Trees are ingested with ``cafs castore ingest`` and
``cafs import`` pointed at the daemon, then mounted by other processes with
``cafs castore mount`` and ``cafs mount`` over a unix socket, over TCP and
through ``cache://`` URLs, and every path is compared with the source:
kind, permissions, size, bytes and symlink target. Killing the daemon in the
middle of a read must give the reader EIO promptly, and the mount must serve
the file again once the daemon is back.

Every daemon is stopped by its PID and every mount unmounted by its path,
however a test ends.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import blake3
import pytest

from tests.daemon import Daemon, file_services, running_daemon, socket_path, spawn_daemon
from tests.mount.conftest import expect_errno, is_mounted, mounted, mounted_store
from tests.process import cafs

MIB = 1024 * 1024
HUGE_SIZE = 72 * MIB
"""The file the daemon is killed under: far more than the reader's read-ahead."""
PIECE = MIB
KILL_AFTER = 8 * MIB
EIO_WITHIN = 20.0
"""Seconds the reader may take to see EIO once the daemon is dead (it takes milliseconds)."""
RECOVER_WITHIN = 30.0


# -- what the daemon stores, and how clients reach it -----------------------------------


def remote_args(url: str, path_infos: bool = False) -> tuple[str, ...]:
    """Client flags that send every service (or the castore ones) to the daemon at ``url``."""
    args = ("--blob-service-addr", url, "--directory-service-addr", url)
    return (*args, "--path-info-service-addr", url) if path_infos else args


def make_tree(root: Path) -> Path:
    """Files of many sizes (some chunked), executables, symlinks, empty files and dirs."""
    rng = random.Random(20240611)
    root.mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"Hello World!")
    (root / "empty").write_bytes(b"")
    (root / "one-byte").write_bytes(b"x")
    (root / "page").write_bytes(rng.randbytes(4096))
    (root / "odd-size").write_bytes(rng.randbytes(100_003))
    (root / "names with spaces é ☃").write_bytes(b"unicode\n")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "tool").write_bytes(rng.randbytes(200_000))
    (bin_dir / "run.sh").write_bytes(b"#!/bin/sh\necho ran\n")
    for exe in ("tool", "run.sh"):
        (bin_dir / exe).chmod(0o755)
    (bin_dir / "alias").symlink_to("tool")
    data = root / "data"
    data.mkdir()
    (data / "three-mib").write_bytes(rng.randbytes(3 * MIB + 17))  # a dozen chunks
    (data / "nine-mib-exe").write_bytes(rng.randbytes(9 * MIB + 1))
    (data / "nine-mib-exe").chmod(0o755)
    (data / "dup").write_bytes(b"Hello World!")
    links = root / "links"
    links.mkdir()
    (links / "absolute-dangling").symlink_to("/nix/store/somewhereelse")
    (links / "up").symlink_to("../hello.txt")
    (links / "to-dir").symlink_to("../bin")
    (links / "loop").symlink_to("loop")
    (root / "empty-dir").mkdir()
    deep = root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"at the bottom")
    (root / "a" / "b" / "empty-file").write_bytes(b"")
    return root


@dataclass(frozen=True)
class Served:
    """Sources ingested into the backends that the module's daemon serves."""

    tree: Path
    digest: str
    """The castore root of ``tree``."""
    store_paths: dict[str, Path]
    """Store path basename -> the source imported under it."""
    backends: Path
    daemon: Daemon


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("grpc-mount")
    tree = make_tree(base / "src" / "tree")
    single = base / "src" / "single-chunked"
    single.write_bytes(random.Random(7).randbytes(2 * MIB + 5))
    link = base / "src" / "a-link"
    link.symlink_to("tree/bin/tool")
    backends = base / "backends"
    client = base / "client"
    with running_daemon(base / "daemon", socket_path(base), *file_services(backends)) as daemon:
        line = cafs("castore", "ingest", str(tree), *remote_args(daemon.url), home=client).stdout
        assert line.startswith(f"{tree}: directory b3:"), line
        sources = [tree, single, link]
        printed = cafs(
            "import", *map(str, sources), *remote_args(daemon.url, True), home=client
        ).stdout.split()
        basenames = [p.removeprefix("/nix/store/") for p in printed]
        assert [b.split("-", 1)[1] for b in basenames] == [s.name for s in sources]
        # Everything went to the daemon: the clients' embedded store was never created.
        assert not client.exists()
        assert (backends / "objects").is_dir()
        yield Served(
            tree,
            line.split()[2],
            dict(zip(basenames, sources, strict=True)),
            backends,
            daemon,
        )


# -- comparing trees --------------------------------------------------------------------


def describe(root: Path, is_mount: bool) -> dict[str, tuple[object, ...]]:
    """Every path under ``root`` (``root`` itself as ""): kind, executable bit, size,
    contents digest, link target. Each file is read through a fresh open."""
    found: dict[str, tuple[object, ...]] = {}

    def one(path: Path, rel: str) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("symlink", os.readlink(path))
            if is_mount:
                assert stat.S_IMODE(st.st_mode) == 0o444, rel
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("directory",)
            if is_mount:
                assert stat.S_IMODE(st.st_mode) == 0o555, rel
            for name in os.listdir(path):
                one(path / name, f"{rel}/{name}" if rel else name)
        else:
            assert stat.S_ISREG(st.st_mode), rel
            executable = bool(st.st_mode & 0o100)
            if is_mount:
                assert stat.S_IMODE(st.st_mode) == (0o555 if executable else 0o444), rel
            contents = path.read_bytes()
            assert len(contents) == st.st_size, rel
            found[rel] = ("file", executable, st.st_size, hashlib.sha256(contents).hexdigest())

    one(root, "")
    return found


def assert_same_tree(source: Path, mounted_path: Path) -> None:
    expected = describe(source, is_mount=False)
    assert describe(mounted_path, is_mount=True) == expected
    assert len(expected) > 1 or not source.is_dir()


def regular_files(root: Path) -> list[Path]:
    files = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                files.append(path)
    return files


def evict(root: Path) -> None:
    """Drop the kernel's cached pages of every file under ``root``.

    Files are opened with keep_cache, so a second read would otherwise be
    answered by the page cache and never reach the store.
    """
    for path in regular_files(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- reading over a unix socket and over TCP --------------------------------------------


def test_castore_mount_over_a_unix_socket(served: Served, tmp_path: Path) -> None:
    assert served.daemon.url.startswith("grpc+unix:///")
    flags = remote_args(served.daemon.url)
    with mounted(served.digest, tmp_path / "m", tmp_path / "home", *flags) as m:
        assert_same_tree(served.tree, m.path)
        digest = os.getxattr(m.path, "user.tvix.castore.directory.digest").decode()
        assert digest == served.digest
        assert m.process.poll() is None
    # No embedded store was made: the only local state is the plain copies of the large
    # blobs read (those finished before the mount stopped), each named by its digest.
    home = tmp_path / "home"
    assert set(os.listdir(home)) <= {"plain"}
    for copy in (home / "plain").iterdir() if (home / "plain").exists() else []:
        assert blake3.blake3(copy.read_bytes()).hexdigest() == copy.name


def test_store_mount_over_a_unix_socket(served: Served, tmp_path: Path) -> None:
    flags = (*remote_args(served.daemon.url, path_infos=True), "--list-root")
    with mounted_store(tmp_path / "m", tmp_path / "home", *flags) as m:
        assert sorted(os.listdir(m.path)) == sorted(served.store_paths)
        for basename, source in served.store_paths.items():
            assert_same_tree(source, m.path / basename)
        expect_errno(errno.ENOENT, os.lstat, m.path / ("0" * 32 + "-tree"))


def test_mount_over_tcp_with_urls_from_the_environment(served: Served, tmp_path: Path) -> None:
    with running_daemon(tmp_path / "daemon", "127.0.0.1:0", *file_services(served.backends)) as d:
        # The daemon logs the port it was given; the URL is built from it.
        host, port = d.url.removeprefix("grpc+http://").rsplit(":", 1)
        assert d.url.startswith("grpc+http://") and host == "127.0.0.1" and int(port) > 0
        env = {
            "BLOB_SERVICE_ADDR": d.url + "?wait-connect=1",
            "DIRECTORY_SERVICE_ADDR": d.url,
            "PATH_INFO_SERVICE_ADDR": d.url,
        }
        with mounted_store(tmp_path / "m", tmp_path / "home", env=env) as m:
            for basename, source in served.store_paths.items():
                assert_same_tree(source, m.path / basename)
        with mounted(served.digest, tmp_path / "c", tmp_path / "home", env=env) as m:
            assert_same_tree(served.tree, m.path)


# -- reading through cache:// URLs, then without the daemon ------------------------------


def cache_url(near: str, far: str) -> str:
    return f"cache://?near={near}&far={far}"


def test_cache_serves_what_it_kept_once_the_daemon_is_gone(served: Served, tmp_path: Path) -> None:
    """What the cache keeps near, on the mount process's side:

    * blobs: each blob read that has no chunks of its own (small files, and
      sibling files fetched ahead in one batch) is copied whole into the near
      object store; a chunked blob is read chunk by chunk, each chunk put
      near as it is, and once the whole blob has been read and hashed right
      its chunk list is recorded near too (before that it is remembered in
      the mount process's memory only);
    * directories: the first miss fetches the requested directory's whole
      closure from far and puts all of it into the near SQLite file;
    * PathInfos (store mode): a lookup found far is kept in the lru:// near.

    (The mount process itself also keeps every directory it loaded, and the
    kernel the pages it read; the pages are dropped before the second read.)
    So after one full read, a fresh open of any file finds the blob, or its
    remembered chunk list and every chunk, near. The control mount on the
    same daemon without a cache gets EIO for the same reads.
    """
    home = tmp_path / "home"
    with running_daemon(
        tmp_path / "daemon", socket_path(tmp_path), *file_services(served.backends)
    ) as daemon:
        far = daemon.url
        castore_cache = (
            "--blob-service-addr",
            cache_url("objectstore+file://" + quote(str(tmp_path / "near" / "objects")), far),
            "--directory-service-addr",
            cache_url("sqlite://" + quote(str(tmp_path / "near" / "directories.sqlite")), far),
        )
        store_cache = (
            "--blob-service-addr",
            cache_url("objectstore+file://" + quote(str(tmp_path / "near2" / "objects")), far),
            "--directory-service-addr",
            cache_url("sqlite://" + quote(str(tmp_path / "near2" / "directories.sqlite")), far),
            "--path-info-service-addr",
            cache_url("lru://?capacity=1000", far),
        )
        with (
            mounted(served.digest, tmp_path / "cached", home, *castore_cache) as cached,
            mounted_store(tmp_path / "store", home, *store_cache) as store,
            mounted(
                served.digest,
                tmp_path / "direct",
                home,
                *remote_args(far),
                "--plain-cache-size",
                "0",  # no cache at all, not even plain copies of large blobs
            ) as direct,
        ):
            assert_same_tree(served.tree, cached.path)
            for basename, source in served.store_paths.items():
                assert_same_tree(source, store.path / basename)
            assert_same_tree(served.tree, direct.path)

            assert daemon.terminate() == 0
            for mount in (cached, store, direct):
                evict(mount.path)

            assert_same_tree(served.tree, cached.path)
            for basename, source in served.store_paths.items():
                assert_same_tree(source, store.path / basename)
            # The control: the same reads without a cache go to the (gone) daemon.
            for path in regular_files(direct.path):
                if path.stat().st_size:
                    expect_errno(errno.EIO, path.read_bytes)
            for mount in (cached, store, direct):
                assert mount.process.poll() is None and is_mounted(mount.path)
            assert "UNAVAILABLE" in direct.stderr()
            assert "UNAVAILABLE" not in cached.stderr() + store.stderr()

        # A new mount process, the daemon still gone: everything is near, the
        # directories (the whole tree), the blobs, and the chunk lists of the
        # chunked blobs that were read through.
        with mounted(served.digest, tmp_path / "again", home, *castore_cache) as again:
            listing = describe_without_contents(again.path)
            assert listing == describe_without_contents(served.tree)
            assert_same_tree(served.tree, again.path)


def describe_without_contents(root: Path) -> dict[str, tuple[object, ...]]:
    """Kinds, modes, sizes and link targets: what directories alone answer."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            file = stat.S_ISREG(st.st_mode)
            size, executable = (st.st_size, bool(st.st_mode & 0o100)) if file else (None, None)
            found[rel] = (stat.S_IFMT(st.st_mode), executable, size, target)
    return found


# -- killing the daemon under a reader ----------------------------------------------------


class SlowReader(threading.Thread):
    """Reads a file piece by piece, checking each piece, and pauses once at ``pause_at``
    until told to go on; records how far it got and the error that stopped it."""

    def __init__(self, path: Path, expected: bytes, pause_at: int) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.expected = expected
        self.pause_at = pause_at
        self.paused = threading.Event()
        self.go_on = threading.Event()
        self.position = 0
        self.wrong_at: int | None = None
        self.error: OSError | None = None
        self.failed_after: float | None = None

    def run(self) -> None:
        try:
            with open(self.path, "rb", buffering=0) as f:
                while True:
                    if self.position >= self.pause_at and not self.paused.is_set():
                        self.paused.set()
                        self.go_on.wait(EIO_WITHIN)
                    piece = f.read(PIECE)
                    if not piece:
                        return
                    end = self.position + len(piece)
                    if piece != self.expected[self.position : end] and self.wrong_at is None:
                        self.wrong_at = self.position
                    self.position = end
        except OSError as exc:
            self.error = exc


def read_fresh(path: Path) -> bytes | OSError:
    """The whole file through a new open, or the EIO that refused it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        return exc


def test_killing_the_daemon_mid_read_is_eio_and_the_mount_recovers(
    served: Served, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    contents = os.urandom(HUGE_SIZE)
    (source / "huge").write_bytes(contents)
    (source / "small").write_bytes(b"small and read early")
    line = cafs("castore", "ingest", str(source), *remote_args(served.daemon.url), home=tmp_path)
    digest = line.stdout.split()[2]

    listen = socket_path(tmp_path)
    daemon = spawn_daemon(tmp_path / "daemon", listen, *file_services(served.backends))
    try:
        flags = remote_args(daemon.url)
        with mounted(digest, tmp_path / "m", tmp_path / "home", *flags) as m:
            huge = m.path / "huge"
            assert (m.path / "small").read_bytes() == b"small and read early"
            reader = SlowReader(huge, contents, KILL_AFTER)
            reader.start()
            assert reader.paused.wait(EIO_WITHIN), "the reader did not get going"
            daemon.kill()  # SIGKILL by PID: no graceful shutdown, as in a crash
            killed = time.monotonic()
            reader.go_on.set()
            reader.join(EIO_WITHIN)
            assert not reader.is_alive(), f"the read hangs {EIO_WITHIN}s after the kill"
            assert reader.wrong_at is None, f"wrong bytes at {reader.wrong_at}"
            assert reader.error is not None, "the read finished without the daemon"
            assert reader.error.errno == errno.EIO, reader.error
            assert KILL_AFTER <= reader.position < HUGE_SIZE
            assert time.monotonic() - killed < EIO_WITHIN

            # The mount stays up; what is known without the store still answers.
            assert m.process.poll() is None and is_mounted(m.path)
            assert os.stat(huge).st_size == HUGE_SIZE
            assert sorted(os.listdir(m.path)) == ["huge", "small"]
            with open(huge, "rb", buffering=0) as f:
                f.seek(HUGE_SIZE - PIECE)  # never read: not in the page cache
                expect_errno(errno.EIO, f.read, PIECE)

            # The daemon comes back on the same socket, over the same backends.
            daemon = spawn_daemon(tmp_path / "daemon", listen, *file_services(served.backends))
            assert daemon.url == f"grpc+unix://{Path(listen).absolute()}"
            # Fresh opens and reads, the first ones perhaps refused while the
            # client's channel waits out its reconnect back-off (at most 2 s).
            deadline = time.monotonic() + RECOVER_WITHIN
            again = read_fresh(huge)
            while isinstance(again, OSError) and time.monotonic() < deadline:
                time.sleep(0.2)
                again = read_fresh(huge)
            assert isinstance(again, bytes), f"the mount did not recover: {again}"
            assert len(again) == HUGE_SIZE
            assert again == contents
            assert m.process.poll() is None
    finally:
        daemon.terminate()

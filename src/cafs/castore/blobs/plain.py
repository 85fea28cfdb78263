"""Verified blobs kept whole as plain files, so the kernel can read them itself.

A blob read through the store costs a fetch, a decompression and a hash per
chunk, every time. Once a large blob has been read and its bytes hashed to
its digest, a plain copy of it can be trusted as it is: the mount hands its
reads to the kernel (FUSE passthrough), and a NAR render copies it with
``sendfile``. The copies live in one directory, named by the hex digest, at
most ``limit`` bytes of them, the least recently used removed first.

A copy appears whole or not at all: it is written to an unnamed file
(``O_TMPFILE``), hashed as it is written, made durable, and only then linked
under its name. Files here are never written again, only read or removed,
so several processes may share the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import blake3

from cafs import counters
from cafs.castore.blobs.base import BlobReader, BlobService, BlobWriter, ChunkMeta
from cafs.castore.digest import Digest
from cafs.castore.maintenance import Problem

log = logging.getLogger(__name__)

PLAIN_MIN_SIZE = 256 * 1024
"""Smaller blobs are one or two stored chunks: a plain copy would save little."""
FILL_BLOCK = 4 * 1024 * 1024
"""Bytes handed to the writing thread at once while a copy is made."""
STALE_TEMPORARY = 3600.0
"""Seconds after which a named temporary file (no ``O_TMPFILE`` here) is an orphan."""
TEMPORARY_PREFIX = ".tmp-"


class PlainFiles:
    """The directory of plain copies and what this process knows of it."""

    def __init__(self, root: Path, limit: int, min_size: int = PLAIN_MIN_SIZE) -> None:
        self.root = root
        self.limit = limit
        self.min_size = min_size
        self._index: OrderedDict[Digest, int] = OrderedDict()
        """Digest to size, least recently used first."""
        self._bytes = 0
        self._loaded: asyncio.Task[None] | None = None
        self._fills: dict[Digest, asyncio.Task[None]] = {}
        self._fill_slot = asyncio.Lock()
        self._touched: set[Digest] = set()

    # -- what is here ----------------------------------------------------------------

    def path(self, digest: Digest) -> str:
        return str(self.root / digest.hex())

    async def load(self) -> None:
        """Learn what the directory holds (once; later calls wait for the first)."""
        if self._loaded is None:
            self._loaded = asyncio.ensure_future(self._scan())
        await asyncio.shield(self._loaded)

    async def _scan(self) -> None:
        found = await asyncio.to_thread(self._scan_sync)
        for digest, size in found:
            if digest not in self._index:
                self._index[digest] = size
                self._bytes += size
        log.debug("plain files in %s: %d, %d bytes", self.root, len(found), self._bytes)
        await self._evict()

    def _scan_sync(self) -> list[tuple[Digest, int]]:
        found: list[tuple[float, Digest, int]] = []
        now = time.time()
        try:
            listing = os.scandir(self.root)
        except FileNotFoundError:
            return []  # made with the first copy
        with listing as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.name.startswith(TEMPORARY_PREFIX):
                    if now - info.st_mtime > STALE_TEMPORARY:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                    continue
                try:
                    digest = Digest(bytes.fromhex(entry.name))
                except ValueError:
                    continue  # not ours
                found.append((info.st_mtime, digest, info.st_size))
        found.sort()
        return [(digest, size) for _, digest, size in found]

    def lookup(self, digest: Digest) -> str | None:
        """The plain copy of ``digest``, if this process knows of one; marks it used."""
        if digest not in self._index:
            return None
        self._index.move_to_end(digest)
        if digest not in self._touched:
            # The order of use outlives the process as modification times,
            # written once per process and blob, off the caller's path.
            self._touched.add(digest)
            asyncio.get_running_loop().run_in_executor(None, _touch, self.path(digest))
        return self.path(digest)

    def size(self, digest: Digest) -> int | None:
        return self._index.get(digest)

    def vanished(self, digest: Digest) -> None:
        """Another process removed the copy: forget it here."""
        size = self._index.pop(digest, None)
        if size is not None:
            self._bytes -= size

    async def verify(self, report: Callable[[Problem], None], repair: bool) -> tuple[int, int]:
        """Hash every copy against its name: (copies checked, copies removed by ``repair``).

        A copy is trusted as the disk holds it (whoever can write here can
        change what a mount serves), so this is how a bad one is found.
        """
        await self.load()
        checked = removed = 0
        for digest in list(self._index):
            path = self.path(digest)
            try:
                actual = await asyncio.to_thread(_hash_file, path)
            except FileNotFoundError:
                continue
            checked += 1
            if actual == digest:
                continue
            report(Problem("plain", digest.hex(), "does not hash to its name"))
            if repair:
                self.vanished(digest)
                await asyncio.to_thread(_unlink_all, [path])
                removed += 1
        return checked, removed

    # -- making copies ------------------------------------------------------------------

    def want(self, digest: Digest, size: int, source: BlobService) -> None:
        """Make a plain copy of ``digest`` from ``source`` in the background, if it is worth one."""
        if (
            size < self.min_size
            or size > self.limit
            or digest in self._index
            or digest in self._fills
            or self._loaded is None
            or not self._loaded.done()
        ):
            return
        task = asyncio.ensure_future(self._fill(digest, size, source))
        self._fills[digest] = task
        task.add_done_callback(lambda _: self._fills.pop(digest, None))

    async def wait(self) -> None:
        """Until the copies under way are made (or have failed)."""
        while self._fills:
            await asyncio.gather(*self._fills.values(), return_exceptions=True)

    async def close(self) -> None:
        """Drop the copies under way: an unnamed file leaves nothing behind."""
        for task in list(self._fills.values()):
            task.cancel()
        await asyncio.gather(*self._fills.values(), return_exceptions=True)

    async def _fill(self, digest: Digest, size: int, source: BlobService) -> None:
        async with self._fill_slot:  # one at a time: copies should not crowd out reads
            try:
                await self._copy(digest, size, source)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                counters.add("cafs_plain_files", 1, event="failed")
                log.warning("blob %s: no plain copy made: %s", digest, exc)

    async def _copy(self, digest: Digest, size: int, source: BlobService) -> None:
        reader = await source.open_read(digest)
        if reader is None:
            return
        target = await asyncio.to_thread(_Target.create, self.root)
        try:
            async with reader:
                if reader.size != size:
                    raise ValueError(f"it holds {reader.size} bytes, not {size}")
                while data := await reader.read_some(FILL_BLOCK):
                    await asyncio.to_thread(target.write, data)
            await asyncio.to_thread(target.finish, digest, size, self.path(digest))
        finally:
            await asyncio.to_thread(target.discard)
        self._index[digest] = size
        self._bytes += size
        counters.add("cafs_plain_files", 1, event="made")
        log.debug("blob %s: plain copy made (%d bytes)", digest, size)
        await self._evict()

    async def _evict(self) -> None:
        doomed: list[str] = []
        while self._bytes > self.limit and self._index:
            digest, size = self._index.popitem(last=False)
            self._bytes -= size
            doomed.append(self.path(digest))
        if doomed:
            await asyncio.to_thread(_unlink_all, doomed)
            counters.add("cafs_plain_files", len(doomed), event="evicted")


class _Target:
    """One plain copy being written: an unnamed file, hashed as it grows."""

    def __init__(self, fd: int, temporary: str | None) -> None:
        self.fd = fd
        self.temporary = temporary
        self.hasher = blake3.blake3()
        self.written = 0
        self._lock = threading.Lock()
        """Held by a write and by naming the copy: a copy dropped meanwhile closes its fd
        only after them (a number closed under them could be reused by another file)."""

    @classmethod
    def create(cls, root: Path) -> _Target:
        root.mkdir(parents=True, exist_ok=True)
        try:
            return cls(os.open(root, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o444), None)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        name = str(root / f"{TEMPORARY_PREFIX}{os.getpid()}-{time.monotonic_ns()}")
        return cls(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o444), name)

    def write(self, data: bytes | memoryview) -> None:
        with self._lock:
            if self.fd < 0:
                raise OSError(errno.EBADF, "the copy was dropped")
            self.hasher.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            self.written += len(data)

    def finish(self, digest: Digest, size: int, path: str) -> None:
        """Check, make durable and name the copy; refused if it is not ``digest``."""
        with self._lock:  # the fd stays this copy's until it is named (see ``_lock``)
            if self.fd < 0:
                raise OSError(errno.EBADF, "the copy was dropped")
            self._finish(digest, size, path)

    def _finish(self, digest: Digest, size: int, path: str) -> None:
        if self.written != size or self.hasher.digest() != digest:
            raise ValueError("its bytes do not hash to its digest")
        os.fdatasync(self.fd)
        # Drop the written pages: the blob's bytes are in memory already (the chunks just
        # read), and pages left by writes are small ones, which read back at about two
        # thirds of the speed of the large ones that readahead makes.
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            if self.temporary is None:
                # linkat(AT_SYMLINK_FOLLOW) of the fd's /proc link names the unnamed file
                # (os.link uses linkat only when given a directory fd).
                proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.link(str(self.fd), path, src_dir_fd=proc, follow_symlinks=True)
                finally:
                    os.close(proc)
            else:
                os.rename(self.temporary, path)
                self.temporary = None
        except FileExistsError:
            pass  # another process made the same copy

    def discard(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        if self.temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temporary)
            self.temporary = None


def _hash_file(path: str) -> bytes:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.digest()


def _touch(path: str) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class PlainFileReader(BlobReader):
    """Reads a plain copy; its bytes were verified when it was made."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._pos = 0

    @property
    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def _set_position(self, position: int) -> None:
        self._pos = position

    async def read(self, n: int = -1) -> bytes:
        want = self._size - self._pos if n < 0 else min(n, self._size - self._pos)
        if want <= 0:
            return b""
        data = await asyncio.to_thread(_pread_exactly, self._fd, want, self._pos)
        self._pos += len(data)
        return data

    async def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) < size:
        pieces = [data]
        got = len(data)
        while got < size:
            more = os.pread(fd, size - got, offset + got)
            if not more:
                raise OSError(errno.EIO, "a plain copy is shorter than its blob")
            pieces.append(more)
            got += len(more)
        data = b"".join(pieces)
    return data


class _CopyWhenDone(BlobReader):
    """A reader that asks for a plain copy of its blob once it is closed.

    Not sooner: a copy made while the first reader still reads would fetch,
    decompress and hash the same chunks beside it, on the same disk and
    cores. Once it is done, what it read is in the page cache (and the
    service's recent chunks), and the copy is made in the background.
    """

    def __init__(
        self, reader: BlobReader, digest: Digest, plain: PlainFiles, source: BlobService
    ) -> None:
        self._reader = reader
        self._digest = digest
        self._plain = plain
        self._source = source

    @property
    def size(self) -> int:
        return self._reader.size

    def tell(self) -> int:
        return self._reader.tell()

    def _set_position(self, position: int) -> None:
        raise AssertionError("seek is passed on whole")

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return await self._reader.seek(offset, whence)

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(n)

    async def read_some(self, n: int) -> bytes:
        return await self._reader.read_some(n)

    async def close(self) -> None:
        try:
            await self._reader.close()
        finally:
            self._plain.want(self._digest, self._reader.size, self._source)


class PlainFileBlobService(BlobService):
    """A blob service that reads large blobs from their plain copies, making them as it goes.

    With ``fill`` off it only reads the copies that are there; ``finish``
    makes ``close`` wait for the copies under way (a one-shot command asked
    to leave them behind) instead of dropping them (a mount going away).
    """

    def __init__(
        self, inner: BlobService, plain: PlainFiles, *, fill: bool = True, finish: bool = False
    ) -> None:
        self.inner = inner
        self.plain = plain
        self.fill = fill
        self.finish = finish

    def plain_file(self, digest: Digest) -> str | None:
        return self.plain.lookup(digest)

    async def has(self, digest: Digest) -> bool:
        return self.plain.size(digest) is not None or await self.inner.has(digest)

    async def open_read(self, digest: Digest) -> BlobReader | None:
        path = self.plain.lookup(digest)
        size = self.plain.size(digest)
        if path is not None and size is not None:
            try:
                fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self.plain.vanished(digest)
            else:
                return PlainFileReader(fd, size)
        reader = await self.inner.open_read(digest)
        if reader is not None and self.fill and reader.size >= self.plain.min_size:
            return _CopyWhenDone(reader, digest, self.plain, self.inner)
        return reader

    async def open_write(self) -> BlobWriter:
        return await self.inner.open_write()

    async def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        return await self.inner.chunks(digest)

    async def put_files(self, paths: Sequence[str]) -> list[tuple[Digest, int]]:
        return await self.inner.put_files(paths)

    async def put_many(self, blobs: Sequence[bytes]) -> list[Digest]:
        return await self.inner.put_many(blobs)

    async def read_many(self, digests: Sequence[Digest]) -> dict[Digest, bytes]:
        return await self.inner.read_many(digests)

    async def put_chunk(self, data: bytes) -> Digest:
        return await self.inner.put_chunk(data)

    async def adopt_chunks(self, digest: Digest, chunks: Sequence[ChunkMeta]) -> None:
        await self.inner.adopt_chunks(digest, chunks)

    async def connect(self) -> None:
        await self.inner.connect()
        await self.plain.load()

    async def close(self) -> None:
        try:
            if self.finish:
                await self.plain.wait()
            await self.plain.close()
        finally:
            await self.inner.close()

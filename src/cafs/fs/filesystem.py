"""The filesystem model: every operation of the mount, with its errno, and no FUSE.

The kernel asks by inode number; this model answers from the inode tracker,
filling it lazily: a root name through the ``RootNodes`` provider, a deeper
name through its parent's Directory, fetched from the DirectoryService the
first time anything inside it is asked for. Open files hold a seekable blob
reader each; open root listings hold their place in the provider's stream.

Nothing here blocks the event loop: every service call is awaited, and
requests for different inodes and handles proceed concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field

from cafs.castore.blobs.base import BlobReader, BlobService, BytesBlobReader
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directory import Directory
from cafs.castore.nodes import Node, display_name
from cafs.fs.attrs import Attributes, attributes, root_attributes
from cafs.fs.inodes import (
    ROOT_INO,
    DirectoryInode,
    InodeData,
    InodeTracker,
    RegularInode,
    SymlinkInode,
)
from cafs.fs.root_nodes import RootNodes

log = logging.getLogger("cafs.fs")

XATTR_DIRECTORY_DIGEST = b"user.tvix.castore.directory.digest"
XATTR_BLOB_DIGEST = b"user.tvix.castore.blob.digest"

NAME_MAX = 255

PRELOAD_BATCH = 64
"""Subdirectories loaded at once when a listing needs their attributes."""

SIBLING_MAX_SIZE = 64 * 1024
"""Files up to this size are fetched with their siblings (see ``_fetch_siblings``)."""
SIBLING_BATCH_FILES = 256
SIBLING_BATCH_BYTES = 4 * 1024 * 1024
BLOB_CACHE_BYTES = 32 * 1024 * 1024
"""Fetched-ahead small blobs waiting for their open; the oldest go first."""


class FsError(Exception):
    """An operation's answer is an errno; the adapter passes it to the kernel."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    attrs: Attributes
    next_offset: int
    """The offset a later readdir passes to resume after this entry."""


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    files: int
    name_max: int


@dataclass(slots=True)
class _RootListing:
    """One open root listing: the provider's stream and what it has given so far.

    Entries are kept so that any offset handed out can be resumed exactly,
    and the stream is pulled only as far as readers ask.
    """

    stream: AsyncGenerator[tuple[bytes, int], None]
    seen: list[tuple[bytes, int]] = field(default_factory=list)
    exhausted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class _DirHandle:
    ino: int
    root_listing: _RootListing | None


@dataclass(slots=True)
class _FileHandle:
    """An open file and its blob reader.

    The first open of a blob opens the reader; later opens make it at the
    first read that reaches cafs. The page cache is kept across opens, so
    most re-opens are never followed by a read and cost no blob fetch.
    """

    ino: int
    data: RegularInode
    reader: BlobReader | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Filesystem:
    """A read-only view of castore content under a root provider."""

    def __init__(
        self,
        blobs: BlobService,
        directories: DirectoryService,
        root_nodes: RootNodes,
        *,
        list_root: bool = False,
        show_xattr: bool = True,
    ) -> None:
        self.blobs = blobs
        self.directories = directories
        self.root_nodes = root_nodes
        self.list_root = list_root
        self.show_xattr = show_xattr
        self.inodes = InodeTracker()
        self._root_names: dict[bytes, int] = {}
        self._loading: dict[int, asyncio.Future[DirectoryInode]] = {}
        self._present: set[Digest] = set()
        self._parent_hint: dict[int, int] = {}
        self._ahead: OrderedDict[Digest, bytes] = OrderedDict()
        self._ahead_bytes = 0
        self._in_flight: dict[Digest, asyncio.Future[dict[Digest, bytes]]] = {}
        self._dir_handles: dict[int, _DirHandle] = {}
        self._file_handles: dict[int, _FileHandle] = {}
        self._next_dir_handle = 1
        self._next_file_handle = 1

    # -- inodes and directories --------------------------------------------

    def _data(self, ino: int) -> InodeData:
        data = self.inodes.get(ino)
        if data is None:
            raise FsError(errno.ENOENT, f"inode {ino} is unknown")
        return data

    async def _populated(self, ino: int) -> DirectoryInode:
        """The directory behind ``ino``, fetched from the DirectoryService once.

        Concurrent callers share one fetch. A directory the service does not
        have is a hole in the store: EIO, and the next call tries again.
        """
        data = self._data(ino)
        if not isinstance(data, DirectoryInode):
            raise FsError(errno.ENOTDIR)
        if data.populated:
            return data
        pending = self._loading.get(ino)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(ino, data))
            self._loading[ino] = pending
            pending.add_done_callback(lambda _: self._loading.pop(ino, None))
        return await asyncio.shield(pending)

    async def _fetch(self, ino: int, data: DirectoryInode) -> DirectoryInode:
        try:
            directory: Directory | None = await self.directories.get(data.digest)
        except Exception as exc:
            log.warning("ino=%d directory=%s: fetch failed: %s", ino, data.digest, exc)
            raise FsError(errno.EIO, str(exc)) from exc
        if directory is None:
            log.warning("ino=%d directory=%s: not in the directory service", ino, data.digest)
            raise FsError(errno.EIO, f"directory {data.digest} is missing")
        populated = self.inodes.populate(ino, directory)
        log.debug("ino=%d directory=%s: populated, %d entries", ino, data.digest, len(directory))
        return populated

    async def _preload(self, inos: Iterable[int]) -> None:
        """Load the directories among ``inos`` so their attributes are complete.

        A directory's link count depends on its subdirectories, so listing a
        parent loads its subdirectories (concurrently). One that cannot be
        loaded is reported with fallback attributes; entering it gives EIO.
        """
        wanted = []
        for ino in inos:
            data = self.inodes.get(ino)
            if isinstance(data, DirectoryInode) and not data.populated:
                wanted.append(ino)
        for start in range(0, len(wanted), PRELOAD_BATCH):
            batch = wanted[start : start + PRELOAD_BATCH]
            await asyncio.gather(*(self._populated(ino) for ino in batch), return_exceptions=True)

    async def _attributes(self, ino: int) -> Attributes:
        data = self._data(ino)
        if isinstance(data, DirectoryInode) and not data.populated:
            await self._preload([ino])
        return attributes(ino, data)

    def _root_attributes(self) -> Attributes:
        return root_attributes(self.root_nodes.subdirectories)

    # -- metadata ------------------------------------------------------------

    async def getattr(self, ino: int) -> Attributes:
        if ino == ROOT_INO:
            return self._root_attributes()
        return await self._attributes(ino)

    async def lookup(self, parent: int, name: bytes) -> Attributes:
        if parent == ROOT_INO:
            ino = await self._root_lookup(name)
        else:
            directory = await self._populated(parent)
            found = directory.index.get(name)
            if found is None:
                raise FsError(errno.ENOENT)
            ino = found
            self._parent_hint.setdefault(ino, parent)
        return await self._attributes(ino)

    async def _root_lookup(self, name: bytes) -> int:
        known = self._root_names.get(name)
        if known is not None:
            return known
        if not name or len(name) > NAME_MAX or b"/" in name:
            raise FsError(errno.ENOENT)
        try:
            node = await self.root_nodes.get_by_basename(name)
        except Exception as exc:
            log.warning("root name %s: lookup failed: %s", display_name(name), exc)
            raise FsError(errno.EIO, str(exc)) from exc
        if node is None:
            raise FsError(errno.ENOENT)
        return self._root_ino(name, node)

    def _root_ino(self, name: bytes, node: Node) -> int:
        """The inode of root entry ``name``; the first node given for a name stays."""
        ino = self._root_names.get(name)
        if ino is None:
            ino = self._root_names[name] = self.inodes.put(node)
        return ino

    # -- directory listings ----------------------------------------------------

    async def opendir(self, ino: int) -> int:
        if ino == ROOT_INO:
            if not self.list_root:
                raise FsError(errno.EPERM, "listing the root is off (see --list-root)")
            listing: _RootListing | None = _RootListing(self._root_stream())
        else:
            await self._populated(ino)
            listing = None
        fh = self._next_dir_handle
        self._next_dir_handle += 1
        self._dir_handles[fh] = _DirHandle(ino, listing)
        log.debug("opendir ino=%d fh=%d", ino, fh)
        return fh

    async def _root_stream(self) -> AsyncGenerator[tuple[bytes, int], None]:
        async for name, node in self.root_nodes.list():
            yield name, self._root_ino(name, node)

    async def readdir(self, fh: int, offset: int) -> AsyncGenerator[DirEntry, None]:
        """Entries from ``offset`` on; stop pulling whenever the caller is full.

        Offsets are positions in a listing that never changes under its
        handle, so an entry that did not fit is given again from its offset.
        """
        handle = self._dir_handles.get(fh)
        if handle is None:
            log.warning("readdir fh=%d: unknown directory handle", fh)
            raise FsError(errno.EIO)
        if handle.root_listing is not None:
            async for entry in self._read_root_listing(handle.root_listing, offset):
                yield entry
            return
        directory = await self._populated(handle.ino)
        entries = directory.entries
        assert entries is not None
        position = offset
        while position < len(entries):
            batch = entries[position : position + PRELOAD_BATCH]
            await self._preload(ino for _, ino in batch)
            for name, ino in batch:
                position += 1
                self._parent_hint.setdefault(ino, handle.ino)
                yield DirEntry(name, attributes(ino, self._data(ino)), position)

    async def _read_root_listing(
        self, listing: _RootListing, offset: int
    ) -> AsyncGenerator[DirEntry, None]:
        position = offset
        while True:
            async with listing.lock:
                if position >= len(listing.seen) and not listing.exhausted:
                    await self._pull_root(listing)
                if position >= len(listing.seen):
                    return
                batch = listing.seen[position:]
            await self._preload(ino for _, ino in batch)
            for name, ino in batch:
                position += 1
                yield DirEntry(name, attributes(ino, self._data(ino)), position)

    async def _pull_root(self, listing: _RootListing) -> None:
        """Take the next batch of the provider's stream into the listing."""
        try:
            for _ in range(PRELOAD_BATCH):
                listing.seen.append(await anext(listing.stream))
        except StopAsyncIteration:
            listing.exhausted = True
        except Exception as exc:
            log.warning("root listing failed: %s", exc)
            raise FsError(errno.EIO, str(exc)) from exc

    async def releasedir(self, fh: int) -> None:
        handle = self._dir_handles.pop(fh, None)
        if handle is None:
            log.warning("releasedir fh=%d: unknown directory handle", fh)
        elif handle.root_listing is not None:
            await handle.root_listing.stream.aclose()

    # -- files -------------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> int:
        if ino == ROOT_INO:
            raise FsError(errno.ENOSYS)
        data = self._data(ino)
        if not isinstance(data, RegularInode):
            raise FsError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise FsError(errno.EROFS)
        reader = None
        if data.digest not in self._present:
            # First open of this blob: open the reader now (one fetch answers
            # both "is it there" and the read that usually follows).
            reader = await self._first_reader(ino, data)
            # Blobs are never taken back: once seen, a digest needs no check.
            self._present.add(data.digest)
        fh = self._next_file_handle
        self._next_file_handle += 1
        self._file_handles[fh] = _FileHandle(ino, data, reader)
        log.debug("open ino=%d fh=%d blob=%s", ino, fh, data.digest)
        return fh

    def _take_ahead(self, digest: Digest) -> bytes | None:
        fetched = self._ahead.pop(digest, None)
        if fetched is not None:
            self._ahead_bytes -= len(fetched)
        return fetched

    async def _first_reader(self, ino: int, data: RegularInode) -> BlobReader:
        fetched = self._take_ahead(data.digest)
        if fetched is not None:
            return BytesBlobReader(fetched)
        pending = self._in_flight.get(data.digest)
        if pending is not None:
            # Fetched with its siblings: wait for the batch (kept on arrival).
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
            fetched = self._take_ahead(data.digest)
            if fetched is not None:
                return BytesBlobReader(fetched)
        else:
            self._fetch_siblings(ino)
        return await self._open_blob("open", ino, data.digest)

    async def _open_blob(self, operation: str, ino: int, digest: Digest) -> BlobReader:
        """A reader over ``digest``; EIO (logged) if the store lacks it or fails."""
        try:
            reader = await self.blobs.open_read(digest)
        except Exception as exc:
            log.warning("%s ino=%d blob=%s: %s", operation, ino, digest, exc)
            raise FsError(errno.EIO, str(exc)) from exc
        if reader is None:
            log.warning("%s ino=%d blob=%s: not in the blob service", operation, ino, digest)
            raise FsError(errno.EIO, f"blob {digest} is missing")
        return reader

    def _fetch_siblings(self, ino: int) -> None:
        """Start fetching the small files after ``ino`` in its directory, in one batch.

        A program that opens one file of a directory usually opens its
        neighbours next (a build, a walk that reads). Each fetch costs a
        round trip to the store (a thread hop, a network request), so the
        neighbours' blobs are fetched together in the background, and their
        opens find them ready. Files already fetched or on their way are
        skipped, so a directory read in order costs one batch per
        ``SIBLING_BATCH_FILES`` files.
        """
        parent = self._parent_hint.get(ino)
        directory = self.inodes.get(parent) if parent is not None else None
        if not isinstance(directory, DirectoryInode) or directory.entries is None:
            return
        entries = directory.entries
        start = next((i for i, (_, child) in enumerate(entries) if child == ino), 0)
        wanted: list[Digest] = []
        total = 0
        for _, child in entries[start + 1 :] + entries[:start]:
            data = self.inodes.get(child)
            if (
                not isinstance(data, RegularInode)
                or data.size > SIBLING_MAX_SIZE
                or data.digest in self._present
                or data.digest in self._ahead
                or data.digest in self._in_flight
            ):
                continue
            wanted.append(data.digest)
            total += data.size
            if len(wanted) == SIBLING_BATCH_FILES or total >= SIBLING_BATCH_BYTES:
                break
        if not wanted:
            return
        batch = asyncio.ensure_future(self.blobs.read_many(wanted))
        for digest in wanted:
            self._in_flight[digest] = batch
        batch.add_done_callback(lambda done: self._keep_fetched(wanted, done))

    def _keep_fetched(
        self, wanted: list[Digest], done: asyncio.Future[dict[Digest, bytes]]
    ) -> None:
        for digest in wanted:
            self._in_flight.pop(digest, None)
        if done.cancelled() or done.exception() is not None:
            log.debug("fetching ahead failed: %s", None if done.cancelled() else done.exception())
            return
        for digest, data in done.result().items():
            if digest in self._present or digest in self._ahead:
                continue
            self._ahead[digest] = data
            self._ahead_bytes += len(data)
        while self._ahead_bytes > BLOB_CACHE_BYTES:
            _, dropped = self._ahead.popitem(last=False)
            self._ahead_bytes -= len(dropped)

    def contents_at_hand(self, fh: int) -> bytes | None:
        """A small file's whole contents, when its open already fetched them.

        The adapter hands these to the kernel's page cache with the open, so
        the read that follows needs no round trip.
        """
        handle = self._file_handles.get(fh)
        if handle is None or not isinstance(handle.reader, BytesBlobReader):
            return None
        if not 0 < handle.reader.size <= SIBLING_MAX_SIZE:
            return None
        return handle.reader.contents

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes from ``offset``, fewer only at the end of the file."""
        handle = self._file_handles.get(fh)
        if handle is None:
            log.warning("read fh=%d: unknown file handle", fh)
            raise FsError(errno.EIO)
        if offset >= handle.data.size or size <= 0:
            return b""
        async with handle.lock:
            try:
                reader = handle.reader
                if reader is None:
                    reader = await self._open_blob("read", handle.ino, handle.data.digest)
                    handle.reader = reader
                if reader.tell() != offset:
                    await reader.seek(offset)
                return await reader.read(size)
            except FsError:
                raise
            except Exception as exc:
                log.warning(
                    "read ino=%d fh=%d blob=%s offset=%d size=%d: %s",
                    handle.ino,
                    fh,
                    handle.data.digest,
                    offset,
                    size,
                    exc,
                )
                raise FsError(errno.EIO, str(exc)) from exc

    async def release(self, fh: int) -> None:
        handle = self._file_handles.pop(fh, None)
        if handle is None:
            log.warning("release fh=%d: unknown file handle", fh)
        elif handle.reader is not None:
            await handle.reader.close()

    async def readlink(self, ino: int) -> bytes:
        if ino == ROOT_INO:
            raise FsError(errno.ENOSYS)
        data = self._data(ino)
        if not isinstance(data, SymlinkInode):
            raise FsError(errno.EINVAL)
        return data.target

    # -- extended attributes ---------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        """The digest behind an inode, as ``b3:<base64>``.

        Size probing and ERANGE are the adapter's (and the kernel's) part.
        """
        if not self.show_xattr:
            raise FsError(errno.ENOSYS)
        if ino == ROOT_INO:
            root_digest = self.root_nodes.root_digest
            if name == XATTR_DIRECTORY_DIGEST and root_digest is not None:
                return str(root_digest).encode()
            raise FsError(errno.ENODATA)
        data = self.inodes.get(ino)
        if isinstance(data, DirectoryInode) and name == XATTR_DIRECTORY_DIGEST:
            return str(data.digest).encode()
        if isinstance(data, RegularInode) and name == XATTR_BLOB_DIGEST:
            return str(data.digest).encode()
        raise FsError(errno.ENODATA)

    async def listxattr(self, ino: int) -> list[bytes]:
        if not self.show_xattr:
            raise FsError(errno.ENOSYS)
        if ino == ROOT_INO:
            return [XATTR_DIRECTORY_DIGEST] if self.root_nodes.root_digest is not None else []
        data = self.inodes.get(ino)
        if isinstance(data, DirectoryInode):
            return [XATTR_DIRECTORY_DIGEST]
        if isinstance(data, RegularInode):
            return [XATTR_BLOB_DIGEST]
        return []

    def statfs(self) -> StatFs:
        return StatFs(block_size=4096, blocks=0, files=len(self.inodes) + 1, name_max=NAME_MAX)

    async def close(self) -> None:
        """Close every open file and listing (at unmount)."""
        for fh in list(self._file_handles):
            await self.release(fh)
        for fh in list(self._dir_handles):
            await self.releasedir(fh)

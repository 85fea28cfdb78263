"""The filesystem model: every operation of the mount, with its errno, and no FUSE.

The kernel asks by inode number; this model answers from the inode tracker,
filling it lazily: a root name through the ``RootNodes`` provider, a deeper
name through its parent's Directory, fetched from the DirectoryService the
first time anything inside it is asked for. Open files hold a seekable blob
reader each; open root listings hold their place in the provider's stream.

Inodes live while the kernel holds them: ``lookup`` and each entry of a
listing with attributes count one (``remember``), ``forget`` takes counts
back, and an inode nobody holds is freed with what was loaded for it.

Nothing here blocks the event loop: every service call is awaited, and
requests for different inodes and handles proceed concurrently.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field

from cafs.castore.blobs.base import BlobReader, BlobService, BytesBlobReader
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, Node, display_name
from cafs.fs.attrs import Attributes, attributes, root_attributes
from cafs.fs.inodes import (
    ROOT_INO,
    DirectoryInode,
    InodeData,
    InodeTracker,
    RegularInode,
    SymlinkInode,
)
from cafs.fs.prefetch import SIBLING_MAX_SIZE, SiblingPrefetch
from cafs.fs.root_nodes import RootNodes

log = logging.getLogger(__name__)

XATTR_DIRECTORY_DIGEST = b"user.tvix.castore.directory.digest"
XATTR_BLOB_DIGEST = b"user.tvix.castore.blob.digest"

NAME_MAX = 255

PRELOAD_BATCH = 64

HANDLE_INO_SHIFT = 24
HANDLE_LOW_MASK = (1 << HANDLE_INO_SHIFT) - 1
"""Handle numbers: the inode above bit 24, a counter below (see ``_new_handle``)."""
"""Subdirectories loaded at once when a listing needs their attributes."""

ROOT_NAMES_MAX = 65536
"""Root names remembered with their nodes (store mode: saves a PathInfo lookup)."""


class FsError(Exception):
    """An operation's answer is an errno; the protocol layer passes it to the kernel."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    ino: int
    kind: int
    """The ``S_IFMT`` bits of the entry's mode (its ``d_type``)."""
    next_offset: int
    """The offset a later readdir passes to resume after this entry."""
    attrs: Attributes | None
    """Given only to listings that asked for attributes."""


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

    stream: AsyncGenerator[tuple[bytes, Node], None]
    seen: list[tuple[bytes, Node]] = field(default_factory=list)
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
    plain: str | None = None
    """A plain file of the blob's verified bytes, which the kernel may read itself."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _kind(node: Node) -> int:
    if isinstance(node, DirectoryNode):
        return stat.S_IFDIR
    if isinstance(node, FileNode):
        return stat.S_IFREG
    return stat.S_IFLNK


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
        self.prefetch = SiblingPrefetch(blobs)
        self._root_names: OrderedDict[bytes, Node] = OrderedDict()
        self._loading: dict[int, asyncio.Future[DirectoryInode]] = {}
        self._parent_hint: dict[int, int] = {}
        self._dir_handles: dict[int, _DirHandle] = {}
        self._file_handles: dict[int, _FileHandle] = {}
        self._handle_counter = itertools.count(1)
        self.resumed = False
        """Set when serving a connection taken over: unknown handles are rebuilt from their
        inode, and releasing one is no surprise."""

    @property
    def root_listing_grows(self) -> bool:
        """Whether a root listing may differ from one open to the next."""
        return self.list_root and not self.root_nodes.fixed

    def names_are_fixed(self, parent: int) -> bool:
        """Whether a name missing from ``parent`` stays missing (so may be cached)."""
        if parent == ROOT_INO:
            return self.root_nodes.fixed
        return self.inodes.get(parent) is not None

    # -- inode lifetime --------------------------------------------------------

    def remember(self, ino: int) -> None:
        """The kernel was given ``ino`` once more (an entry with attributes)."""
        if ino != ROOT_INO:
            self.inodes.remember(ino)

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` references to ``ino``."""
        if ino != ROOT_INO and self.inodes.forget(ino, count):
            self._freed(ino)

    def _freed(self, ino: int) -> None:
        self._parent_hint.pop(ino, None)
        log.debug("ino=%d: freed", ino)

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
        data.populate(directory)
        log.debug("ino=%d directory=%s: populated, %d entries", ino, data.digest, len(directory))
        return data

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

    def _entry_attributes(self, node: Node, loaded: InodeData | None = None) -> Attributes:
        """Attributes of ``node``'s inode, resolved now (after any wait).

        The inode is looked up (or allocated) at the last moment, with no
        wait between it and the reply, so a FORGET cannot free it in between.
        A directory loaded for these attributes whose inode was freed
        meanwhile lends its loaded data to the new one.
        """
        ino = self.inodes.put(node)
        data = self._data(ino)
        if (
            isinstance(data, DirectoryInode)
            and not data.populated
            and isinstance(loaded, DirectoryInode)
            and loaded.directory is not None
        ):
            data.populate(loaded.directory)
        return attributes(ino, data)

    async def _node_attributes(self, node: Node) -> Attributes:
        ino = self.inodes.put(node)
        data = self._data(ino)
        if isinstance(data, DirectoryInode) and not data.populated:
            await self._preload([ino])
        return self._entry_attributes(node, data)

    def _root_attributes(self) -> Attributes:
        return root_attributes(self.root_nodes.subdirectories)

    # -- metadata ------------------------------------------------------------

    async def getattr(self, ino: int) -> Attributes:
        if ino == ROOT_INO:
            return self._root_attributes()
        data = self._data(ino)
        if isinstance(data, DirectoryInode) and not data.populated:
            await self._preload([ino])
        return attributes(ino, data)

    async def lookup(self, parent: int, name: bytes) -> Attributes:
        """The entry ``name`` in ``parent``; the kernel holds one more count on it."""
        if parent == ROOT_INO:
            node = await self._root_lookup(name)
        else:
            directory = await self._populated(parent)
            found = directory.child(name)
            if found is None:
                raise FsError(errno.ENOENT)
            node = found
        attrs = await self._node_attributes(node)
        self.inodes.remember(attrs.ino)
        if parent != ROOT_INO:
            self._parent_hint.setdefault(attrs.ino, parent)
        return attrs

    async def _root_lookup(self, name: bytes) -> Node:
        known = self._root_names.get(name)
        if known is not None:
            self._root_names.move_to_end(name)
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
        return self._root_node(name, node)

    def _root_node(self, name: bytes, node: Node) -> Node:
        """The node of root entry ``name``; the first node given for a name stays."""
        known = self._root_names.setdefault(name, node)
        if len(self._root_names) > ROOT_NAMES_MAX:
            self._root_names.popitem(last=False)
        return known

    # -- directory listings ----------------------------------------------------

    async def opendir(self, ino: int) -> int:
        if ino == ROOT_INO:
            self._check_root_listing()
            listing: _RootListing | None = _RootListing(self._root_stream())
        else:
            await self._populated(ino)
            listing = None
            self.inodes.opened(ino)
        fh = self._new_handle(ino)
        self._dir_handles[fh] = _DirHandle(ino, listing)
        log.debug("opendir ino=%d fh=%d", ino, fh)
        return fh

    def _new_handle(self, ino: int) -> int:
        """A handle number that carries its inode in the high bits.

        A process taking the connection over can then rebuild a handle the
        kernel still uses from the number alone.
        """
        return (ino << HANDLE_INO_SHIFT) | (next(self._handle_counter) & HANDLE_LOW_MASK)

    def _taken_over_file(self, fh: int) -> _FileHandle | None:
        """A file handle opened before a takeover, rebuilt from its number."""
        ino = fh >> HANDLE_INO_SHIFT
        data = self.inodes.get(ino)
        if not self.resumed or not isinstance(data, RegularInode):
            return None
        handle = _FileHandle(ino, data)
        self._file_handles[fh] = handle
        self.inodes.opened(ino)
        return handle

    def _taken_over_dir(self, fh: int) -> _DirHandle | None:
        """A directory handle opened before a takeover, rebuilt from its number."""
        ino = fh >> HANDLE_INO_SHIFT
        if not self.resumed:
            return None
        if ino == ROOT_INO:
            handle = _DirHandle(ino, _RootListing(self._root_stream()))
        elif isinstance(self.inodes.get(ino), DirectoryInode):
            handle = _DirHandle(ino, None)
            self.inodes.opened(ino)
        else:
            return None
        self._dir_handles[fh] = handle
        return handle

    def _check_root_listing(self) -> None:
        if not self.list_root:
            raise FsError(errno.EPERM, "listing the root is off (see --list-root)")

    async def _root_stream(self) -> AsyncGenerator[tuple[bytes, Node], None]:
        try:
            async for name, node in self.root_nodes.list():
                yield name, self._root_node(name, node)
        except Exception as exc:
            log.warning("root listing failed: %s", exc)
            raise FsError(errno.EIO, str(exc)) from exc

    async def readdir(
        self, ino: int, fh: int | None, offset: int, *, plus: bool = True
    ) -> AsyncGenerator[DirEntry, None]:
        """Entries from ``offset`` on; stop pulling whenever the caller is full.

        ``fh`` is the handle ``opendir`` gave, or None where the kernel opens
        directories without asking (then the listing is the inode's own).
        Offsets are positions in a listing that never changes under its
        handle, so an entry that did not fit is given again from its offset.
        With ``plus``, entries carry their attributes (subdirectories are
        loaded for their link counts); the caller must ``remember``
        each entry it passes on. Without, only names, inode numbers and kinds.
        """
        if fh is not None:
            handle = self._dir_handles.get(fh) or self._taken_over_dir(fh)
            if handle is None:
                log.warning("readdir fh=%d: unknown directory handle", fh)
                raise FsError(errno.EIO)
            ino = handle.ino
            if handle.root_listing is not None:
                async for entry in self._read_root_listing(handle.root_listing, offset, plus):
                    yield entry
                return
        elif ino == ROOT_INO:
            self._check_root_listing()
            listing = _RootListing(self._root_stream())
            try:
                async for entry in self._read_root_listing(listing, offset, plus):
                    yield entry
            finally:
                await listing.stream.aclose()
            return
        directory = await self._populated(ino)
        entries = directory.entries
        assert entries is not None
        async for entry in self._entries(entries, offset, plus, parent=ino):
            yield entry

    async def _entries(
        self, entries: Sequence[tuple[bytes, Node]], offset: int, plus: bool, parent: int
    ) -> AsyncGenerator[DirEntry, None]:
        position = offset
        while position < len(entries):
            batch = entries[position : position + PRELOAD_BATCH]
            loaded: list[InodeData | None] = [None] * len(batch)
            if plus:
                inos = [self.inodes.put(node) for _, node in batch]
                await self._preload(inos)
                loaded = [self.inodes.get(ino) for ino in inos]
            for (name, node), data in zip(batch, loaded, strict=True):
                position += 1
                if plus:
                    attrs: Attributes | None = self._entry_attributes(node, data)
                    assert attrs is not None
                    ino = attrs.ino
                    if parent != ROOT_INO:
                        self._parent_hint.setdefault(ino, parent)
                else:
                    attrs = None
                    ino = self.inodes.put(node)
                yield DirEntry(name, ino, _kind(node), position, attrs)

    async def _read_root_listing(
        self, listing: _RootListing, offset: int, plus: bool
    ) -> AsyncGenerator[DirEntry, None]:
        position = offset
        while True:
            async with listing.lock:
                while position >= len(listing.seen) and not listing.exhausted:
                    await self._pull_root(listing)
                if position >= len(listing.seen):
                    return
                batch = listing.seen[position:]
            async for entry in self._entries(batch, 0, plus, parent=ROOT_INO):
                yield DirEntry(
                    entry.name, entry.ino, entry.kind, position + entry.next_offset, entry.attrs
                )
            position += len(batch)

    async def _pull_root(self, listing: _RootListing) -> None:
        """Take the next batch of the provider's stream into the listing."""
        try:
            for _ in range(PRELOAD_BATCH):
                listing.seen.append(await anext(listing.stream))
        except StopAsyncIteration:
            listing.exhausted = True

    async def releasedir(self, fh: int) -> None:
        handle = self._dir_handles.pop(fh, None)
        if handle is None:
            if not self.resumed:
                log.warning("releasedir fh=%d: unknown directory handle", fh)
        elif handle.root_listing is not None:
            await handle.root_listing.stream.aclose()
        elif self.inodes.closed(handle.ino):
            self._freed(handle.ino)

    # -- files -------------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> int:
        if ino == ROOT_INO:
            raise FsError(errno.EISDIR)
        data = self._data(ino)
        if not isinstance(data, RegularInode):
            raise FsError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise FsError(errno.EROFS)
        reader = None
        plain = self.blobs.plain_file(data.digest)
        if plain is None and data.digest not in self.prefetch.present:
            # First open of this blob: open the reader now (one fetch answers
            # both "is it there" and the read that usually follows).
            reader = await self._first_reader(ino, data)
            self.prefetch.present.add(data.digest)
        fh = self._new_handle(ino)
        self._file_handles[fh] = _FileHandle(ino, data, reader, plain)
        self.inodes.opened(ino)
        log.debug("open ino=%d fh=%d blob=%s", ino, fh, data.digest)
        return fh

    async def _first_reader(self, ino: int, data: RegularInode) -> BlobReader:
        fetched = self.prefetch.take(data.digest)
        if fetched is None and self.prefetch.in_flight(data.digest):
            fetched = await self.prefetch.wait(data.digest)
        elif fetched is None:
            self._fetch_siblings(ino, data)
        if fetched is not None:
            return BytesBlobReader(fetched)
        return await self._open_blob("open", ino, data.digest)

    def _fetch_siblings(self, ino: int, data: RegularInode) -> None:
        parent = self._parent_hint.get(ino)
        directory = self.inodes.get(parent) if parent is not None else None
        if isinstance(directory, DirectoryInode) and directory.entries is not None:
            self.prefetch.fetch_after(directory.entries, data.digest)

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

    def backing_file(self, fh: int) -> str | None:
        """The plain file behind an open file, for the kernel to read without cafs."""
        handle = self._file_handles.get(fh)
        return None if handle is None else handle.plain

    def contents_at_hand(self, fh: int) -> bytes | None:
        """A small file's whole contents, when its open already fetched them.

        The protocol layer hands these to the kernel's page cache with the
        open, so the read that follows needs no round trip.
        """
        handle = self._file_handles.get(fh)
        if handle is None or not isinstance(handle.reader, BytesBlobReader):
            return None
        if not 0 < handle.reader.size <= SIBLING_MAX_SIZE:
            return None
        return handle.reader.contents

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes from ``offset``, fewer only at the end of the file."""
        handle = self._file_handles.get(fh) or self._taken_over_file(fh)
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
            if not self.resumed:
                log.warning("release fh=%d: unknown file handle", fh)
            return
        if self.inodes.closed(handle.ino):
            self._freed(handle.ino)
        if handle.reader is not None:
            await handle.reader.close()

    async def readlink(self, ino: int) -> bytes:
        if ino == ROOT_INO:
            raise FsError(errno.EINVAL)
        data = self._data(ino)
        if not isinstance(data, SymlinkInode):
            raise FsError(errno.EINVAL)
        return data.target

    # -- extended attributes ---------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        """The digest behind an inode, as ``b3:<base64>``.

        Size probing and ERANGE are the protocol layer's (and the kernel's) part.
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

    async def access(self, ino: int, mask: int) -> None:
        """``access(2)``: writes are refused, execute needs an execute bit."""
        mode = (await self.getattr(ino)).mode
        if mask & os.W_OK:
            raise FsError(errno.EROFS)
        if mask & os.X_OK and not mode & 0o111:
            raise FsError(errno.EACCES)

    def statfs(self) -> StatFs:
        return StatFs(block_size=4096, blocks=0, files=len(self.inodes) + 1, name_max=NAME_MAX)

    async def close(self) -> None:
        """Close every open file and listing (at unmount)."""
        for fh in list(self._file_handles):
            await self.release(fh)
        for fh in list(self._dir_handles):
            await self.releasedir(fh)

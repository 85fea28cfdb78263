"""The filesystem model without a mount: inodes, listings, handles, errno."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest

from cafs.castore.blobs.base import BlobReader
from cafs.castore.blobs.memory import MemoryBlobService
from cafs.castore.digest import Digest
from cafs.castore.directories.memory import MemoryDirectoryService
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from cafs.fs.attrs import STORE_MTIME
from cafs.fs.filesystem import (
    XATTR_BLOB_DIGEST,
    XATTR_DIRECTORY_DIGEST,
    DirEntry,
    Filesystem,
    FsError,
)
from cafs.fs.inodes import ROOT_INO, DirectoryInode, InodeTracker
from cafs.fs.root_nodes import DirectoryRootNodes

HELLO = b"Hello World!"


class CountingDirectories(MemoryDirectoryService):
    """A memory DirectoryService that counts (and can slow down) gets."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.delay = 0.0

    async def get(self, digest: Digest) -> Directory | None:
        self.gets += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().get(digest)


class Store:
    def __init__(self) -> None:
        self.blobs = MemoryBlobService()
        self.directories = CountingDirectories()

    async def file(self, data: bytes, executable: bool = False) -> FileNode:
        return FileNode(await self.blobs.put(data), len(data), executable)

    async def directory(self, entries: dict[bytes, Node]) -> DirectoryNode:
        directory = Directory(entries.items())
        await self.directories.put(directory)
        return directory.as_node()


async def sample_tree(store: Store) -> Directory:
    """hello, hello-exe (same content, executable), dup (same as hello),
    link -> hello, empty/, sub/{deep/{x}}, many/ with 300 entries."""
    hello = await store.file(HELLO)
    deep = await store.directory({b"x": await store.file(b"x")})
    sub = await store.directory({b"deep": deep, b"hello": hello})
    many = await store.directory({f"f{i:04d}".encode(): hello for i in range(300)})
    return Directory(
        {
            b"dup": hello,
            b"empty": await store.directory({}),
            b"hello": hello,
            b"hello-exe": await store.file(HELLO, executable=True),
            b"link": SymlinkNode(b"hello"),
            b"many": many,
            b"sub": sub,
        }.items()
    )


async def make_fs(
    store: Store, *, list_root: bool = True, show_xattr: bool = True
) -> tuple[Filesystem, Directory]:
    root = await sample_tree(store)
    fs = Filesystem(
        store.blobs,
        store.directories,
        DirectoryRootNodes(root),
        list_root=list_root,
        show_xattr=show_xattr,
    )
    return fs, root


async def errno_of(coro: object) -> int:
    with pytest.raises(FsError) as info:
        await coro  # type: ignore[misc]
    return info.value.errno


async def listing(
    fs: Filesystem, ino: int, offset: int = 0, limit: int | None = None
) -> list[DirEntry]:
    fh = await fs.opendir(ino)
    out: list[DirEntry] = []
    async for entry in fs.readdir(ino, fh, offset):
        out.append(entry)
        if limit is not None and len(out) == limit:
            break
    await fs.releasedir(fh)
    return out


def test_tracker_shares_inodes_by_content() -> None:
    tracker = InodeTracker()
    digest = Digest.of(b"a")
    plain = tracker.put(FileNode(digest, 1))
    assert plain == 2  # 1 is the root
    assert tracker.put(FileNode(digest, 1)) == plain
    assert tracker.put(FileNode(digest, 1, executable=True)) != plain
    link = tracker.put(SymlinkNode(b"t"))
    assert tracker.put(SymlinkNode(b"t")) == link
    assert tracker.put(SymlinkNode(b"u")) != link
    directory = tracker.put(DirectoryNode(digest, 3))
    assert tracker.put(DirectoryNode(digest, 3)) == directory
    assert len(tracker) == 5


def test_directory_inodes_populate_once() -> None:
    child = FileNode(Digest.of(b"c"), 1)
    directory = Directory([(b"c", child), (b"d", DirectoryNode(Digest.of(b"d"), 0))])
    data = DirectoryInode(directory.digest, directory.size)
    data.populate(directory)
    assert (
        data.entries is not None
        and list(data.entries) == list(directory)
        and data.child(b"c") == child
    )
    assert data.subdirectories == 1
    entries = data.entries
    data.populate(Directory())
    assert data.entries is entries


def test_tracker_frees_an_inode_when_the_kernel_forgets_it() -> None:
    tracker = InodeTracker()
    node = FileNode(Digest.of(b"a"), 1)
    ino = tracker.put(node)
    tracker.remember(ino)
    tracker.remember(ino)
    assert not tracker.forget(ino, 1)
    assert tracker.get(ino) is not None and tracker.held == 1
    tracker.opened(ino)
    assert not tracker.forget(ino, 1)  # an open handle keeps it
    assert tracker.get(ino) is not None
    assert tracker.closed(ino)
    assert tracker.get(ino) is None and len(tracker) == 0
    # Met again, the content gets a new number (numbers are never reused).
    again = tracker.put(node)
    assert again != ino and tracker.put(node) == again


def test_tracker_keeps_uncounted_inodes_bounded() -> None:
    tracker = InodeTracker(uncounted_max=10)
    held = tracker.put(SymlinkNode(b"held"))
    tracker.remember(held)
    inos = [tracker.put(SymlinkNode(f"t{i}".encode())) for i in range(100)]
    assert len(tracker) == 11 and tracker.held == 1
    assert tracker.get(held) is not None
    assert tracker.get(inos[0]) is None and tracker.get(inos[-1]) is not None


async def test_lookup_and_attributes() -> None:
    store = Store()
    fs, root = await make_fs(store)
    hello = await fs.lookup(ROOT_INO, b"hello")
    assert stat.S_ISREG(hello.mode) and stat.S_IMODE(hello.mode) == 0o444
    assert (hello.size, hello.nlink, hello.time) == (len(HELLO), 1, STORE_MTIME)
    assert hello.blocks == 1
    exe = await fs.lookup(ROOT_INO, b"hello-exe")
    assert stat.S_IMODE(exe.mode) == 0o555 and exe.ino != hello.ino
    assert (await fs.lookup(ROOT_INO, b"dup")).ino == hello.ino
    link = await fs.lookup(ROOT_INO, b"link")
    assert stat.S_ISLNK(link.mode) and link.size == len(b"hello")
    sub = await fs.lookup(ROOT_INO, b"sub")
    assert stat.S_ISDIR(sub.mode) and stat.S_IMODE(sub.mode) == 0o555
    sub_node = root.get(b"sub")
    assert isinstance(sub_node, DirectoryNode)
    # One subdirectory; the node's size (2 per entry + the sizes below), known unlisted.
    assert (sub.nlink, sub.size) == (3, sub_node.size) and sub.size == 2 * 2 + 2
    assert (await fs.lookup(sub.ino, b"hello")).ino == hello.ino
    deep = await fs.lookup(sub.ino, b"deep")
    assert (await fs.lookup(deep.ino, b"x")).size == 1
    root_attrs = await fs.getattr(ROOT_INO)
    assert root_attrs.nlink == 2 + 3 and root_attrs.time == 0
    assert await fs.getattr(sub.ino) == sub
    assert root.digest == fs.root_nodes.root_digest


async def test_lookup_errors() -> None:
    store = Store()
    fs, _ = await make_fs(store)
    assert await errno_of(fs.lookup(ROOT_INO, b"nope")) == errno.ENOENT
    hello = await fs.lookup(ROOT_INO, b"hello")
    assert await errno_of(fs.lookup(hello.ino, b"x")) == errno.ENOTDIR
    sub = await fs.lookup(ROOT_INO, b"sub")
    assert await errno_of(fs.lookup(sub.ino, b"nope")) == errno.ENOENT
    assert await errno_of(fs.getattr(9999)) == errno.ENOENT
    assert await errno_of(fs.lookup(ROOT_INO, b"x" * 256)) == errno.ENOENT


async def test_readdir_lists_in_order_with_resumable_offsets() -> None:
    store = Store()
    fs, root = await make_fs(store)
    entries = await listing(fs, ROOT_INO)
    assert [e.name for e in entries] == root.names()
    assert [e.next_offset for e in entries] == list(range(1, len(entries) + 1))
    many = await fs.lookup(ROOT_INO, b"many")
    names = [e.name for e in await listing(fs, many.ino)]
    assert names == [f"f{i:04d}".encode() for i in range(300)]
    # Resuming at any offset continues exactly after the last entry taken.
    fh = await fs.opendir(many.ino)
    collected: list[bytes] = []
    offset = 0
    while True:
        batch = [e async for e in _take(fs.readdir(many.ino, fh, offset), 7)]
        if not batch:
            break
        collected += [e.name for e in batch]
        offset = batch[-1].next_offset
    await fs.releasedir(fh)
    assert collected == names


async def _take(entries: AsyncGenerator[DirEntry, None], n: int) -> AsyncIterator[DirEntry]:
    taken = 0
    async for entry in entries:
        yield entry
        taken += 1
        if taken == n:
            await entries.aclose()
            return


async def test_listing_a_directory_loads_subdirectories_for_their_link_counts() -> None:
    store = Store()
    fs, _ = await make_fs(store)
    entries = {e.name: e for e in await listing(fs, ROOT_INO)}
    assert entries[b"sub"].attrs.nlink == 3
    assert entries[b"empty"].attrs.nlink == 2 and entries[b"empty"].attrs.size == 0
    assert entries[b"hello"].attrs.nlink == 1


async def test_root_listing_is_refused_without_list_root() -> None:
    store = Store()
    fs, _ = await make_fs(store, list_root=False)
    assert await errno_of(fs.opendir(ROOT_INO)) == errno.EPERM
    assert (await fs.lookup(ROOT_INO, b"hello")).size == len(HELLO)


class StreamingRoot:
    """A root provider that streams lazily and counts how far it was pulled."""

    def __init__(self, entries: list[tuple[bytes, Node]], fail_after: int | None = None) -> None:
        self.entries = entries
        self.pulled = 0
        self.lists = 0
        self.fail_after = fail_after

    async def get_by_basename(self, name: bytes) -> Node | None:
        return dict(self.entries).get(name)

    async def list(self) -> AsyncIterator[tuple[bytes, Node]]:
        self.lists += 1
        for entry in self.entries:
            if self.fail_after is not None and self.pulled == self.fail_after:
                raise OSError("the provider went away")
            self.pulled += 1
            yield entry

    root_digest = None
    subdirectories = None
    fixed = False


async def test_root_listing_streams_per_handle_and_resumes_exactly() -> None:
    store = Store()
    hello = await store.file(HELLO)
    provider = StreamingRoot([(f"p{i:04d}".encode(), hello) for i in range(1000)])
    fs = Filesystem(store.blobs, store.directories, provider, list_root=True)
    fh = await fs.opendir(ROOT_INO)
    first = [e async for e in _take(fs.readdir(ROOT_INO, fh, 0), 10)]
    assert provider.pulled < 1000  # pulled as far as asked, not the whole stream
    # The entry after the last one taken is given again at its offset: nothing lost.
    again = [e async for e in _take(fs.readdir(ROOT_INO, fh, first[-1].next_offset), 5)]
    assert again[0].name == b"p0010"
    # Rewinding is served from what the handle already holds.
    rewound = [e.name async for e in fs.readdir(ROOT_INO, fh, 0)]
    assert rewound == [f"p{i:04d}".encode() for i in range(1000)]
    assert provider.lists == 1
    await fs.releasedir(fh)
    # Every root name listed has its inode; a lookup agrees with the listing.
    assert (await fs.lookup(ROOT_INO, b"p0000")).ino == first[0].ino


async def test_root_listing_error_is_eio() -> None:
    store = Store()
    hello = await store.file(HELLO)
    provider = StreamingRoot([(f"p{i}".encode(), hello) for i in range(100)], fail_after=3)
    fs = Filesystem(store.blobs, store.directories, provider, list_root=True)
    fh = await fs.opendir(ROOT_INO)
    assert await errno_of(_drain(fs.readdir(ROOT_INO, fh, 0))) == errno.EIO
    assert await errno_of(_drain(fs.readdir(ROOT_INO, 12345, 0))) == errno.EIO


async def _drain(entries: AsyncGenerator[DirEntry, None]) -> None:
    async for _ in entries:
        pass


async def test_concurrent_lookups_fetch_a_directory_once() -> None:
    store = Store()
    fs, _ = await make_fs(store)
    many = await fs.lookup(ROOT_INO, b"many")
    store.directories.delay = 0.01
    before = store.directories.gets
    sub = await fs.lookup(ROOT_INO, b"sub")
    gets_for_sub = store.directories.gets - before
    results = await asyncio.gather(*(fs.lookup(sub.ino, b"deep") for _ in range(20)))
    assert len({r.ino for r in results}) == 1
    assert store.directories.gets - before == gets_for_sub + 1  # deep, once
    assert many.size == 2 * 300  # the node size: 2 per entry


async def test_open_read_release() -> None:
    store = Store()
    data = os.urandom(100_000)
    big = await store.file(data)
    fs = Filesystem(
        store.blobs,
        store.directories,
        DirectoryRootNodes(Directory([(b"big", big), (b"link", SymlinkNode(b"big"))])),
    )
    ino = (await fs.lookup(ROOT_INO, b"big")).ino
    fh = await fs.open(ino, os.O_RDONLY)
    assert await fs.read(fh, 0, 10) == data[:10]
    assert await fs.read(fh, 99_990, 4096) == data[99_990:]  # short only at the end
    assert await fs.read(fh, 12_345, 65_536) == data[12_345 : 12_345 + 65_536]
    assert await fs.read(fh, 100_000, 10) == b""
    assert await fs.read(fh, 200_000, 10) == b""
    await fs.release(fh)
    assert await errno_of(fs.read(fh, 0, 1)) == errno.EIO
    assert await errno_of(fs.open(ino, os.O_WRONLY)) == errno.EROFS
    assert await errno_of(fs.open(ino, os.O_RDWR)) == errno.EROFS
    link = (await fs.lookup(ROOT_INO, b"link")).ino
    assert await errno_of(fs.open(link, os.O_RDONLY)) == errno.EISDIR
    assert await errno_of(fs.open(ROOT_INO, os.O_RDONLY)) == errno.EISDIR
    assert await errno_of(fs.open(4242, os.O_RDONLY)) == errno.ENOENT


async def test_missing_blob_and_directory_are_eio() -> None:
    store = Store()
    ghost_file = FileNode(Digest.of(b"never stored"), 12)
    unstored = Directory([(b"x", SymlinkNode(b"y"))])
    ghost_dir = unstored.as_node()
    fs = Filesystem(
        store.blobs,
        store.directories,
        DirectoryRootNodes(Directory([(b"f", ghost_file), (b"d", ghost_dir)])),
        list_root=True,
    )
    f = await fs.lookup(ROOT_INO, b"f")
    assert await errno_of(fs.open(f.ino, os.O_RDONLY)) == errno.EIO
    d = await fs.lookup(ROOT_INO, b"d")  # the entry is known; its contents are not
    assert (d.nlink, d.size) == (2, ghost_dir.size)
    assert await errno_of(fs.opendir(d.ino)) == errno.EIO
    assert await errno_of(fs.lookup(d.ino, b"x")) == errno.EIO
    # A hole is tried again: once the directory arrives, it is served.
    await store.directories.put(unstored)
    assert [e.name for e in await listing(fs, d.ino)] == [b"x"]


async def test_readlink() -> None:
    store = Store()
    fs, _ = await make_fs(store)
    link = await fs.lookup(ROOT_INO, b"link")
    assert await fs.readlink(link.ino) == b"hello"
    hello = await fs.lookup(ROOT_INO, b"hello")
    assert await errno_of(fs.readlink(hello.ino)) == errno.EINVAL
    sub = await fs.lookup(ROOT_INO, b"sub")
    assert await errno_of(fs.readlink(sub.ino)) == errno.EINVAL
    assert await errno_of(fs.readlink(ROOT_INO)) == errno.EINVAL


async def test_xattrs() -> None:
    store = Store()
    fs, root = await make_fs(store)
    hello = await fs.lookup(ROOT_INO, b"hello")
    sub = await fs.lookup(ROOT_INO, b"sub")
    link = await fs.lookup(ROOT_INO, b"link")
    blob = str(Digest.of(HELLO)).encode()
    assert await fs.getxattr(hello.ino, XATTR_BLOB_DIGEST) == blob
    assert len(blob) == 47 and blob.startswith(b"b3:")
    sub_data = fs.inodes.get(sub.ino)
    assert isinstance(sub_data, DirectoryInode)
    assert await fs.getxattr(sub.ino, XATTR_DIRECTORY_DIGEST) == str(sub_data.digest).encode()
    assert await fs.getxattr(ROOT_INO, XATTR_DIRECTORY_DIGEST) == str(root.digest).encode()
    for ino, name in [
        (hello.ino, XATTR_DIRECTORY_DIGEST),
        (sub.ino, XATTR_BLOB_DIGEST),
        (link.ino, XATTR_BLOB_DIGEST),
        (hello.ino, b"user.other"),
        (424242, XATTR_BLOB_DIGEST),
    ]:
        assert await errno_of(fs.getxattr(ino, name)) == errno.ENODATA
    assert await fs.listxattr(hello.ino) == [XATTR_BLOB_DIGEST]
    assert await fs.listxattr(sub.ino) == [XATTR_DIRECTORY_DIGEST]
    assert await fs.listxattr(link.ino) == []
    assert await fs.listxattr(ROOT_INO) == [XATTR_DIRECTORY_DIGEST]

    hidden, _ = await make_fs(Store(), show_xattr=False)
    assert await errno_of(hidden.getxattr(ROOT_INO, XATTR_DIRECTORY_DIGEST)) == errno.ENOSYS
    assert await errno_of(hidden.listxattr(ROOT_INO)) == errno.ENOSYS


async def test_statfs_and_close() -> None:
    store = Store()
    fs, _ = await make_fs(store)
    hello = await fs.lookup(ROOT_INO, b"hello")
    fh = await fs.open(hello.ino, os.O_RDONLY)
    dh = await fs.opendir(ROOT_INO)
    info = fs.statfs()
    assert info.name_max == 255 and info.files == len(fs.inodes) + 1
    await fs.close()
    assert await errno_of(fs.read(fh, 0, 1)) == errno.EIO
    assert await errno_of(_drain(fs.readdir(ROOT_INO, dh, 0))) == errno.EIO


class CountingBlobs(MemoryBlobService):
    def __init__(self) -> None:
        super().__init__()
        self.opens = 0
        self.batches: list[int] = []

    async def open_read(self, digest: Digest) -> BlobReader | None:
        self.opens += 1
        return await super().open_read(digest)

    async def read_many(self, digests: Sequence[Digest]) -> dict[Digest, bytes]:
        self.batches.append(len(digests))
        return await super().read_many(digests)


async def test_opening_a_file_fetches_its_small_siblings_in_one_batch() -> None:
    store = Store()
    blobs = CountingBlobs()
    contents = {f"f{i:03d}".encode(): f"file {i}".encode() for i in range(50)}
    entries: dict[bytes, Node] = {}
    for name, data in contents.items():
        entries[name] = FileNode(await blobs.put(data), len(data))
    missing = FileNode(Digest.of(b"not stored"), 10)
    entries[b"zz-missing"] = missing
    entries[b"zz-big"] = FileNode(await blobs.put(b"x" * 100_000), 100_000)
    directory = await store.directory(entries)
    fs = Filesystem(blobs, store.directories, DirectoryRootNodes(Directory([(b"d", directory)])))
    d = await fs.lookup(ROOT_INO, b"d")
    for name, data in contents.items():
        ino = (await fs.lookup(d.ino, name)).ino
        fh = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 100) == data
        await fs.release(fh)
    # One open for the first file; the memory backend answers a batch with
    # one open per blob; nothing else was fetched.
    assert blobs.opens - sum(blobs.batches) == 1
    assert blobs.batches == [50]  # the 49 siblings, the missing one; not the big one
    gone = (await fs.lookup(d.ino, b"zz-missing")).ino
    assert await errno_of(fs.open(gone, os.O_RDONLY)) == errno.EIO
    big = (await fs.lookup(d.ino, b"zz-big")).ino
    fh = await fs.open(big, os.O_RDONLY)
    assert await fs.read(fh, 99_990, 100) == b"x" * 10


class SlowBlobs(MemoryBlobService):
    """Blob opens wait until released; everything else answers at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def open_read(self, digest: Digest) -> BlobReader | None:
        self.waiting.set()
        await self.release.wait()
        return await super().open_read(digest)


async def test_a_slow_blob_fetch_does_not_stall_other_requests() -> None:
    store = Store()
    blobs = SlowBlobs()
    big = FileNode(await blobs.put(b"slow"), 4)
    sub = await store.directory({b"inner": FileNode(await blobs.put(b"in"), 2)})
    fs = Filesystem(
        blobs, store.directories, DirectoryRootNodes(Directory([(b"big", big), (b"sub", sub)]))
    )
    ino = (await fs.lookup(ROOT_INO, b"big")).ino
    opening = asyncio.ensure_future(fs.open(ino, os.O_RDONLY))
    await blobs.waiting.wait()
    # While the blob fetch hangs, lookups, listings and attributes are served.
    sub_attrs = await asyncio.wait_for(fs.lookup(ROOT_INO, b"sub"), 1)
    assert (await asyncio.wait_for(fs.lookup(sub_attrs.ino, b"inner"), 1)).size == 2
    assert [e.name for e in await asyncio.wait_for(listing(fs, sub_attrs.ino), 1)] == [b"inner"]
    assert not opening.done()
    blobs.release.set()
    fh = await opening
    assert await fs.read(fh, 0, 10) == b"slow"

"""The FUSE session, byte for byte, with no kernel: requests built and replies decoded here.

Every layout below is written from ``include/uapi/linux/fuse.h``, not taken
from ``cafs.fuse.abi``, so a wrong struct there shows up as a wrong reply here.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import struct
from typing import NamedTuple

from cafs.castore.blobs.base import BlobReader, BytesBlobReader
from cafs.castore.blobs.memory import MemoryBlobService
from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode
from cafs.fs.filesystem import Filesystem
from cafs.fs.root_nodes import DirectoryRootNodes
from cafs.fuse import abi
from cafs.fuse.server import ProtocolError, Session, SessionOptions
from tests.unit.test_filesystem import HELLO, Store, sample_tree

# -- opcodes and constants (the kernel's numbers) -----------------------------------

LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKDIR = 9
UNLINK = 10
RENAME = 12
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
ACCESS = 34
CREATE = 35
INTERRUPT = 36
DESTROY = 38
BATCH_FORGET = 42
READDIRPLUS = 44
STATX = 52

ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
SPLICE_READ = 1 << 9
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
POSIX_ACL = 1 << 20
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
INIT_EXT = 1 << 30
WANTED = ASYNC_READ | PARALLEL_DIROPS | DO_READDIRPLUS | READDIRPLUS_AUTO
WANTED |= CACHE_SYMLINKS | MAX_PAGES
OFFERED = (
    WANTED
    | POSIX_LOCKS
    | ATOMIC_O_TRUNC
    | EXPORT_SUPPORT
    | BIG_WRITES
    | SPLICE_READ
    | AUTO_INVAL_DATA
    | ASYNC_DIO
    | WRITEBACK_CACHE
    | POSIX_ACL
    | NO_OPENDIR_SUPPORT
    | INIT_EXT
)

FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
NOTIFY_STORE = 4
FUSE_INT_REQ_BIT = 1
DT_DIR, DT_REG, DT_LNK = 4, 8, 10
HUGE_TIMEOUT = 1 << 31
"""Entry/attribute timeouts at least this many seconds count as "forever" here."""

XATTR_BLOB = b"user.tvix.castore.blob.digest"
XATTR_DIRECTORY = b"user.tvix.castore.directory.digest"

# -- layouts ------------------------------------------------------------------------

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
ENTRY_OUT = struct.Struct("<QQQQII")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ATTR_OUT = struct.Struct("<QII")
DIRENT = struct.Struct("<QQII")
INIT_IN = struct.Struct("<IIIII11I")
INIT_IN_OLD = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH11H")
GETATTR_IN = struct.Struct("<IIQ")
GETXATTR_IN = struct.Struct("<II")
GETXATTR_OUT = struct.Struct("<II")
READ_IN = struct.Struct("<QQIIQII")
OPEN_IN = struct.Struct("<II")
OPEN_OUT = struct.Struct("<QIi")
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
INTERRUPT_IN = struct.Struct("<Q")
ACCESS_IN = struct.Struct("<II")
KSTATFS = struct.Struct("<QQQQQIIII6I")
NOTIFY_STORE_OUT = struct.Struct("<QQII")
MKDIR_IN = struct.Struct("<II")
WRITE_IN = struct.Struct("<QQIIQII")

assert IN_HEADER.size == 40 and OUT_HEADER.size == 16
assert ENTRY_OUT.size + ATTR.size == 128 and ATTR_OUT.size + ATTR.size == 104
assert INIT_IN.size == 64 and INIT_OUT.size == 64 and KSTATFS.size == 80


class Attr(NamedTuple):
    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int


class Entry(NamedTuple):
    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


class Dirent(NamedTuple):
    ino: int
    off: int
    type: int
    name: bytes
    entry: Entry | None


class InitOut(NamedTuple):
    major: int
    minor: int
    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int
    flags2: int
    max_stack_depth: int
    request_timeout: int


def decode_attr(raw: bytes) -> Attr:
    assert len(raw) == 88
    return Attr(*ATTR.unpack(raw))


def decode_entry(raw: bytes) -> Entry:
    assert len(raw) == 128, len(raw)
    nodeid, generation, entry_valid, attr_valid, entry_nsec, attr_nsec = ENTRY_OUT.unpack_from(raw)
    attr = decode_attr(raw[40:])
    return Entry(nodeid, generation, entry_valid, attr_valid, entry_nsec, attr_nsec, attr)


def decode_attr_out(raw: bytes) -> tuple[int, int, int, Attr]:
    assert len(raw) == 104, len(raw)
    valid, valid_nsec, dummy = ATTR_OUT.unpack_from(raw)
    return valid, valid_nsec, dummy, decode_attr(raw[16:])


def decode_init_out(raw: bytes) -> InitOut:
    assert len(raw) == 64, len(raw)
    fields = INIT_OUT.unpack(raw)
    assert fields[13:] == (0,) * 11  # unused
    return InitOut(*fields[:13])


def decode_dirents(raw: bytes, *, plus: bool) -> list[Dirent]:
    """Every (plus) entry of a listing, checking its 8-byte alignment and zero padding."""
    out = []
    pos = 0
    while pos < len(raw):
        assert pos % 8 == 0
        start = pos
        entry = None
        if plus:
            entry = decode_entry(raw[pos : pos + 128])
            pos += 128
        ino, off, namelen, kind = DIRENT.unpack_from(raw, pos)
        pos += 24
        name = raw[pos : pos + namelen]
        assert len(name) == namelen
        pos += namelen
        padded = start + ((pos - start + 7) & ~7)
        assert raw[pos:padded] == bytes(padded - pos), "padding must be zeros"
        assert padded <= len(raw), "the last entry's padding is part of the reply"
        pos = padded
        out.append(Dirent(ino, off, kind, name, entry))
    assert pos == len(raw)
    return out


# -- requests -----------------------------------------------------------------------


def request(opcode: int, nodeid: int = 0, body: bytes = b"", unique: int = 2) -> bytes:
    """A request as the kernel writes it: fuse_in_header (len computed) + the arguments."""
    header = IN_HEADER.pack(40 + len(body), opcode, unique, nodeid, 1000, 100, 4242, 0, 0)
    return header + body


def read_in(fh: int, offset: int, size: int) -> bytes:
    return READ_IN.pack(fh, offset, size, 0, 0, os.O_RDONLY, 0)


def init_in(major: int, minor: int, readahead: int, flags: int, flags2: int = 0) -> bytes:
    return INIT_IN.pack(major, minor, readahead, flags, flags2, *[0] * 11)


def decode_reply(reply: object, unique: int) -> tuple[int, bytes]:
    """(errno, body) of a reply, after checking its header against the buffers."""
    assert isinstance(reply, list | tuple) and reply, reply
    raw = b"".join(bytes(piece) for piece in reply)
    assert len(raw) >= 16
    length, error, echoed = OUT_HEADER.unpack_from(raw)
    assert length == len(raw), (length, len(raw))
    assert echoed == unique, (echoed, unique)
    assert error <= 0
    if error:
        assert length == 16, "an error reply is the header alone"
    return -error, raw[16:]


class Kernel:
    """Plays the kernel's side: numbered requests, checked replies."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.unique = 0

    def next_unique(self) -> int:
        self.unique += 2  # the kernel's uniques are even; odd ones are INTERRUPTs
        return self.unique

    async def call(self, opcode: int, nodeid: int = 0, body: bytes = b"") -> tuple[int, bytes]:
        unique = self.next_unique()
        reply = await asyncio.wait_for(self.session.serve(request(opcode, nodeid, body, unique)), 5)
        return decode_reply(reply, unique)

    async def ok(self, opcode: int, nodeid: int = 0, body: bytes = b"") -> bytes:
        code, out = await self.call(opcode, nodeid, body)
        assert code == 0, os.strerror(code)
        return out

    async def error(self, opcode: int, nodeid: int = 0, body: bytes = b"") -> int:
        code, _ = await self.call(opcode, nodeid, body)
        return code

    async def init(self, minor: int = 45, flags: int = OFFERED) -> InitOut:
        return decode_init_out(await self.ok(INIT, 0, init_in(7, minor, 128 * 1024, flags)))

    async def lookup(self, parent: int, name: bytes) -> Entry:
        return decode_entry(await self.ok(LOOKUP, parent, name + b"\0"))

    async def getattr(self, nodeid: int) -> Attr:
        valid, valid_nsec, _, attr = decode_attr_out(
            await self.ok(GETATTR, nodeid, GETATTR_IN.pack(0, 0, 0))
        )
        assert valid >= HUGE_TIMEOUT and valid_nsec == 0
        return attr

    async def listing(
        self, nodeid: int, offset: int = 0, size: int = 4096, *, plus: bool = False, fh: int = 0
    ) -> list[Dirent]:
        out = await self.ok(READDIRPLUS if plus else READDIR, nodeid, read_in(fh, offset, size))
        assert len(out) <= size
        return decode_dirents(out, plus=plus)

    async def open(self, nodeid: int, flags: int = os.O_RDONLY) -> tuple[int, int]:
        out = await self.ok(OPEN, nodeid, OPEN_IN.pack(flags, 0))
        assert len(out) == 16
        fh, open_flags, backing_id = OPEN_OUT.unpack(out)
        assert backing_id == 0
        return fh, open_flags

    async def read(self, fh: int, offset: int, size: int, nodeid: int = 0) -> bytes:
        return await self.ok(READ, nodeid, read_in(fh, offset, size))

    def forget(self, nodeid: int, count: int) -> None:
        unique = self.next_unique()
        answer = self.session.handle(request(FORGET, nodeid, FORGET_IN.pack(count), unique))
        assert answer is None, "FORGET has no reply"


# -- the store ---------------------------------------------------------------------

BIG = bytes(range(251)) * 400  # 100_400 bytes, bigger than a small file


async def mount(
    *,
    list_root: bool = True,
    options: SessionOptions | None = None,
    notify: list[list[bytes]] | None = None,
    init: bool = True,
) -> tuple[Kernel, Filesystem, Directory]:
    store = Store()
    sample = await sample_tree(store)
    root = Directory([*sample, (b"big", await store.file(BIG))])
    fs = Filesystem(store.blobs, store.directories, DirectoryRootNodes(root), list_root=list_root)
    callback = None
    if notify is not None:

        def callback(message: object) -> None:
            assert isinstance(message, list | tuple)
            notify.append([bytes(piece) for piece in message])

    kernel = Kernel(Session(fs, options, notify=callback))
    if init:
        await kernel.init()
    return kernel, fs, root


def node(root: Directory, name: bytes) -> DirectoryNode:
    found = root.get(name)
    assert isinstance(found, DirectoryNode)
    return found


# -- INIT ----------------------------------------------------------------------------


async def test_init_negotiates_version_flags_and_sizes() -> None:
    kernel, _, _ = await mount(init=False)
    out = decode_init_out(
        await kernel.ok(INIT, 0, init_in(7, 45, 128 * 1024, OFFERED, flags2=0x7FF))
    )
    assert (out.major, out.minor) == (7, 40) and out.minor == abi.KERNEL_MINOR_VERSION
    assert out.flags & ~(OFFERED & WANTED) == 0, hex(out.flags)
    assert out.flags == OFFERED & WANTED  # everything wanted that was offered
    assert out.flags & INIT_EXT == 0 and out.flags2 == 0
    assert out.max_pages == 256
    assert out.max_readahead == 128 * 1024
    assert out.max_write >= 4096 and out.time_gran == 1
    assert 0 < out.congestion_threshold <= out.max_background
    assert kernel.session.minor == 40 and int(kernel.session.flags) == out.flags
    # The session answers now.
    assert (await kernel.getattr(1)).ino == 1


async def test_init_caps_readahead_and_gives_no_max_pages_unless_offered() -> None:
    kernel, _, _ = await mount(init=False)
    offered = ASYNC_READ | DO_READDIRPLUS | WRITEBACK_CACHE
    out = decode_init_out(await kernel.ok(INIT, 0, init_in(7, 45, 4 << 20, offered)))
    assert out.max_readahead == 1 << 20
    assert out.flags == ASYNC_READ | DO_READDIRPLUS
    assert out.max_pages == 0


async def test_init_with_an_older_kernel_and_its_16_byte_init_in() -> None:
    kernel, _, _ = await mount(init=False)
    offered = ASYNC_READ | MAX_PAGES | CACHE_SYMLINKS | POSIX_LOCKS
    body = INIT_IN_OLD.pack(7, 31, 1 << 20, offered)
    assert len(body) == 16
    out = decode_init_out(await kernel.ok(INIT, 0, body))
    assert (out.major, out.minor) == (7, 31)
    assert out.flags == ASYNC_READ | MAX_PAGES | CACHE_SYMLINKS
    assert out.max_pages == 256 and out.max_readahead == 1 << 20
    assert kernel.session.minor == 31


async def test_init_below_the_minimum_minor_is_refused() -> None:
    kernel, _, _ = await mount(init=False)
    assert await kernel.error(INIT, 0, init_in(7, 20, 1 << 20, OFFERED)) == errno.EPROTO
    refused = kernel.session.refused
    assert isinstance(refused, ProtocolError)
    assert "7.20" in str(refused) and "7.28" in str(refused)
    assert kernel.session.minor is None
    assert await kernel.error(GETATTR, 1, GETATTR_IN.pack(0, 0, 0)) == errno.EIO


async def test_init_with_a_newer_major_answers_ours_and_the_retry_is_served() -> None:
    kernel, _, _ = await mount(init=False)
    out = decode_init_out(await kernel.ok(INIT, 0, init_in(8, 1, 1 << 20, OFFERED)))
    assert out.major == 7
    assert kernel.session.refused is None and kernel.session.minor is None
    retried = await kernel.init(minor=40)
    assert (retried.major, retried.minor) == (7, 40)


async def test_second_init_and_requests_before_init_are_eio() -> None:
    kernel, _, _ = await mount(init=False)
    assert await kernel.error(GETATTR, 1, GETATTR_IN.pack(0, 0, 0)) == errno.EIO
    assert await kernel.error(LOOKUP, 1, b"hello\0") == errno.EIO
    await kernel.init()
    assert await kernel.error(INIT, 0, init_in(7, 45, 1 << 20, OFFERED)) == errno.EIO
    assert kernel.session.minor == 40
    assert (await kernel.lookup(1, b"hello")).attr.size == len(HELLO)


# -- LOOKUP and GETATTR ----------------------------------------------------------------


async def test_lookup_of_a_file() -> None:
    kernel, _, _ = await mount()
    entry = await kernel.lookup(1, b"hello")
    attr = entry.attr
    assert entry.nodeid == attr.ino and entry.nodeid > 1
    assert entry.generation == 0
    assert entry.entry_valid >= HUGE_TIMEOUT and entry.attr_valid >= HUGE_TIMEOUT
    assert entry.entry_valid_nsec == 0 and entry.attr_valid_nsec == 0
    assert attr.mode == 0o100444
    assert (attr.size, attr.blocks, attr.nlink) == (len(HELLO), 1, 1)
    assert (attr.uid, attr.gid, attr.rdev, attr.flags) == (0, 0, 0, 0)
    assert (attr.atime, attr.mtime, attr.ctime) == (1, 1, 1)
    assert (attr.atimensec, attr.mtimensec, attr.ctimensec) == (0, 0, 0)
    assert attr.blksize > 0
    exe = await kernel.lookup(1, b"hello-exe")
    assert exe.attr.mode == 0o100555 and exe.nodeid != entry.nodeid
    link = await kernel.lookup(1, b"link")
    assert link.attr.mode == stat.S_IFLNK | 0o444 and link.attr.size == len(b"hello")
    # Content-equal names share one inode, wherever they are.
    assert (await kernel.lookup(1, b"dup")).nodeid == entry.nodeid
    sub = await kernel.lookup(1, b"sub")
    assert (await kernel.lookup(sub.nodeid, b"hello")).nodeid == entry.nodeid
    assert (await kernel.lookup(1, b"big")).attr.blocks == -(-len(BIG) // 512)


async def test_lookup_of_directories_reports_node_size_and_link_count() -> None:
    kernel, _, root = await mount()
    sub = await kernel.lookup(1, b"sub")
    assert sub.attr.mode == stat.S_IFDIR | 0o555
    assert sub.attr.size == node(root, b"sub").size == 2 * 2 + 2
    assert sub.attr.nlink == 3  # deep/
    many = await kernel.lookup(1, b"many")
    assert (many.attr.size, many.attr.nlink) == (600, 2)
    empty = await kernel.lookup(1, b"empty")
    assert (empty.attr.size, empty.attr.nlink) == (0, 2)
    deep = await kernel.lookup(sub.nodeid, b"deep")
    assert (deep.attr.size, deep.attr.nlink) == (node(root, b"sub").size - 4, 2)
    x = await kernel.lookup(deep.nodeid, b"x")
    assert x.attr.size == 1 and x.attr.mode == 0o100444


async def test_lookup_of_missing_names_is_a_negative_entry() -> None:
    kernel, _, _ = await mount()
    sub = await kernel.lookup(1, b"sub")
    for parent, name in [(sub.nodeid, b"nope"), (1, b"nope")]:
        raw = await kernel.ok(LOOKUP, parent, name + b"\0")
        negative = decode_entry(raw)
        assert negative.nodeid == 0
        assert negative.entry_valid > 0  # cached: the castore tree never changes


async def test_lookup_in_a_file_is_enotdir() -> None:
    kernel, _, _ = await mount()
    hello = await kernel.lookup(1, b"hello")
    assert await kernel.error(LOOKUP, hello.nodeid, b"x\0") == errno.ENOTDIR


async def test_getattr_of_the_root_and_of_an_entry() -> None:
    kernel, _, _ = await mount()
    raw = await kernel.ok(GETATTR, 1, GETATTR_IN.pack(0, 0, 0))
    assert len(raw) == 104
    valid, valid_nsec, dummy, root = decode_attr_out(raw)
    assert valid >= HUGE_TIMEOUT and (valid_nsec, dummy) == (0, 0)
    assert root.ino == 1 and root.mode == stat.S_IFDIR | 0o555
    assert (root.mtime, root.atime, root.ctime) == (0, 0, 0)
    assert root.nlink == 2 + 3  # empty/, many/, sub/
    assert (root.uid, root.gid) == (0, 0)
    for name in [b"hello", b"sub", b"link"]:
        entry = await kernel.lookup(1, name)
        assert await kernel.getattr(entry.nodeid) == entry.attr
    assert await kernel.error(GETATTR, 424242, GETATTR_IN.pack(0, 0, 0)) == errno.ENOENT


# -- listings ------------------------------------------------------------------------


async def test_readdir_without_opendir_lists_names_kinds_and_offsets() -> None:
    kernel, _, root = await mount()
    sub = await kernel.lookup(1, b"sub")
    # Zero-message opendir: the kernel then opens directories itself (fh 0).
    assert await kernel.error(OPENDIR, sub.nodeid, OPEN_IN.pack(os.O_RDONLY, 0)) == errno.ENOSYS
    assert await kernel.error(OPENDIR, 1, OPEN_IN.pack(os.O_RDONLY, 0)) == errno.ENOSYS
    entries = await kernel.listing(1)
    assert [e.name for e in entries] == root.names()
    assert [e.off for e in entries] == list(range(1, len(entries) + 1))
    kinds = {e.name: e.type for e in entries}
    assert kinds == {
        b"big": DT_REG,
        b"dup": DT_REG,
        b"empty": DT_DIR,
        b"hello": DT_REG,
        b"hello-exe": DT_REG,
        b"link": DT_LNK,
        b"many": DT_DIR,
        b"sub": DT_DIR,
    }
    assert all(e.entry is None for e in entries)
    inos = {e.name: e.ino for e in entries}
    assert inos[b"sub"] == sub.nodeid
    assert inos[b"dup"] == inos[b"hello"] == (await kernel.lookup(1, b"hello")).nodeid
    # The exact bytes: "hello-exe" is 24 + 9 = 33 bytes, padded to 40.
    raw = await kernel.ok(READDIR, 1, read_in(0, 0, 4096))
    sizes = [(24 + len(name) + 7) & ~7 for name in root.names()]
    assert len(raw) == sum(sizes)
    at = sum(sizes[: root.names().index(b"hello-exe")])
    assert DIRENT.unpack_from(raw, at)[1:] == (5, 9, DT_REG)
    assert raw[at + 24 : at + 40] == b"hello-exe" + bytes(7)
    sub_entries = await kernel.listing(sub.nodeid)
    assert [(e.name, e.type) for e in sub_entries] == [(b"deep", DT_DIR), (b"hello", DT_REG)]
    # Past the end: an empty reply.
    assert await kernel.listing(sub.nodeid, offset=2) == []


async def test_readdir_resumes_from_the_last_offset_without_loss_or_repeat() -> None:
    kernel, _, _ = await mount()
    many = await kernel.lookup(1, b"many")
    size = 7 * 32 + 20  # "fNNNN": 24 + 5 bytes, padded to 32; seven fit
    names: list[bytes] = []
    offset = 0
    rounds = 0
    while True:
        batch = await kernel.listing(many.nodeid, offset, size)
        if not batch:
            break
        rounds += 1
        assert len(batch) == 7 or offset + len(batch) == 300
        names += [e.name for e in batch]
        offset = batch[-1].off
    assert names == [f"f{i:04d}".encode() for i in range(300)]
    assert rounds == -(-300 // 7)
    # A buffer too small for one entry gives nothing, and loses nothing.
    assert await kernel.listing(many.nodeid, 0, 31) == []


async def test_readdirplus_gives_entries_with_attributes_each_counted_as_a_lookup() -> None:
    kernel, fs, root = await mount()
    sub = await kernel.lookup(1, b"sub")
    raw = await kernel.ok(READDIRPLUS, sub.nodeid, read_in(0, 0, 4096))
    # 128 + 24 + 4 ("deep") = 156 → 160; 128 + 24 + 5 ("hello") = 157 → 160.
    assert len(raw) == 320
    assert raw[156:160] == bytes(4) and raw[317:320] == bytes(3)
    entries = decode_dirents(raw, plus=True)
    assert [(e.name, e.type, e.off) for e in entries] == [
        (b"deep", DT_DIR, 1),
        (b"hello", DT_REG, 2),
    ]
    deep, hello = entries
    for e in entries:
        assert e.entry is not None
        assert e.entry.nodeid == e.ino == e.entry.attr.ino
        assert e.entry.entry_valid >= HUGE_TIMEOUT and e.entry.attr_valid >= HUGE_TIMEOUT
    assert deep.entry is not None and hello.entry is not None
    deep_attr = deep.entry.attr
    assert deep_attr.mode == stat.S_IFDIR | 0o555
    assert (deep_attr.nlink, deep_attr.size, deep_attr.mtime) == (2, 2, 1)
    assert hello.entry.attr.mode == 0o100444 and hello.entry.attr.size == len(HELLO)
    assert fs.inodes.lookup_count(deep.ino) == 1
    assert fs.inodes.lookup_count(hello.ino) == 1
    # The kernel forgets what it was given: the inode goes.
    kernel.forget(deep.ino, 1)
    assert fs.inodes.get(deep.ino) is None
    kernel.forget(hello.ino, 1)
    assert fs.inodes.get(hello.ino) is None
    # Looked up again, it is a working inode with the right attributes.
    again = await kernel.lookup(sub.nodeid, b"deep")
    assert again.nodeid != deep.ino
    assert again.attr._replace(ino=deep.ino) == deep_attr
    assert [e.name for e in await kernel.listing(again.nodeid)] == [b"x"]
    assert node(root, b"sub").size == sub.attr.size


async def test_readdirplus_counts_only_the_entries_that_fit() -> None:
    kernel, fs, _ = await mount()
    many = await kernel.lookup(1, b"many")
    hello = await kernel.lookup(1, b"hello")
    before = fs.inodes.lookup_count(hello.nodeid)
    size = 5 * 160 + 100  # 128 + 24 + 5 → 160 each; five fit
    offset = 0
    names: list[bytes] = []
    while True:
        batch = await kernel.listing(many.nodeid, offset, size, plus=True)
        if not batch:
            break
        assert len(batch) == 5
        assert all(e.ino == hello.nodeid for e in batch)
        names += [e.name for e in batch]
        offset = batch[-1].off
    assert names == [f"f{i:04d}".encode() for i in range(300)]
    assert fs.inodes.lookup_count(hello.nodeid) == before + 300
    kernel.forget(hello.nodeid, before + 300)
    assert fs.inodes.get(hello.nodeid) is None


async def test_root_listing_is_eperm_without_list_root() -> None:
    kernel, _, _ = await mount(list_root=False)
    assert await kernel.error(READDIR, 1, read_in(0, 0, 4096)) == errno.EPERM
    assert await kernel.error(READDIRPLUS, 1, read_in(0, 0, 4096)) == errno.EPERM
    assert (await kernel.lookup(1, b"hello")).attr.size == len(HELLO)
    sub = await kernel.lookup(1, b"sub")
    assert len(await kernel.listing(sub.nodeid)) == 2


async def test_opendir_with_handles_when_zero_message_opendir_is_off() -> None:
    kernel, _, _ = await mount(options=SessionOptions(zero_message_opendir=False))
    sub = await kernel.lookup(1, b"sub")
    out = await kernel.ok(OPENDIR, sub.nodeid, OPEN_IN.pack(os.O_RDONLY, 0))
    fh, flags, _ = OPEN_OUT.unpack(out)
    assert fh != 0 and flags & FOPEN_CACHE_DIR and flags & FOPEN_KEEP_CACHE
    assert [e.name for e in await kernel.listing(sub.nodeid, fh=fh)] == [b"deep", b"hello"]
    assert await kernel.ok(RELEASEDIR, sub.nodeid, RELEASE_IN.pack(fh, 0, 0, 0)) == b""


# -- files ---------------------------------------------------------------------------


async def test_open_read_release() -> None:
    kernel, _, _ = await mount()
    big = await kernel.lookup(1, b"big")
    fh, flags = await kernel.open(big.nodeid)
    assert flags & FOPEN_KEEP_CACHE
    for offset, size in [(0, 4096), (12_345, 65_536), (4096, 1), (len(BIG) - 10, 4096)]:
        assert await kernel.read(fh, offset, size, big.nodeid) == BIG[offset : offset + size]
    assert await kernel.read(fh, len(BIG), 4096, big.nodeid) == b""
    assert await kernel.read(fh, 10 * len(BIG), 4096, big.nodeid) == b""
    assert await kernel.ok(RELEASE, big.nodeid, RELEASE_IN.pack(fh, os.O_RDONLY, 0, 0)) == b""
    assert await kernel.error(READ, big.nodeid, read_in(fh, 0, 10)) == errno.EIO


async def test_open_for_writing_and_of_a_directory_is_refused() -> None:
    kernel, _, _ = await mount()
    hello = await kernel.lookup(1, b"hello")
    for flags in [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC]:
        assert await kernel.error(OPEN, hello.nodeid, OPEN_IN.pack(flags, 0)) == errno.EROFS
    sub = await kernel.lookup(1, b"sub")
    assert await kernel.error(OPEN, sub.nodeid, OPEN_IN.pack(os.O_RDONLY, 0)) == errno.EISDIR


async def test_open_of_a_small_fetched_file_stores_it_in_the_page_cache() -> None:
    messages: list[list[bytes]] = []
    kernel, _, _ = await mount(notify=messages)
    hello = await kernel.lookup(1, b"hello")
    fh, _ = await kernel.open(hello.nodeid)
    assert len(messages) == 1
    raw = b"".join(messages[0])
    length, code, unique = OUT_HEADER.unpack_from(raw)
    assert (length, code, unique) == (len(raw), NOTIFY_STORE, 0)
    assert len(raw) == 16 + 24 + len(HELLO)
    assert NOTIFY_STORE_OUT.unpack_from(raw, 16) == (hello.nodeid, 0, len(HELLO), 0)
    assert raw[40:] == HELLO
    assert await kernel.read(fh, 0, 4096) == HELLO
    # A second open fetches nothing, so has nothing to store; nor has a big file.
    await kernel.open(hello.nodeid)
    big = await kernel.lookup(1, b"big")
    await kernel.open(big.nodeid)
    assert len(messages) == 1


async def test_readlink() -> None:
    kernel, _, _ = await mount()
    link = await kernel.lookup(1, b"link")
    assert await kernel.ok(READLINK, link.nodeid) == b"hello"
    hello = await kernel.lookup(1, b"hello")
    assert await kernel.error(READLINK, hello.nodeid) == errno.EINVAL


# -- extended attributes ---------------------------------------------------------------


async def test_getxattr_size_probing() -> None:
    kernel, _, root = await mount()
    hello = await kernel.lookup(1, b"hello")
    value = str(Digest.of(HELLO)).encode()
    assert value.startswith(b"b3:") and len(value) == 47

    def body(size: int, name: bytes = XATTR_BLOB) -> bytes:
        return GETXATTR_IN.pack(size, 0) + name + b"\0"

    out = await kernel.ok(GETXATTR, hello.nodeid, body(0))
    assert GETXATTR_OUT.unpack(out) == (47, 0)
    assert await kernel.error(GETXATTR, hello.nodeid, body(46)) == errno.ERANGE
    assert await kernel.ok(GETXATTR, hello.nodeid, body(47)) == value
    assert await kernel.ok(GETXATTR, hello.nodeid, body(4096)) == value
    root_value = str(root.digest).encode()
    assert await kernel.ok(GETXATTR, 1, body(4096, XATTR_DIRECTORY)) == root_value
    sub = await kernel.lookup(1, b"sub")
    sub_value = str(node(root, b"sub").digest).encode()
    assert await kernel.ok(GETXATTR, sub.nodeid, body(4096, XATTR_DIRECTORY)) == sub_value
    for nodeid, name in [(hello.nodeid, b"user.other"), (sub.nodeid, XATTR_BLOB)]:
        assert await kernel.error(GETXATTR, nodeid, body(0, name)) == errno.ENODATA
        assert await kernel.error(GETXATTR, nodeid, body(4096, name)) == errno.ENODATA
    # A name without its NUL is malformed.
    unterminated = GETXATTR_IN.pack(0, 0) + XATTR_BLOB
    assert await kernel.error(GETXATTR, hello.nodeid, unterminated) == errno.EINVAL


async def test_listxattr_size_probing() -> None:
    kernel, _, _ = await mount()
    hello = await kernel.lookup(1, b"hello")
    names = XATTR_BLOB + b"\0"
    out = await kernel.ok(LISTXATTR, hello.nodeid, GETXATTR_IN.pack(0, 0))
    assert GETXATTR_OUT.unpack(out) == (len(names), 0)
    small = GETXATTR_IN.pack(len(names) - 1, 0)
    assert await kernel.error(LISTXATTR, hello.nodeid, small) == errno.ERANGE
    exact = GETXATTR_IN.pack(len(names), 0)
    assert await kernel.ok(LISTXATTR, hello.nodeid, exact) == names
    assert await kernel.ok(LISTXATTR, 1, GETXATTR_IN.pack(4096, 0)) == XATTR_DIRECTORY + b"\0"
    link = await kernel.lookup(1, b"link")
    out = await kernel.ok(LISTXATTR, link.nodeid, GETXATTR_IN.pack(0, 0))
    assert GETXATTR_OUT.unpack(out) == (0, 0)


# -- the rest ------------------------------------------------------------------------


async def test_statfs() -> None:
    kernel, fs, _ = await mount()
    await kernel.lookup(1, b"hello")
    out = await kernel.ok(STATFS, 1)
    assert len(out) == 80
    blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, *spare = KSTATFS.unpack(
        out
    )
    assert (blocks, bfree, bavail, ffree) == (0, 0, 0, 0)
    assert files == len(fs.inodes) + 1
    assert (bsize, namelen, frsize, padding) == (4096, 255, 4096, 0)
    assert spare == [0] * 6


async def test_access() -> None:
    kernel, _, _ = await mount()
    hello = await kernel.lookup(1, b"hello")
    exe = await kernel.lookup(1, b"hello-exe")
    assert await kernel.error(ACCESS, hello.nodeid, ACCESS_IN.pack(os.W_OK, 0)) == errno.EROFS
    assert await kernel.error(ACCESS, 1, ACCESS_IN.pack(os.W_OK, 0)) == errno.EROFS
    assert await kernel.ok(ACCESS, hello.nodeid, ACCESS_IN.pack(os.R_OK, 0)) == b""
    assert await kernel.error(ACCESS, hello.nodeid, ACCESS_IN.pack(os.X_OK, 0)) == errno.EACCES
    assert await kernel.ok(ACCESS, exe.nodeid, ACCESS_IN.pack(os.R_OK | os.X_OK, 0)) == b""
    assert await kernel.ok(ACCESS, 1, ACCESS_IN.pack(os.X_OK, 0)) == b""


async def test_writes_are_erofs_and_unsupported_opcodes_enosys() -> None:
    kernel, _, _ = await mount()
    hello = await kernel.lookup(1, b"hello")
    refused = [
        (SETATTR, hello.nodeid, bytes(88)),
        (MKDIR, 1, MKDIR_IN.pack(0o755, 0o022) + b"new\0"),
        (WRITE, hello.nodeid, WRITE_IN.pack(1, 0, 3, 0, 0, 0, 0) + b"abc"),
        (SYMLINK, 1, b"new\0target\0"),
        (UNLINK, 1, b"hello\0"),
        (RENAME, 1, struct.pack("<Q", 1) + b"hello\0other\0"),
        (CREATE, 1, struct.pack("<IIII", os.O_WRONLY, 0o644, 0o022, 0) + b"new\0"),
        (SETXATTR, hello.nodeid, struct.pack("<IIII", 1, 0, 0, 0) + b"user.a\0x"),
    ]
    for opcode, nodeid, body in refused:
        assert await kernel.error(opcode, nodeid, body) == errno.EROFS, opcode
    unsupported = [
        (FLUSH, hello.nodeid, FLUSH_IN.pack(1, 0, 0, 0)),
        (FSYNC, hello.nodeid, struct.pack("<QII", 1, 0, 0)),
        (STATX, hello.nodeid, bytes(24)),
        (999, 1, b""),
    ]
    for opcode, nodeid, body in unsupported:
        assert await kernel.error(opcode, nodeid, body) == errno.ENOSYS, opcode
    assert (await kernel.getattr(hello.nodeid)).size == len(HELLO)


async def test_malformed_requests_are_answered_einval_or_dropped() -> None:
    kernel, _, _ = await mount(init=False)
    session = kernel.session
    # An INIT without its arguments is malformed; the session still takes a proper one.
    assert await kernel.error(INIT, 0, b"\x07\0\0\0") == errno.EINVAL
    await kernel.init()
    # Shorter than a header: nothing to answer (no unique to answer to).
    assert session.handle(request(GETATTR, 1)[:39]) is None
    assert session.handle(b"") is None
    # The header's length disagrees with the bytes received.
    good = request(GETATTR, 1, GETATTR_IN.pack(0, 0, 0), unique=100)
    for length in [len(good) + 8, len(good) - 8, 10]:
        bad = struct.pack("<I", length) + good[4:]
        assert decode_reply(await session.serve(bad), 100) == (errno.EINVAL, b"")
    assert decode_reply(await session.serve(good + b"extra"), 100) == (errno.EINVAL, b"")
    # Arguments too short for the opcode.
    hello = await kernel.lookup(1, b"hello")
    fh, _ = await kernel.open(hello.nodeid)
    assert await kernel.error(READ, hello.nodeid, read_in(fh, 0, 10)[:10]) == errno.EINVAL
    assert await kernel.error(READ, hello.nodeid, b"") == errno.EINVAL
    assert await kernel.error(OPEN, hello.nodeid, b"\0\0") == errno.EINVAL
    assert await kernel.error(ACCESS, hello.nodeid, b"") == errno.EINVAL
    assert await kernel.error(GETXATTR, hello.nodeid, b"\0\0") == errno.EINVAL
    # A name without its NUL.
    assert await kernel.error(LOOKUP, 1, b"hello") == errno.EINVAL
    assert await kernel.error(LOOKUP, 1, b"") == errno.EINVAL
    # Business as usual afterwards.
    assert await kernel.read(fh, 0, 100) == HELLO
    assert (await kernel.lookup(1, b"hello")).nodeid == hello.nodeid
    assert (await kernel.getattr(1)).ino == 1


async def test_forget_and_batch_forget_free_inodes_without_a_reply() -> None:
    kernel, fs, _ = await mount()
    session = kernel.session
    hello = await kernel.lookup(1, b"hello")
    await kernel.lookup(1, b"dup")  # the same inode: two counts
    link = await kernel.lookup(1, b"link")
    sub = await kernel.lookup(1, b"sub")
    many = await kernel.lookup(1, b"many")
    assert fs.inodes.lookup_count(hello.nodeid) == 2
    kernel.forget(hello.nodeid, 1)
    assert fs.inodes.get(hello.nodeid) is not None
    kernel.forget(hello.nodeid, 1)
    assert fs.inodes.get(hello.nodeid) is None
    kernel.forget(1, 1)  # the root is never forgotten
    assert (await kernel.getattr(1)).ino == 1
    body = BATCH_FORGET_IN.pack(2, 0) + FORGET_ONE.pack(link.nodeid, 1)
    body += FORGET_ONE.pack(sub.nodeid, 1)
    assert session.handle(request(BATCH_FORGET, 0, body, kernel.next_unique())) is None
    assert fs.inodes.get(link.nodeid) is None and fs.inodes.get(sub.nodeid) is None
    # A batch claiming more than it carries: what it carries is taken, still no reply.
    truncated = BATCH_FORGET_IN.pack(3, 0) + FORGET_ONE.pack(many.nodeid, 1)
    assert session.handle(request(BATCH_FORGET, 0, truncated, kernel.next_unique())) is None
    assert fs.inodes.get(many.nodeid) is None
    # A forgotten directory looked up again is served again.
    again = await kernel.lookup(1, b"sub")
    assert again.nodeid != sub.nodeid
    assert again.attr._replace(ino=sub.nodeid) == sub.attr
    assert [e.name for e in await kernel.listing(again.nodeid)] == [b"deep", b"hello"]
    assert (await kernel.lookup(again.nodeid, b"deep")).attr.nlink == 2
    assert (await kernel.lookup(1, b"hello")).attr.size == len(HELLO)


class Gate:
    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()


class GatedReader(BytesBlobReader):
    """Reads wait for the gate to open."""

    def __init__(self, data: bytes, gate: Gate) -> None:
        super().__init__(data)
        self.gate = gate

    async def read(self, n: int = -1) -> bytes:
        self.gate.waiting.set()
        await self.gate.release.wait()
        return await super().read(n)


class GatedBlobs(MemoryBlobService):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    async def open_read(self, digest: Digest) -> BlobReader | None:
        reader = await super().open_read(digest)
        if reader is None:
            return None
        assert isinstance(reader, BytesBlobReader)
        return GatedReader(reader.contents, self.gate)


async def slow_mount() -> tuple[Kernel, GatedBlobs, int, int]:
    """A mount whose one file ("slow") reads only once its gate opens; (.., nodeid, fh)."""
    store = Store()
    blobs = GatedBlobs()
    slow = FileNode(await blobs.put(b"slow data"), 9)
    sub = await store.directory({})
    root = Directory([(b"slow", slow), (b"sub", sub)])
    fs = Filesystem(blobs, store.directories, DirectoryRootNodes(root))
    kernel = Kernel(Session(fs))
    await kernel.init()
    nodeid = (await kernel.lookup(1, b"slow")).nodeid
    fh, _ = await kernel.open(nodeid)
    return kernel, blobs, nodeid, fh


async def test_interrupt_of_a_waiting_read_answers_eintr() -> None:
    kernel, blobs, nodeid, fh = await slow_mount()
    session = kernel.session
    unique = kernel.next_unique()
    task = session.handle(request(READ, nodeid, read_in(fh, 0, 4096), unique))
    assert isinstance(task, asyncio.Task)
    await asyncio.wait_for(blobs.gate.waiting.wait(), 2)
    assert not task.done() and session.in_flight == 1
    # Other requests are answered while the read waits.
    assert (await kernel.getattr(nodeid)).size == 9
    assert (await kernel.lookup(1, b"sub")).attr.nlink == 2
    assert not task.done()
    # An INTERRUPT naming some other request changes nothing.
    other = INTERRUPT_IN.pack(unique + 1000)
    assert session.handle(request(INTERRUPT, 0, other, (unique + 1000) | FUSE_INT_REQ_BIT)) is None
    await asyncio.sleep(0)
    assert not task.done()
    body = INTERRUPT_IN.pack(unique)
    assert session.handle(request(INTERRUPT, 0, body, unique | FUSE_INT_REQ_BIT)) is None
    await asyncio.wait([task], timeout=2)
    assert task.done() and not task.cancelled()
    assert decode_reply(task.result(), unique) == (errno.EINTR, b"")
    assert session.in_flight == 0
    # The handle still works once the blob answers.
    blobs.gate.release.set()
    assert await kernel.read(fh, 0, 4096, nodeid) == b"slow data"


async def test_interrupt_right_after_its_request_still_gets_the_request_a_reply() -> None:
    """The transport reads the READ and its INTERRUPT in one go, before the READ's task ran.

    Every request but FORGET must be answered, interrupted or not: the READ's
    reply is EINTR (or its data), never nothing.
    """
    kernel, blobs, nodeid, fh = await slow_mount()
    session = kernel.session
    unique = kernel.next_unique()
    task = session.handle(request(READ, nodeid, read_in(fh, 0, 4096), unique))
    assert isinstance(task, asyncio.Task)
    body = INTERRUPT_IN.pack(unique)
    assert session.handle(request(INTERRUPT, 0, body, unique | FUSE_INT_REQ_BIT)) is None
    blobs.gate.release.set()
    await asyncio.wait([task], timeout=2)
    assert task.done()
    assert not task.cancelled(), "the interrupted READ got no reply at all"
    code, data = decode_reply(task.result(), unique)
    assert (code, data) in [(errno.EINTR, b""), (0, b"slow data")]


async def test_destroy() -> None:
    kernel, _, _ = await mount()
    hello = await kernel.lookup(1, b"hello")
    await kernel.open(hello.nodeid)
    assert await kernel.ok(DESTROY) == b""
    assert kernel.session.destroyed

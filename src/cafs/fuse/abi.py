"""The FUSE kernel ABI: message layouts, opcodes and flags (``include/uapi/linux/fuse.h``).

Plain data and nothing else. Every struct is little-endian, as on the
architectures FUSE runs cafs on (x86-64, arm64), and each is a precompiled
``struct.Struct`` named after its C counterpart.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

KERNEL_VERSION = 7
"""The protocol's major version; majors must match exactly."""
KERNEL_MINOR_VERSION = 40
"""The newest minor cafs speaks; both sides use the smaller of the two."""
MINIMUM_MINOR_VERSION = 28
"""The oldest minor served (Linux 4.20): cached listings, MAX_PAGES, CACHE_SYMLINKS."""

ROOT_ID = 1
MIN_READ_BUFFER = 8192
"""A read of /dev/fuse must offer at least this many bytes."""


class Opcode(IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


class NotifyCode(IntEnum):
    """Unsolicited messages to the kernel: ``unique`` 0, the code in ``error``."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6
    RESEND = 7
    """Send again every request read but not answered (Linux 6.9+; no payload)."""


class InitFlag(IntFlag):
    """``fuse_init_in.flags`` / ``fuse_init_out.flags`` (the low 32 bits)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30
    INIT_RESERVED = 1 << 31


class InitFlag2(IntFlag):
    """``flags2`` (bit n here is bit n + 32 of the 64-bit flag set); needs INIT_EXT."""

    SECURITY_CTX = 1 << 0
    HAS_INODE_DAX = 1 << 1
    CREATE_SUPP_GROUP = 1 << 2
    HAS_EXPIRE_ONLY = 1 << 3
    DIRECT_IO_ALLOW_MMAP = 1 << 4
    PASSTHROUGH = 1 << 5
    NO_EXPORT_SUPPORT = 1 << 6
    HAS_RESEND = 1 << 7
    ALLOW_IDMAP = 1 << 8
    OVER_IO_URING = 1 << 9
    REQUEST_TIMEOUT = 1 << 10


class OpenFlag(IntFlag):
    """``fuse_open_out.open_flags``."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    STREAM = 1 << 4
    NOFLUSH = 1 << 5
    PARALLEL_DIRECT_WRITES = 1 << 6
    PASSTHROUGH = 1 << 7


GETATTR_FH = 1 << 0
"""``fuse_getattr_in.getattr_flags``: ``fh`` is valid."""
INT_REQ_BIT = 1 << 0
"""Set in the ``unique`` of an INTERRUPT request itself."""

# -- headers -----------------------------------------------------------------

in_header = struct.Struct("<IIQQIIIHH")
"""fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding."""
out_header = struct.Struct("<IiQ")
"""fuse_out_header: len, error (negative errno), unique."""

# -- requests ----------------------------------------------------------------

init_in = struct.Struct("<IIII")
"""fuse_init_in up to flags: major, minor, max_readahead, flags (all a 7.35 kernel sends)."""
init_in_flags2 = struct.Struct("<I")
"""fuse_init_in.flags2, at offset 16 (kernels from 7.36 send 64 bytes)."""
getattr_in = struct.Struct("<IIQ")
"""fuse_getattr_in: getattr_flags, dummy, fh."""
open_in = struct.Struct("<II")
"""fuse_open_in: flags, open_flags."""
read_in = struct.Struct("<QQIIQII")
"""fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding (also READDIR)."""
release_in = struct.Struct("<QIIQ")
"""fuse_release_in: fh, flags, release_flags, lock_owner."""
flush_in = struct.Struct("<QIIQ")
"""fuse_flush_in: fh, unused, padding, lock_owner."""
getxattr_in = struct.Struct("<II")
"""fuse_getxattr_in: size, padding; the name and a NUL follow (also LISTXATTR)."""
forget_in = struct.Struct("<Q")
"""fuse_forget_in: nlookup."""
batch_forget_in = struct.Struct("<II")
"""fuse_batch_forget_in: count, dummy; count fuse_forget_one follow."""
forget_one = struct.Struct("<QQ")
"""fuse_forget_one: nodeid, nlookup."""
interrupt_in = struct.Struct("<Q")
"""fuse_interrupt_in: unique."""
access_in = struct.Struct("<II")
"""fuse_access_in: mask, padding."""

# -- replies -----------------------------------------------------------------

init_out = struct.Struct("<IIIIHHIIHHIIH11H")
"""fuse_init_out (64 bytes): major, minor, max_readahead, flags, max_background,
congestion_threshold, max_write, time_gran, max_pages, map_alignment, flags2,
max_stack_depth, request_timeout, unused[11]."""
attr = struct.Struct("<QQQQQQIIIIIIIIII")
"""fuse_attr (88 bytes): ino, size, blocks, atime, mtime, ctime, atimensec,
mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags."""
entry_out = struct.Struct("<QQQQII")
"""fuse_entry_out before its fuse_attr: nodeid, generation, entry_valid,
attr_valid, entry_valid_nsec, attr_valid_nsec."""
ENTRY_OUT_SIZE = entry_out.size + attr.size
attr_out = struct.Struct("<QII")
"""fuse_attr_out before its fuse_attr: attr_valid, attr_valid_nsec, dummy."""
ATTR_OUT_SIZE = attr_out.size + attr.size
open_out = struct.Struct("<QIi")
"""fuse_open_out: fh, open_flags, backing_id."""
getxattr_out = struct.Struct("<II")
"""fuse_getxattr_out: size, padding."""
kstatfs = struct.Struct("<QQQQQIIII6I")
"""fuse_statfs_out / fuse_kstatfs: blocks, bfree, bavail, files, ffree, bsize,
namelen, frsize, padding, spare[6]."""
dirent = struct.Struct("<QQII")
"""fuse_dirent before its name: ino, off, namelen, type; padded to 8 bytes."""
DIRENT_ALIGN = 8

# -- notifications -----------------------------------------------------------

notify_store_out = struct.Struct("<QQII")
"""fuse_notify_store_out: nodeid, offset, size, padding; the data follows."""
notify_inval_inode_out = struct.Struct("<Qqq")
"""fuse_notify_inval_inode_out: ino, off, len (0, 0: the attributes; len -1: all pages)."""
notify_inval_entry_out = struct.Struct("<QII")
"""fuse_notify_inval_entry_out: parent, namelen, flags; the name and a NUL follow."""

for _layout, _size in [(in_header, 40), (out_header, 16), (init_out, 64), (attr, 88)]:
    assert _layout.size == _size, (_layout.format, _size)
assert ENTRY_OUT_SIZE == 128
assert ATTR_OUT_SIZE == 104
assert read_in.size == 40
assert kstatfs.size == 80
assert dirent.size == 24


def dirent_size(name_length: int, plus: bool) -> int:
    """The bytes a (plus) directory entry with a name that long takes, padding included."""
    unpadded = (ENTRY_OUT_SIZE if plus else 0) + dirent.size + name_length
    return (unpadded + DIRENT_ALIGN - 1) & ~(DIRENT_ALIGN - 1)

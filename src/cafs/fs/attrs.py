"""The attributes (``stat``) each inode reports.

Everything is read-only and owned by root, as in ``/nix/store``: files are
0444 or 0555, directories and the root 0555, symlinks 0444. Every inode but
the root has mtime (and atime, ctime) 1, the timestamp Nix gives store paths,
because builds that embed their inputs' times expect it.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from cafs.fs.inodes import ROOT_INO, DirectoryInode, InodeData, RegularInode

BLOCK_SIZE = 512
"""The unit of ``st_blocks`` (fixed by POSIX)."""

PREFERRED_IO_SIZE = 128 * 1024
"""``st_blksize``: what tools size their read buffers by."""

STORE_MTIME = 1
"""Seconds since the epoch of every inode but the root."""


@dataclass(frozen=True, slots=True)
class Attributes:
    ino: int
    mode: int
    nlink: int
    size: int
    blocks: int
    blksize: int
    time: int
    """atime, mtime and ctime, in seconds."""


def root_attributes(subdirectories: int | None) -> Attributes:
    """The mount root: 2 links + one per subdirectory where the provider knows them."""
    return Attributes(
        ino=ROOT_INO,
        mode=stat.S_IFDIR | 0o555,
        nlink=2 + (subdirectories or 0),
        size=0,
        blocks=0,
        blksize=PREFERRED_IO_SIZE,
        time=0,
    )


def attributes(ino: int, data: InodeData) -> Attributes:
    """A non-root inode's attributes.

    A directory reports its node's ``size`` (2 per entry plus the sizes of
    its subdirectories, known before it is loaded, so it never changes) and
    2 + its subdirectories as link count, so it must be populated first; one
    that could not be loaded (a hole in the store) reports 2 links.
    """
    if isinstance(data, RegularInode):
        return Attributes(
            ino=ino,
            mode=stat.S_IFREG | (0o555 if data.executable else 0o444),
            nlink=1,
            size=data.size,
            blocks=-(-data.size // BLOCK_SIZE),
            blksize=PREFERRED_IO_SIZE,
            time=STORE_MTIME,
        )
    if isinstance(data, DirectoryInode):
        return Attributes(
            ino=ino,
            mode=stat.S_IFDIR | 0o555,
            nlink=2 + data.subdirectories,
            size=data.size,
            blocks=0,
            blksize=PREFERRED_IO_SIZE,
            time=STORE_MTIME,
        )
    return Attributes(
        ino=ino,
        mode=stat.S_IFLNK | 0o444,
        nlink=1,
        size=len(data.target),
        blocks=0,
        blksize=PREFERRED_IO_SIZE,
        time=STORE_MTIME,
    )

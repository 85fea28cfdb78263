"""FUSE passthrough: the kernel reads an open file's bytes from a backing file itself.

A plain file holding a blob's verified bytes is registered on the /dev/fuse
connection (``FUSE_DEV_IOC_BACKING_OPEN``), and OPEN answers with
``FOPEN_PASSTHROUGH`` and the id it got: from then on that file's reads (and
``mmap``) go straight to the backing file, at the disk's and the page
cache's own speed, and never reach cafs. Linux 6.9 or newer, and root.

The kernel keeps one I/O mode per inode while it has files open: all
passthrough with one backing file, or all through its page cache. An open
answered against the mode of the inode's other open files fails (EIO to the
opener), so this table keeps every inode in one mode until all its files are
released. Its counts only drop on RELEASE, which the kernel sends after it
let go of the file, so they never undercount what the kernel holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

BACKING_OPEN = 0x4010E501
"""``FUSE_DEV_IOC_BACKING_OPEN``: _IOW(229, 1, struct fuse_backing_map)."""
BACKING_CLOSE = 0x4004E502
"""``FUSE_DEV_IOC_BACKING_CLOSE``: _IOW(229, 2, uint32_t)."""
backing_map = struct.Struct("<iIQ")
"""struct fuse_backing_map: fd, flags, padding."""


@dataclass
class _Backed:
    backing_id: int
    opens: int
    pinned: bool = False
    """Registered by a predecessor (a takeover): its opens are unknown, so it is never closed."""


class Passthrough:
    """The backing files registered on one connection, and each open inode's I/O mode."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.enabled = True
        """Cleared when the kernel refuses registrations (no privilege, no support)."""
        self._backed: dict[int, _Backed] = {}
        self._cached: dict[int, int] = {}
        """Open files answered without passthrough, by node id."""
        self._cached_only: set[int] = set()
        """Inodes a predecessor served: it may have them open through the page cache."""
        self._files: dict[int, tuple[int, bool]] = {}
        """Open file handle to (node id, passthrough)."""
        self.on_change: Callable[[int, int | None], None] | None = None
        """Told (node id, backing id) when a backing file is registered, (node id, None)
        when it is closed: a handover journal."""
        self.on_switch: Callable[[int], None] | None = None
        """Told the node id of an inode that goes over to its backing file: the pages the
        kernel cached for it through cafs will not be read again (the session drops them)."""

    def restore(self, cached_only: set[int], backed: dict[int, int]) -> None:
        """A takeover: the inodes the predecessor served, and the backing files it registered."""
        self._cached_only = set(cached_only) - set(backed)
        for nodeid, backing_id in backed.items():
            self._backed[nodeid] = _Backed(backing_id, 0, pinned=True)

    def open(self, nodeid: int, fh: int, path: str | None, *, direct: bool = False) -> int | None:
        """The backing id to answer OPEN of ``fh`` with, or None for the page-cache path.

        A ``direct`` (O_DIRECT) open stays off the backing file where it can:
        the backing file system would hold its reads to its block alignment,
        which cafs's own path does not ask for.
        """
        backing_id = self._choose(nodeid, None if direct else path)
        self._files[fh] = (nodeid, backing_id is not None)
        if backing_id is None:
            self._cached[nodeid] = self._cached.get(nodeid, 0) + 1
        return backing_id

    def _choose(self, nodeid: int, path: str | None) -> int | None:
        entry = self._backed.get(nodeid)
        if entry is not None:
            entry.opens += 1
            return entry.backing_id
        if path is None or not self.enabled or self._cached.get(nodeid):
            return None
        if nodeid in self._cached_only:
            return None
        backing_id = self._register(path)
        if backing_id is None:
            return None
        self._backed[nodeid] = _Backed(backing_id, 1)
        if self.on_change is not None:
            self.on_change(nodeid, backing_id)
        if self.on_switch is not None:
            self.on_switch(nodeid)
        return backing_id

    def _register(self, path: str) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("passthrough: cannot open %s: %s", path, exc)
            return None
        try:
            request = bytearray(backing_map.pack(fd, 0, 0))
            backing_id: int = fcntl.ioctl(self.fd, BACKING_OPEN, request, True)
        except OSError as exc:
            # EPERM without CAP_SYS_ADMIN, others where the backing file's
            # file system cannot be stacked under FUSE: stop trying.
            log.warning("FUSE passthrough refused (%s): reads go through cafs", exc)
            self.enabled = False
            return None
        finally:
            os.close(fd)
        return backing_id

    def release(self, fh: int) -> None:
        """``fh`` was released: drop its count, and the backing file with the last one."""
        held = self._files.pop(fh, None)
        if held is None:
            return
        nodeid, passthrough = held
        if not passthrough:
            left = self._cached.get(nodeid, 0) - 1
            if left > 0:
                self._cached[nodeid] = left
            else:
                self._cached.pop(nodeid, None)
            return
        entry = self._backed.get(nodeid)
        if entry is None:
            return
        entry.opens -= 1
        if entry.opens > 0 or entry.pinned:
            return
        del self._backed[nodeid]
        self._unregister(entry.backing_id)
        if self.on_change is not None:
            self.on_change(nodeid, None)

    def _unregister(self, backing_id: int) -> None:
        try:
            fcntl.ioctl(self.fd, BACKING_CLOSE, struct.pack("<I", backing_id))
        except OSError as exc:
            log.warning("passthrough: closing backing file %d failed: %s", backing_id, exc)

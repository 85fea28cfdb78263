"""The thin layer between pyfuse3 and the filesystem model.

It turns the model's answers into pyfuse3's reply objects and every error
into an errno: ``FsError`` carries its own, anything unexpected is logged and
becomes EIO, so no request can take the daemon down.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator, Sequence

import pyfuse3

from cafs.fs.attrs import Attributes
from cafs.fs.filesystem import Filesystem, FsError

log = logging.getLogger("cafs.fs")

ETERNITY = float(1 << 62)
"""Entry and attribute timeout, in seconds: content never changes under a name."""


@contextlib.contextmanager
def errno_of(operation: str) -> Iterator[None]:
    try:
        yield
    except FsError as exc:
        raise pyfuse3.FUSEError(exc.errno) from None
    except pyfuse3.FUSEError:
        raise
    except Exception:
        log.exception("%s failed unexpectedly", operation)
        raise pyfuse3.FUSEError(errno.EIO) from None


def entry_attributes(attrs: Attributes) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attrs.ino
    entry.generation = 0
    entry.entry_timeout = ETERNITY
    entry.attr_timeout = ETERNITY
    entry.st_mode = attrs.mode
    entry.st_nlink = attrs.nlink
    entry.st_uid = 0
    entry.st_gid = 0
    entry.st_rdev = 0
    entry.st_size = attrs.size
    entry.st_blksize = attrs.blksize
    entry.st_blocks = attrs.blocks
    time_ns = attrs.time * 1_000_000_000
    entry.st_atime_ns = time_ns
    entry.st_mtime_ns = time_ns
    entry.st_ctime_ns = time_ns
    return entry


class FuseOperations(pyfuse3.Operations):
    """pyfuse3's request handlers, each a call into the model."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: Filesystem) -> None:
        super().__init__()
        self.fs = fs

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        with errno_of("getattr"):
            return entry_attributes(await self.fs.getattr(inode))

    async def lookup(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext | None = None,
    ) -> pyfuse3.EntryAttributes:
        with errno_of("lookup"):
            return entry_attributes(await self.fs.lookup(parent_inode, name))

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        with errno_of("opendir"):
            return await self.fs.opendir(inode)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        with errno_of("readdir"):
            async with contextlib.aclosing(self.fs.readdir(fh, start_id)) as entries:
                async for entry in entries:
                    attrs = entry_attributes(entry.attrs)
                    if not pyfuse3.readdir_reply(token, entry.name, attrs, entry.next_offset):
                        break

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        with errno_of("releasedir"):
            await self.fs.releasedir(fh)

    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        with errno_of("open"):
            fh = await self.fs.open(inode, flags)
        contents = self.fs.contents_at_hand(fh)
        if contents is not None:
            # Fill the page cache now: the read that follows is answered by
            # the kernel, one round trip fewer per small file.
            try:
                pyfuse3.notify_store(inode, 0, contents)
            except OSError as exc:
                log.debug("ino=%d: page cache not filled: %s", inode, exc)
        # The content behind an inode never changes: keep the page cache.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        with errno_of("read"):
            return await self.fs.read(fh, off, size)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        with errno_of("release"):
            await self.fs.release(fh)

    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        with errno_of("readlink"):
            return await self.fs.readlink(inode)

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        with errno_of("getxattr"):
            return await self.fs.getxattr(inode, name)

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        with errno_of("listxattr"):
            return await self.fs.listxattr(inode)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        info = self.fs.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = info.block_size
        data.f_frsize = info.block_size
        data.f_blocks = info.blocks
        data.f_bfree = 0
        data.f_bavail = 0
        data.f_files = info.files
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = info.name_max
        return data

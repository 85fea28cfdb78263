"""The FUSE session: one request in as bytes, its reply out as bytes, the model in between.

A ``Session`` decodes a request, calls the ``Filesystem`` model and encodes
the answer. It does no I/O: a transport (``/dev/fuse``, virtio queues) hands
it each request it read and writes back whatever reply comes out, so tests
drive it with no kernel at all. Requests that need no waiting (FORGET,
INTERRUPT, STATFS, every refusal) are answered at once; the others run as
tasks, many at a time, so a slow blob never holds up the requests behind it.
INTERRUPT cancels the task of the request it names, which then answers EINTR.

Errors stay inside: the model's ``FsError`` becomes its errno, a malformed
request EINVAL, anything unexpected is logged and answered with EIO. No
request can take the session down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cafs.errors import CafsError
from cafs.fs.attrs import Attributes
from cafs.fs.filesystem import Filesystem, FsError
from cafs.fuse import abi
from cafs.fuse.abi import InitFlag, InitFlag2, Opcode, OpenFlag
from cafs.fuse.passthrough import Passthrough

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
Reply = Sequence[Buffer]
"""A reply (or notification) as the pieces to write in one go, header first."""
Observer = Callable[[int, float, int], None]
"""Called with (opcode, seconds, errno) once a request is answered (metrics)."""

ETERNITY = 1 << 62
"""Entry and attribute timeouts, in seconds: content never changes under a name."""

WANTED_FLAGS = (
    InitFlag.ASYNC_READ
    | InitFlag.PARALLEL_DIROPS
    | InitFlag.DO_READDIRPLUS
    | InitFlag.READDIRPLUS_AUTO
    | InitFlag.CACHE_SYMLINKS
    | InitFlag.MAX_PAGES
)
"""What cafs asks of the kernel where the kernel offers it (see docs/benchmarks.md)."""

READ_ONLY_REFUSED = frozenset(
    {
        Opcode.SETATTR,
        Opcode.SYMLINK,
        Opcode.MKNOD,
        Opcode.MKDIR,
        Opcode.UNLINK,
        Opcode.RMDIR,
        Opcode.RENAME,
        Opcode.LINK,
        Opcode.WRITE,
        Opcode.SETXATTR,
        Opcode.REMOVEXATTR,
        Opcode.CREATE,
        Opcode.FALLOCATE,
        Opcode.RENAME2,
        Opcode.COPY_FILE_RANGE,
        Opcode.TMPFILE,
    }
)
"""Operations that would write: EROFS."""


class ProtocolError(CafsError):
    """The kernel speaks a FUSE protocol this session cannot serve."""


class _Malformed(Exception):
    """A request too short for its opcode's arguments."""


@dataclass(frozen=True)
class SessionOptions:
    """What the session tells the kernel at INIT and how it answers opens."""

    flags: InitFlag = WANTED_FLAGS
    max_readahead: int = 1 << 20
    max_pages: int = 256
    """Pages per request with MAX_PAGES: 256 is 1 MiB reads."""
    max_background: int = 16
    """Background requests (readahead, async reads) the kernel keeps in flight."""
    max_write: int = 4096
    """Writes are refused anyway; this only sizes the kernel's request buffers."""
    zero_message_opendir: bool = True
    """Answer OPENDIR with ENOSYS, so the kernel opens directories itself and
    caches every listing (no OPENDIR/RELEASEDIR/READDIR once listed). Off
    when the model's root listing can change between opens."""
    store_small_files: bool = True
    """Hand small files already fetched to the page cache with NOTIFY_STORE at open."""


@dataclass(slots=True)
class Request:
    """One decoded request header and its arguments (the bytes after the header)."""

    length: int
    """The request's length as its header gives it."""
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    body: memoryview

    def args(self, layout: Any) -> tuple[Any, ...]:
        if len(self.body) < layout.size:
            raise _Malformed(f"{len(self.body)} bytes of arguments, {layout.size} needed")
        return tuple(layout.unpack_from(self.body))

    def name(self, start: int = 0) -> bytes:
        """A NUL-terminated name at ``start`` of the arguments."""
        raw = bytes(self.body[start:])
        end = raw.find(b"\0")
        if end < 0:
            raise _Malformed("a name without its terminating NUL")
        return raw[:end]


def parse_header(request: Buffer) -> Request:
    """The request's header; ValueError if it is shorter than a header."""
    if len(request) < abi.in_header.size:
        raise ValueError(f"a request of {len(request)} bytes is shorter than its header")
    length, opcode, unique, nodeid, uid, gid, pid, _, _ = abi.in_header.unpack_from(request)
    view = memoryview(request)
    return Request(length, opcode, unique, nodeid, uid, gid, pid, view[abi.in_header.size : length])


def reply_error(unique: int, code: int) -> Reply:
    return [abi.out_header.pack(abi.out_header.size, -code, unique)]


def reply_ok(unique: int, *payload: Buffer) -> Reply:
    size = abi.out_header.size + sum(len(piece) for piece in payload)
    return [abi.out_header.pack(size, 0, unique), *payload]


def encode_attr(attrs: Attributes) -> bytes:
    return abi.attr.pack(
        attrs.ino,
        attrs.size,
        attrs.blocks,
        attrs.time,
        attrs.time,
        attrs.time,
        0,
        0,
        0,
        attrs.mode,
        attrs.nlink,
        0,  # uid: root
        0,  # gid: root
        0,  # rdev
        attrs.blksize,
        0,  # flags
    )


def encode_entry(attrs: Attributes) -> bytes:
    return abi.entry_out.pack(attrs.ino, 0, ETERNITY, ETERNITY, 0, 0) + encode_attr(attrs)


NEGATIVE_ENTRY = abi.entry_out.pack(0, 0, ETERNITY, 0, 0, 0) + bytes(abi.attr.size)
"""A lookup's "no such name" that the kernel may keep (node id 0, a timeout)."""


class Session:
    """One FUSE connection's protocol state, dispatching requests onto a ``Filesystem``."""

    def __init__(
        self,
        fs: Filesystem,
        options: SessionOptions | None = None,
        *,
        notify: Callable[[Reply], None] | None = None,
        observer: Observer | None = None,
        passthrough: Passthrough | None = None,
    ) -> None:
        self.fs = fs
        self.passthrough = passthrough
        """Backing files for opens the kernel may read itself (/dev/fuse only), once agreed."""
        if passthrough is not None and notify is not None:
            sent = notify

            def switched(nodeid: int) -> None:
                # Reads go to the backing file from now on: drop what the page cache holds
                # of the file from reads through cafs, so its bytes are not in memory twice.
                # After the OPEN reply is written, outside the request for this inode.
                asyncio.get_running_loop().call_soon(sent, notify_inval_inode(nodeid))

            passthrough.on_switch = switched
        self.observer = observer
        """Told of every request answered: opcode, seconds taken, errno (0 for success)."""
        self.options = options or SessionOptions()
        self._notify = notify
        self.minor: int | None = None
        """The negotiated minor version, once INIT is answered."""
        self.flags = InitFlag(0)
        """The INIT flags both sides agreed on."""
        self.flags2 = InitFlag2(0)
        """The agreed flags of the second word (PASSTHROUGH)."""
        self.on_init: Callable[[int, int], None] | None = None
        """Told the agreed minor version and flags once INIT is answered (a handover journal)."""
        self.refused: ProtocolError | None = None
        """Set when INIT was refused: the transport should stop with this error."""
        self.destroyed = False
        self.counts: dict[int, int] = {}
        """Requests seen, by opcode (what a warm walk costs is a count here)."""
        self._pending: dict[int, asyncio.Task[Reply | None]] = {}
        self._zero_opendir = self.options.zero_message_opendir and not fs.root_listing_grows

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def resume(self, minor: int, flags: int) -> None:
        """Serve a connection whose INIT a predecessor answered, on the terms it agreed.

        ``flags`` holds both words, the second shifted up by 32 bits.
        """
        self.minor = minor
        self.flags = InitFlag(flags & 0xFFFFFFFF)
        self.flags2 = InitFlag2(flags >> 32)
        if not self.flags2 & InitFlag2.PASSTHROUGH:
            self.passthrough = None

    # -- entry points ----------------------------------------------------------

    def handle(self, request: Buffer) -> Reply | asyncio.Task[Reply | None] | None:
        """The reply to ``request``: at once, None (no reply due), or a task that gives it."""
        observer = self.observer
        if observer is None:
            return self._handle(request)
        started = time.perf_counter()
        answer = self._handle(request)
        opcode = int.from_bytes(request[4:8], "little") if len(request) >= 8 else 0
        if isinstance(answer, asyncio.Task):

            def done(task: asyncio.Task[Reply | None]) -> None:
                reply = None if task.cancelled() else task.result()
                observer(opcode, time.perf_counter() - started, _error_of(reply))

            answer.add_done_callback(done)
        else:
            observer(opcode, time.perf_counter() - started, _error_of(answer))
        return answer

    def _handle(self, request: Buffer) -> Reply | asyncio.Task[Reply | None] | None:
        try:
            header = parse_header(request)
        except ValueError as exc:
            log.warning("request dropped: %s", exc)
            return None
        self.counts[header.opcode] = self.counts.get(header.opcode, 0) + 1
        if header.length != len(request):
            log.warning(
                "request unique=%d opcode=%d: length %d in its header, %d received",
                header.unique,
                header.opcode,
                header.length,
                len(request),
            )
            return reply_error(header.unique, errno.EINVAL)
        try:
            answer = self._dispatch(header)
        except _Malformed as exc:
            log.warning("request unique=%d opcode=%d: %s", header.unique, header.opcode, exc)
            return reply_error(header.unique, errno.EINVAL)
        except FsError as exc:
            return reply_error(header.unique, exc.errno)
        if answer is None or isinstance(answer, list):
            return answer
        assert asyncio.iscoroutine(answer)
        work = self._run(header, answer)
        # Run the request at once, up to its first wait: most find what they
        # need at hand and are answered here, with no task to schedule.
        try:
            waiting_on = work.send(None)
        except StopIteration as done:
            reply: Reply | None = done.value
            return reply
        task = asyncio.ensure_future(_finish(_Continuation(work, waiting_on)))
        self._pending[header.unique] = task
        task.add_done_callback(lambda _: self._pending.pop(header.unique, None))
        return task

    async def serve(self, request: Buffer) -> Reply | None:
        """``handle``, waited for: the reply or None."""
        answer = self.handle(request)
        if isinstance(answer, asyncio.Task):
            return await answer
        return answer

    async def close(self) -> None:
        """Cancel what is in flight (the connection is gone)."""
        for task in list(self._pending.values()):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending.values(), return_exceptions=True)

    def _dispatch(self, request: Request) -> Reply | Coroutine[Any, Any, Reply | None] | None:
        opcode = request.opcode
        if opcode == Opcode.INIT:
            return self._init(request)
        if self.minor is None:
            log.warning("request unique=%d opcode=%d before INIT", request.unique, opcode)
            return reply_error(request.unique, errno.EIO)
        handler = self._handlers.get(opcode)
        if handler is not None:
            answer: Reply | Coroutine[Any, Any, Reply | None] | None = handler(self, request)
            return answer
        if opcode in READ_ONLY_REFUSED:
            return reply_error(request.unique, errno.EROFS)
        return reply_error(request.unique, errno.ENOSYS)

    async def _run(self, request: Request, work: Coroutine[Any, Any, Reply | None]) -> Reply | None:
        try:
            return await work
        except FsError as exc:
            return reply_error(request.unique, exc.errno)
        except _Malformed as exc:
            log.warning("request unique=%d opcode=%d: %s", request.unique, request.opcode, exc)
            return reply_error(request.unique, errno.EINVAL)
        except asyncio.CancelledError:
            log.debug("request unique=%d opcode=%d: interrupted", request.unique, request.opcode)
            return reply_error(request.unique, errno.EINTR)
        except Exception:
            log.exception(
                "request unique=%d opcode=%d nodeid=%d failed unexpectedly",
                request.unique,
                request.opcode,
                request.nodeid,
            )
            return reply_error(request.unique, errno.EIO)

    # -- the connection ----------------------------------------------------------

    def _init(self, request: Request) -> Reply:
        major, minor, max_readahead, flags = request.args(abi.init_in)
        if self.minor is not None:
            log.warning("INIT received twice")
            return reply_error(request.unique, errno.EIO)
        if major > abi.KERNEL_VERSION:
            # The kernel retries with our major when it can speak it.
            log.info(
                "kernel offers FUSE %d.%d; answering with %d", major, minor, abi.KERNEL_VERSION
            )
            return reply_ok(
                request.unique,
                abi.init_out.pack(abi.KERNEL_VERSION, abi.KERNEL_MINOR_VERSION, *[0] * 22),
            )
        if major < abi.KERNEL_VERSION or minor < abi.MINIMUM_MINOR_VERSION:
            self.refused = ProtocolError(
                f"the kernel speaks FUSE {major}.{minor}; cafs needs "
                f"{abi.KERNEL_VERSION}.{abi.MINIMUM_MINOR_VERSION} or newer (Linux 4.20+)"
            )
            log.error("%s", self.refused)
            return reply_error(request.unique, errno.EPROTO)
        self.minor = min(minor, abi.KERNEL_MINOR_VERSION)
        self.flags = InitFlag(flags) & self.options.flags
        offered2 = InitFlag2(0)
        if flags & InitFlag.INIT_EXT and len(request.body) >= 16 + abi.init_in_flags2.size:
            offered2 = InitFlag2(abi.init_in_flags2.unpack_from(request.body, 16)[0])
        if self.passthrough is not None and offered2 & InitFlag2.PASSTHROUGH:
            self.flags2 = InitFlag2.PASSTHROUGH
            self.flags |= InitFlag.INIT_EXT
        else:
            self.passthrough = None
        options = self.options
        max_pages = options.max_pages if self.flags & InitFlag.MAX_PAGES else 0
        log.debug(
            "INIT: kernel %d.%d flags %#x; agreed %d.%d flags %#x",
            major,
            minor,
            flags,
            abi.KERNEL_VERSION,
            self.minor,
            int(self.flags),
        )
        if self.on_init is not None:
            self.on_init(self.minor, int(self.flags) | int(self.flags2) << 32)
        reply = abi.init_out.pack(
            abi.KERNEL_VERSION,
            self.minor,
            min(max_readahead, options.max_readahead),
            int(self.flags),
            options.max_background,
            options.max_background * 3 // 4,
            options.max_write,
            1,  # time_gran: nanoseconds
            max_pages,
            0,  # map_alignment
            int(self.flags2),
            1 if self.flags2 & InitFlag2.PASSTHROUGH else 0,  # max_stack_depth: backing files
            # on plain file systems, not on another stacked one
            0,  # request_timeout
            *[0] * 11,
        )
        return reply_ok(request.unique, reply)

    async def _destroy(self, request: Request) -> Reply:
        self.destroyed = True
        await self.fs.close()
        return reply_ok(request.unique)

    def _interrupt(self, request: Request) -> None:
        (target,) = request.args(abi.interrupt_in)
        task = self._pending.get(target)
        if task is None:
            return
        log.debug("INTERRUPT of unique=%d", target)
        # The request has run to its first wait (``handle`` did that), but
        # its task may not have taken its first step yet: a task cancelled
        # before that never runs, and its request would get no reply. The
        # cancellation is queued behind that step, so it lands inside the
        # request, which answers EINTR.
        asyncio.get_running_loop().call_soon(task.cancel)

    def _forget(self, request: Request) -> None:
        (count,) = request.args(abi.forget_in)
        self.fs.forget(request.nodeid, count)

    def _batch_forget(self, request: Request) -> None:
        count, _ = request.args(abi.batch_forget_in)
        start = abi.batch_forget_in.size
        if len(request.body) < start + count * abi.forget_one.size:
            log.warning("BATCH_FORGET of %d entries is truncated", count)
            count = (len(request.body) - start) // abi.forget_one.size
        for nodeid, nlookup in abi.forget_one.iter_unpack(
            request.body[start : start + count * abi.forget_one.size]
        ):
            self.fs.forget(nodeid, nlookup)

    # -- names and attributes ------------------------------------------------------

    async def _lookup(self, request: Request) -> Reply:
        name = request.name()
        try:
            attrs = await self.fs.lookup(request.nodeid, name)
        except FsError as exc:
            if exc.errno == errno.ENOENT and self.fs.names_are_fixed(request.nodeid):
                return reply_ok(request.unique, NEGATIVE_ENTRY)
            raise
        return reply_ok(request.unique, encode_entry(attrs))

    async def _getattr(self, request: Request) -> Reply:
        attrs = await self.fs.getattr(request.nodeid)
        return reply_ok(request.unique, abi.attr_out.pack(ETERNITY, 0, 0), encode_attr(attrs))

    async def _readlink(self, request: Request) -> Reply:
        return reply_ok(request.unique, await self.fs.readlink(request.nodeid))

    async def _access(self, request: Request) -> Reply:
        mask, _ = request.args(abi.access_in)
        await self.fs.access(request.nodeid, mask)
        return reply_ok(request.unique)

    def _statfs(self, request: Request) -> Reply:
        info = self.fs.statfs()
        return reply_ok(
            request.unique,
            abi.kstatfs.pack(
                info.blocks, 0, 0, info.files, 0, info.block_size, info.name_max,
                info.block_size, 0, *[0] * 6,
            ),
        )  # fmt: skip

    # -- files ---------------------------------------------------------------------

    async def _open(self, request: Request) -> Reply:
        flags, _ = request.args(abi.open_in)
        fh = await self.fs.open(request.nodeid, flags)
        if self.options.store_small_files and self._notify is not None:
            contents = self.fs.contents_at_hand(fh)
            if contents is not None:
                # Fill the page cache before answering: the read that
                # follows is served by the kernel, one round trip fewer.
                self._notify(notify_store(request.nodeid, 0, contents))
        if self.passthrough is not None:
            backing_id = self.passthrough.open(
                request.nodeid, fh, self.fs.backing_file(fh), direct=bool(flags & os.O_DIRECT)
            )
            if backing_id is not None:
                # The kernel reads this file from the backing file itself.
                open_flags = OpenFlag.PASSTHROUGH | OpenFlag.NOFLUSH
                return reply_ok(request.unique, abi.open_out.pack(fh, int(open_flags), backing_id))
        open_flags = OpenFlag.KEEP_CACHE | OpenFlag.NOFLUSH
        return reply_ok(request.unique, abi.open_out.pack(fh, int(open_flags), 0))

    async def _read(self, request: Request) -> Reply:
        fh, offset, size, *_ = request.args(abi.read_in)
        return reply_ok(request.unique, await self.fs.read(fh, offset, size))

    async def _release(self, request: Request) -> Reply:
        fh, *_ = request.args(abi.release_in)
        if self.passthrough is not None:
            self.passthrough.release(fh)
        await self.fs.release(fh)
        return reply_ok(request.unique)

    # -- directories -----------------------------------------------------------------

    async def _opendir(self, request: Request) -> Reply:
        if self._zero_opendir:
            # The kernel stops sending OPENDIR and RELEASEDIR and keeps listings.
            return reply_error(request.unique, errno.ENOSYS)
        fh = await self.fs.opendir(request.nodeid)
        flags = OpenFlag(0)
        if request.nodeid != abi.ROOT_ID or not self.fs.root_listing_grows:
            flags = OpenFlag.CACHE_DIR | OpenFlag.KEEP_CACHE
        return reply_ok(request.unique, abi.open_out.pack(fh, int(flags), 0))

    async def _releasedir(self, request: Request) -> Reply:
        fh, *_ = request.args(abi.release_in)
        if fh:
            await self.fs.releasedir(fh)
        return reply_ok(request.unique)

    async def _readdir(self, request: Request) -> Reply:
        return await self._listing(request, plus=False)

    async def _readdirplus(self, request: Request) -> Reply:
        return await self._listing(request, plus=True)

    async def _listing(self, request: Request, *, plus: bool) -> Reply:
        fh, offset, size, *_ = request.args(abi.read_in)
        out = bytearray()
        entries = self.fs.readdir(request.nodeid, fh or None, offset, plus=plus)
        async with contextlib.aclosing(entries):
            async for entry in entries:
                length = abi.dirent_size(len(entry.name), plus)
                if len(out) + length > size:
                    break
                start = len(out)
                if plus:
                    assert entry.attrs is not None
                    out += encode_entry(entry.attrs)
                    # Each entry given with attributes is one more lookup count.
                    self.fs.remember(entry.ino)
                out += abi.dirent.pack(
                    entry.ino, entry.next_offset, len(entry.name), entry.kind >> 12
                )
                out += entry.name
                out += bytes(length - (len(out) - start))
        return reply_ok(request.unique, out)

    # -- extended attributes -----------------------------------------------------------

    async def _getxattr(self, request: Request) -> Reply:
        size, _ = request.args(abi.getxattr_in)
        name = request.name(abi.getxattr_in.size)
        value = await self.fs.getxattr(request.nodeid, name)
        return self._sized(request.unique, size, value)

    async def _listxattr(self, request: Request) -> Reply:
        size, _ = request.args(abi.getxattr_in)
        names = await self.fs.listxattr(request.nodeid)
        return self._sized(request.unique, size, b"".join(name + b"\0" for name in names))

    @staticmethod
    def _sized(unique: int, size: int, value: bytes) -> Reply:
        """Size 0 asks for the length; a buffer too small is ERANGE."""
        if size == 0:
            return reply_ok(unique, abi.getxattr_out.pack(len(value), 0))
        if len(value) > size:
            return reply_error(unique, errno.ERANGE)
        return reply_ok(unique, value)

    _handlers: ClassVar[dict[int, Callable[[Session, Request], Any]]] = {
        Opcode.DESTROY: _destroy,
        Opcode.INTERRUPT: _interrupt,
        Opcode.FORGET: _forget,
        Opcode.BATCH_FORGET: _batch_forget,
        Opcode.LOOKUP: _lookup,
        Opcode.GETATTR: _getattr,
        Opcode.READLINK: _readlink,
        Opcode.ACCESS: _access,
        Opcode.STATFS: _statfs,
        Opcode.OPEN: _open,
        Opcode.READ: _read,
        Opcode.RELEASE: _release,
        Opcode.OPENDIR: _opendir,
        Opcode.RELEASEDIR: _releasedir,
        Opcode.READDIR: _readdir,
        Opcode.READDIRPLUS: _readdirplus,
        Opcode.GETXATTR: _getxattr,
        Opcode.LISTXATTR: _listxattr,
    }
    """Everything not here is EROFS (if it would write) or ENOSYS (FLUSH, FSYNC,
    STATX, ...: the kernel stops sending most of them after the first ENOSYS)."""


def _notification(code: abi.NotifyCode, *pieces: Buffer) -> Reply:
    size = abi.out_header.size + sum(len(piece) for piece in pieces)
    return [abi.out_header.pack(size, code, 0), *pieces]


def notify_store(nodeid: int, offset: int, data: bytes) -> Reply:
    """NOTIFY_STORE: put ``data`` into the page cache of ``nodeid`` at ``offset``."""
    body = abi.notify_store_out.pack(nodeid, offset, len(data), 0)
    return _notification(abi.NotifyCode.STORE, body, data)


def notify_resend() -> Reply:
    """Ask the kernel to send again the requests a predecessor read but never answered."""
    return _notification(abi.NotifyCode.RESEND)


def notify_inval_inode(nodeid: int, offset: int = 0, length: int = -1) -> Reply:
    """NOTIFY_INVAL_INODE: drop cached pages (and attributes, listings) of ``nodeid``."""
    body = abi.notify_inval_inode_out.pack(nodeid, offset, length)
    return _notification(abi.NotifyCode.INVAL_INODE, body)


def notify_inval_entry(parent: int, name: bytes) -> Reply:
    """NOTIFY_INVAL_ENTRY: forget the cached dentry ``name`` in ``parent``."""
    body = abi.notify_inval_entry_out.pack(parent, len(name), 0)
    return _notification(abi.NotifyCode.INVAL_ENTRY, body, name, b"\0")


def _error_of(reply: Reply | None) -> int:
    """The errno a reply carries (0: success, or no reply at all)."""
    if not reply:
        return 0
    return -int(abi.out_header.unpack_from(reply[0])[1])


def describe_counts(counts: dict[int, int]) -> str:
    """Requests by opcode, for a log line: ``LOOKUP=3 READ=10``."""
    parts = []
    for opcode, count in sorted(counts.items()):
        try:
            name = Opcode(opcode).name
        except ValueError:
            name = str(opcode)
        parts.append(f"{name}={count}")
    return " ".join(parts) or "none"


class _Continuation:
    """The rest of a coroutine that already ran up to its first wait, as an awaitable.

    Awaiting it hands what the coroutine waits on to the task that awaits, and
    passes results, exceptions and cancellation back in, as ``await`` would
    have had the coroutine run in that task from its start.
    """

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, Reply | None], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Reply | None]:
        coro = self._coro
        value = self._waiting_on
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    result: Reply | None = done.value
                    return result
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    result = done.value
                    return result


async def _finish(rest: _Continuation) -> Reply | None:
    return await rest

"""The /dev/fuse transport: requests read on the event loop, replies written whole.

The connection's fd is non-blocking and watched by the event loop, so a
request costs no thread hop: it is read when the fd is readable, handed to
the session, and its reply written with one ``writev`` as soon as it is
ready, in whatever order requests finish. At most ``threads`` requests are
served at once; beyond that the fd is left unread until one finishes, and
the kernel queues the rest.

``serve`` is the whole life of a mount: mount, serve until SIGINT/SIGTERM
(then unmount) or until the mount goes away under it (``fusermount3 -u``),
close. Either way it returns normally.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Callable

from cafs.fs.filesystem import Filesystem
from cafs.fuse import abi
from cafs.fuse.mount import MountOptions, mount, raise_readahead, unmount
from cafs.fuse.server import Observer, Reply, Session, SessionOptions, describe_counts

log = logging.getLogger(__name__)

READ_BUFFER = abi.MIN_READ_BUFFER + 8192
"""Bytes offered to each read of /dev/fuse (requests are small: cafs refuses writes)."""


class DevFuseChannel:
    """Moves requests and replies between one /dev/fuse fd and a session."""

    def __init__(self, fd: int, max_in_flight: int) -> None:
        self.fd = fd
        self.max_in_flight = max_in_flight
        self.session: Session | None = None
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[Reply | None]] = set()
        self._reading = False
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self.initialized: asyncio.Future[None] = self._loop.create_future()

    def start(self, session: Session) -> None:
        self.session = session
        self._resume()

    async def wait_closed(self) -> None:
        """Until the kernel ends the connection (unmounted) or ``stop`` is called."""
        await self._closed

    def stop(self) -> None:
        self._pause()
        if not self._closed.done():
            self._closed.set_result(None)

    async def close(self) -> None:
        self.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- reading -------------------------------------------------------------------

    def _resume(self) -> None:
        if not self._reading and not self._closed.done():
            self._loop.add_reader(self.fd, self._readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.fd)
            self._reading = False

    def _readable(self) -> None:
        session = self.session
        assert session is not None
        while len(self._tasks) < self.max_in_flight:
            try:
                request = os.read(self.fd, READ_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was aborted before we read it
                    continue
                if exc.errno != errno.ENODEV:
                    log.error("reading /dev/fuse failed: %s", exc)
                log.debug("the kernel ended the connection")
                self.stop()
                return
            answer = session.handle(request)
            if isinstance(answer, asyncio.Task):
                self._tasks.add(answer)
                answer.add_done_callback(self._finished)
            elif answer is not None:
                self.write(answer)
                self._check_init(session)
        self._pause()  # at the bound: the kernel holds the rest until a request ends

    def _finished(self, task: asyncio.Task[Reply | None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            reply = task.result()
            if reply is not None:
                self.write(reply)
        if len(self._tasks) < self.max_in_flight:
            self._resume()

    def _check_init(self, session: Session) -> None:
        if self.initialized.done():
            return
        if session.refused is not None:
            self.initialized.set_exception(session.refused)
            self.stop()
        elif session.minor is not None:
            self.initialized.set_result(None)

    # -- writing ----------------------------------------------------------------------

    def write(self, reply: Reply) -> None:
        """Write one reply or notification whole; a reply no longer wanted is dropped."""
        if self._closed.done():
            return
        try:
            os.writev(self.fd, reply)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                log.debug("a reply was not wanted any more (interrupted)")
            elif exc.errno == errno.ENODEV:
                self.stop()
            else:
                log.warning("writing to /dev/fuse failed: %s", exc)


async def serve(
    fs: Filesystem,
    mountpoint: str,
    options: MountOptions,
    on_ready: Callable[[], None] | None = None,
    session_options: SessionOptions | None = None,
    observer: Observer | None = None,
) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until stopped or unmounted."""
    mounted = mount(mountpoint, options)
    loop = asyncio.get_running_loop()
    channel = DevFuseChannel(mounted.fd, options.threads)
    session = Session(fs, session_options, notify=channel.write, observer=observer)
    stopping = False

    def stop(signum: int) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("%s: unmounting %s", signal.Signals(signum).name, mountpoint)
            channel.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGUSR1, log_status, session)
    try:
        channel.start(session)
        ready = asyncio.ensure_future(channel.initialized)
        closed = asyncio.ensure_future(channel.wait_closed())
        await asyncio.wait([ready, closed], return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            ready.result()  # a refused INIT raises here
            await asyncio.to_thread(raise_readahead, mounted.mountpoint)
            if on_ready is not None:
                on_ready()
        else:
            ready.cancel()
        await closed
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        await channel.close()
        await session.close()
        await fs.close()
        unmount(mounted)
        log.info("unmounted %s", mountpoint)


def log_status(session: Session) -> None:
    """SIGUSR1: one line of what the mount was asked and how many inodes it holds."""
    inodes = session.fs.inodes
    log.info(
        "status: inodes held=%d known=%d in_flight=%d requests: %s",
        inodes.held,
        len(inodes),
        session.in_flight,
        describe_counts(session.counts),
    )

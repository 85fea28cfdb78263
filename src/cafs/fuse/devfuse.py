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
import subprocess
from collections.abc import Callable
from pathlib import Path

from cafs.castore.nodes import Node
from cafs.fs.filesystem import Filesystem
from cafs.fuse import abi, handover
from cafs.fuse.mount import Mounted, MountOptions, mount, raise_readahead, unmount
from cafs.fuse.passthrough import Passthrough
from cafs.fuse.server import (
    Observer,
    Reply,
    Session,
    SessionOptions,
    describe_counts,
    notify_resend,
)

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
        self._draining = False
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

    async def drain(self) -> None:
        """Read no more requests; return once every request read so far is answered."""
        self._draining = True
        self._pause()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _resume(self) -> None:
        if not self._reading and not self._draining and not self._closed.done():
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
    handover_dir: Path | None = None,
    takeover: bool = False,
) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until stopped or unmounted.

    With ``handover_dir`` the mount can be taken over by a successor (see
    ``cafs.fuse.handover``); with ``takeover`` this process is that successor:
    it serves the live mount there instead of mounting anew.
    """
    restored: handover.Restored | None = None
    keeper: subprocess.Popen[bytes] | None = None
    if takeover:
        assert handover_dir is not None
        answered = await handover.request_handover(handover_dir)
        fd = await asyncio.to_thread(handover.receive_fd, handover_dir)
        log.info(
            "taking over %s from %s",
            mountpoint,
            "its predecessor, which handed over" if answered else "a predecessor that is gone",
        )
        restored = await asyncio.to_thread(handover.read_journal, handover_dir / handover.JOURNAL)
        where = os.path.abspath(mountpoint)  # noqa: ASYNC240 - a string operation, no disk
        mounted = Mounted(fd, where, privileged=os.geteuid() == 0)
        os.set_blocking(fd, False)
        for ino, node in restored.inodes.items():
            fs.inodes.restore(ino, node)
        fs.resumed = True
    else:
        mounted = mount(mountpoint, options)
        if handover_dir is not None:
            keeper = await asyncio.to_thread(handover.spawn_keeper, handover_dir, mounted.fd)
    journal: handover.Journal | None = None
    if handover_dir is not None:
        journal = handover.Journal(handover_dir / handover.JOURNAL, truncate=restored is None)
        if restored is not None:
            journal.rewrite(restored)
        written = journal
        tracker = fs.inodes

        def allocated(ino: int, node: Node) -> None:
            written.inode(ino, node)
            if written.due(len(tracker)):
                written.compact(tracker.live())

        tracker.on_allocate = allocated
    loop = asyncio.get_running_loop()
    channel = DevFuseChannel(mounted.fd, options.threads)
    # Passthrough needs CAP_SYS_ADMIN to register backing files; INIT agrees to it only if asked.
    passthrough = Passthrough(mounted.fd) if mounted.privileged else None
    if passthrough is not None and restored is not None:
        passthrough.restore(set(restored.inodes), restored.backing)
    session = Session(
        fs, session_options, notify=channel.write, observer=observer, passthrough=passthrough
    )
    if journal is not None:
        record = journal

        def agreed(minor: int, flags: int) -> None:
            record.session(minor, flags)

        session.on_init = agreed
        if passthrough is not None:
            passthrough.on_change = record.backing
    if restored is not None:
        session.resume(restored.minor, restored.flags)
    stopping = False
    handed_over = False

    def stop(signum: int) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("%s: unmounting %s", signal.Signals(signum).name, mountpoint)
            channel.stop()

    async def step_down() -> None:
        nonlocal handed_over, stopping
        stopping = handed_over = True
        await channel.drain()

    def stepped_down(_: object) -> None:
        if handed_over:
            channel.stop()

    control: asyncio.AbstractServer | None = None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGUSR1, log_status, session)
    try:
        if handover_dir is not None:
            control = await handover.serve_control(handover_dir, step_down, stepped_down)
        channel.start(session)
        if restored is not None:
            channel.write(notify_resend())  # what a predecessor that died had read
            channel.initialized.set_result(None)
        ready = asyncio.ensure_future(channel.initialized)
        closed = asyncio.ensure_future(channel.wait_closed())
        await asyncio.wait([ready, closed], return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            ready.result()  # a refused INIT raises here
            if restored is None:
                await asyncio.to_thread(raise_readahead, mounted.mountpoint)
            if on_ready is not None:
                on_ready()
        else:
            ready.cancel()
        await closed
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        if control is not None:
            control.close()
        await channel.close()
        await session.close()
        await fs.close()
        if journal is not None:
            journal.close()
        if handed_over:
            os.close(mounted.fd)  # the keeper's copy keeps the connection for the successor
            log.info("handed %s over to a successor", mountpoint)
        else:
            if handover_dir is not None:
                await asyncio.to_thread(handover.dismiss_keeper, handover_dir)
                handover.remove_state(handover_dir)
            unmount(mounted)
            log.info("unmounted %s", mountpoint)
        if keeper is not None and keeper.poll() is not None:
            keeper.wait()


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

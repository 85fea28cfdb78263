"""``cafs virtiofs``: listen on a unix socket and serve the VM that connects.

The front end (QEMU, cloud-hypervisor) connects once, when the VM starts.
The daemon serves that one connection and exits when the VM goes away, or
earlier on SIGINT/SIGTERM; the socket file is removed either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cafs.fuse.server import Session, describe_counts
from cafs.sockets import listen_unix
from cafs.virtio.backend import Backend
from cafs.virtio.fs_device import VirtioFsDevice
from cafs.virtio.vhost_user import Channel

log = logging.getLogger(__name__)
T = TypeVar("T")


async def serve(
    new_session: Callable[[], Session],
    socket_path: str,
    *,
    max_in_flight: int = 64,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve sessions from ``new_session`` to the VM that connects at ``socket_path``."""
    listener = listen_unix(socket_path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if on_ready is not None:
            on_ready()
        connection = await _until(stop, loop.sock_accept(listener))
        _remove(listener, socket_path)
        if connection is None:
            return
        sock, _ = connection
        log.info("front end connected")
        device = VirtioFsDevice(new_session, max_in_flight)
        backend = Backend(device)
        channel = Channel(sock)
        try:
            await _until(stop, backend.serve(channel))
        finally:
            backend.close()
            await device.close()
            channel.close()
        log.info(
            "served %d vhost-user messages, %d FUSE sessions; requests: %s",
            backend.messages,
            device.sessions,
            describe_counts(device.session.counts),
        )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        _remove(listener, socket_path)


async def _until(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None if ``stop`` is set first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


def _remove(listener: socket.socket, socket_path: str) -> None:
    if listener.fileno() >= 0:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)

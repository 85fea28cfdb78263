"""Mount a filesystem, serve it until told to stop, unmount cleanly.

The daemon stops on SIGINT or SIGTERM (then unmounts itself) or when the
mount goes away under it (``fusermount3 -u``); either way it returns
normally. Requests are served by up to ``threads`` concurrent pyfuse3 worker
tasks on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import pyfuse3.asyncio

from cafs.errors import CafsError
from cafs.fs import DEFAULT_THREADS
from cafs.fs.filesystem import Filesystem
from cafs.fs.fuse import FuseOperations

log = logging.getLogger("cafs.fs")

READ_AHEAD_KB = 1024
"""Readahead asked of the kernel for the mount: 1 MiB reads, 8x fewer requests."""


class MountError(CafsError):
    """The filesystem could not be mounted (bad or busy mountpoint, no FUSE)."""


@dataclass(frozen=True)
class MountOptions:
    allow_other: bool = False
    threads: int = DEFAULT_THREADS
    fsname: str = "cafs"


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.lexists(mountpoint):
        raise MountError(f"mountpoint {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy: something is mounted there")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse kernel module")


def mount_options(options: MountOptions) -> set[str]:
    wanted = {
        "ro",
        "nosuid",
        "nodev",
        "noatime",
        "default_permissions",
        f"fsname={options.fsname}",
        "subtype=cafs",
    }
    if options.allow_other:
        wanted.add("allow_other")
    return wanted


def raise_readahead(mountpoint: str) -> None:
    """Let the kernel send larger reads (needs root; harmless to skip)."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("readahead left at the kernel default (%s): %s", path, exc)


async def serve(
    fs: Filesystem,
    mountpoint: str,
    options: MountOptions,
    on_ready: Callable[[], None] | None = None,
) -> None:
    check_mountpoint(mountpoint)
    pyfuse3.asyncio.enable()
    try:
        pyfuse3.init(FuseOperations(fs), mountpoint, mount_options(options))
    except RuntimeError as exc:
        raise MountError(f"cannot mount at {mountpoint}: {exc}") from exc
    loop = asyncio.get_running_loop()
    stopping = False

    def stop(signum: int) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("%s: unmounting %s", signal.Signals(signum).name, mountpoint)
            pyfuse3.terminate()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    try:
        main = asyncio.ensure_future(pyfuse3.main(min_tasks=1, max_tasks=options.threads))
        await asyncio.to_thread(raise_readahead, mountpoint)
        if on_ready is not None:
            on_ready()
        await main
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await fs.close()
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", mountpoint)

"""Mounting a FUSE filesystem without libfuse, and unmounting it.

As root, ``/dev/fuse`` is opened and mount(2) is called with its fd in the
options. As anyone else the setuid helper ``fusermount3`` (Debian ``fuse3``)
mounts: it is given one end of a socket pair in ``_FUSE_COMMFD`` and sends
the opened ``/dev/fuse`` fd back over it (SCM_RIGHTS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass

from cafs.errors import CafsError
from cafs.fuse import DEFAULT_THREADS

log = logging.getLogger(__name__)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOATIME = 1024
MNT_DETACH = 2

READ_AHEAD_KB = 1024
"""Readahead asked of the kernel for the mount: 1 MiB reads, 8x fewer requests."""

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(CafsError):
    """The filesystem could not be mounted (bad or busy mountpoint, no FUSE)."""


@dataclass(frozen=True)
class MountOptions:
    allow_other: bool = False
    threads: int = DEFAULT_THREADS
    fsname: str = "cafs"


@dataclass
class Mounted:
    """A live mount: the connection's fd and how it was made."""

    fd: int
    mountpoint: str
    privileged: bool


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.lexists(mountpoint):
        raise MountError(f"mountpoint {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy: something is mounted there")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse kernel module")


def mount(mountpoint: str, options: MountOptions) -> Mounted:
    """Mount at ``mountpoint``; the /dev/fuse fd (non-blocking) of the new connection."""
    check_mountpoint(mountpoint)
    mountpoint = os.path.abspath(mountpoint)
    if os.geteuid() == 0:
        mounted = Mounted(_mount_privileged(mountpoint, options), mountpoint, True)
    else:
        mounted = Mounted(_mount_with_fusermount(mountpoint, options), mountpoint, False)
    os.set_blocking(mounted.fd, False)
    return mounted


def _mount_privileged(mountpoint: str, options: MountOptions) -> int:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise MountError(f"cannot open /dev/fuse: {exc.strerror}") from exc
    mode = stat.S_IFMT(os.stat(mountpoint).st_mode)
    data = [
        f"fd={fd}",
        f"rootmode={mode:o}",
        f"user_id={os.getuid()}",
        f"group_id={os.getgid()}",
        "default_permissions",
    ]
    if options.allow_other:
        data.append("allow_other")
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOATIME
    result = _libc.mount(
        options.fsname.encode(),
        os.fsencode(mountpoint),
        b"fuse.cafs",
        flags,
        ",".join(data).encode(),
    )
    if result != 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise MountError(f"cannot mount at {mountpoint}: {os.strerror(code)}")
    return fd


def _mount_with_fusermount(mountpoint: str, options: MountOptions) -> int:
    helper = shutil.which("fusermount3")
    if helper is None:
        raise MountError("fusermount3 is missing (package fuse3): it mounts for non-root users")
    opts = ["ro", "nosuid", "nodev", "noatime", "default_permissions"]
    opts += [f"fsname={options.fsname}", "subtype=cafs"]
    if options.allow_other:
        opts.append("allow_other")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        process = subprocess.run(
            [helper, "-o", ",".join(opts), "--", mountpoint],
            env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if process.returncode != 0:
            why = process.stderr.decode(errors="replace").strip().splitlines()
            reason = why[-1] if why else f"exit code {process.returncode}"
            raise MountError(
                f"cannot mount at {mountpoint}: {reason.removeprefix('fusermount3: ')}"
            )
        theirs.close()
        ours.settimeout(10)
        try:
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        except OSError as exc:
            raise MountError(f"cannot mount at {mountpoint}: fusermount3: {exc}") from exc
    if not fds:
        raise MountError(f"cannot mount at {mountpoint}: fusermount3 sent no /dev/fuse fd")
    os.set_inheritable(fds[0], False)
    return fds[0]


def raise_readahead(mountpoint: str) -> None:
    """Let the kernel send larger reads (needs root; harmless to skip)."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("readahead left at the kernel default (%s): %s", path, exc)


def is_mounted(mountpoint: str) -> bool:
    """From the mount table: whether a FUSE mount of cafs is at ``mountpoint``."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            where = fields[1].replace("\\040", " ")
            if where == target and fields[2].startswith("fuse"):
                return True
    return False


def unmount(mounted: Mounted) -> None:
    """Detach the mount (lazily: files still open get ENOTCONN) and close the connection.

    Closing the fd aborts the connection, so nothing waits on a daemon that
    is gone; a mount already taken away from outside is left as it is.
    """
    try:
        if is_mounted(mounted.mountpoint):
            if mounted.privileged:
                if _libc.umount2(os.fsencode(mounted.mountpoint), MNT_DETACH) != 0:
                    code = ctypes.get_errno()
                    log.warning("unmount %s: %s", mounted.mountpoint, os.strerror(code))
            else:
                done = subprocess.run(
                    ["fusermount3", "-u", "-z", "--", mounted.mountpoint],
                    capture_output=True,
                    check=False,
                )
                if done.returncode != 0:
                    log.warning(
                        "unmount %s: %s", mounted.mountpoint, done.stderr.decode(errors="replace")
                    )
    finally:
        os.close(mounted.fd)

"""Restart without unmount: a live /dev/fuse connection passed from one cafs to the next.

A mount started with a handover folder keeps there what a successor needs:

- ``keeper.sock``: a small keeper process (``python -m cafs.fuse.handover``)
  holds a copy of the /dev/fuse fd, so the connection outlives the serving
  process, even one killed with SIGKILL, and hands the fd (SCM_RIGHTS) to
  whoever asks. It exits when the kernel ends the connection, or when the
  serving process unmounts for good and dismisses it first.
- ``inodes.journal``: every inode number handed to the kernel, with the node
  it stands for, written before the reply that carries it; and the INIT
  parameters agreed with the kernel. A successor answers for every inode the
  kernel may still hold, and never frees one (it cannot know the counts).
- ``control.sock``: the serving process's own socket. A successor asks it to
  hand over: it stops reading requests, finishes those in flight, and exits
  without unmounting.

The successor then reads the journal, takes the fd from the keeper, and asks
the kernel to send again every request the predecessor had read but not
answered (FUSE_NOTIFY_RESEND, Linux 6.9+), which is what a crash leaves.
File and directory handles carry their inode number in their high bits, so
handles opened before the switch keep working after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cafs.castore.digest import Digest
from cafs.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from cafs.errors import CafsError

log = logging.getLogger(__name__)

KEEPER = "keeper.sock"
CONTROL = "control.sock"
JOURNAL = "inodes.journal"
HANDOVER_TIMEOUT = 60.0
COMPACT_AT = 100_000
"""Inode records in the journal before compaction is considered."""

_SESSION = struct.Struct("<cIQ")  # 'S', minor, flags
_INODE = struct.Struct("<cQB")  # 'I', ino, kind; then the node's own bytes
_FILE = struct.Struct("<32sQB")  # digest, size, executable
_DIRECTORY = struct.Struct("<32sQ")  # digest, size
_LENGTH = struct.Struct("<I")
_BACKING = struct.Struct("<cQI")  # 'B', ino, backing id (0: closed)


class HandoverError(CafsError):
    """A takeover that cannot happen: no keeper, a journal that does not read."""


def encode_inode(ino: int, node: Node) -> bytes:
    if isinstance(node, FileNode):
        body = _FILE.pack(node.digest, node.size, node.executable)
        return _INODE.pack(b"I", ino, 1) + body
    if isinstance(node, DirectoryNode):
        return _INODE.pack(b"I", ino, 2) + _DIRECTORY.pack(node.digest, node.size)
    return _INODE.pack(b"I", ino, 3) + _LENGTH.pack(len(node.target)) + node.target


@dataclass
class Restored:
    """What a journal says: the agreed INIT parameters and the inodes handed out."""

    minor: int
    flags: int
    inodes: dict[int, Node]
    backing: dict[int, int] = field(default_factory=dict)
    """The FUSE passthrough backing file id each inode held (see ``cafs.fuse.passthrough``)."""


def read_journal(path: Path) -> Restored:
    """The journal's contents; a record cut short by a crash at its end is ignored."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HandoverError(f"cannot read the inode journal {path}: {exc.strerror}") from exc
    session: tuple[int, int] | None = None
    inodes: dict[int, Node] = {}
    backing: dict[int, int] = {}
    offset = 0
    try:
        while offset < len(data):
            tag = data[offset : offset + 1]
            if tag == b"S":
                _, minor, flags = _SESSION.unpack_from(data, offset)
                session = (minor, flags)
                offset += _SESSION.size
            elif tag == b"B":
                _, ino, backing_id = _BACKING.unpack_from(data, offset)
                offset += _BACKING.size
                if backing_id:
                    backing[ino] = backing_id
                else:
                    backing.pop(ino, None)
            elif tag == b"I":
                _, ino, kind = _INODE.unpack_from(data, offset)
                offset += _INODE.size
                node: Node
                if kind == 1:
                    digest, size, executable = _FILE.unpack_from(data, offset)
                    node = FileNode(Digest(digest), size, bool(executable))
                    offset += _FILE.size
                elif kind == 2:
                    digest, size = _DIRECTORY.unpack_from(data, offset)
                    node = DirectoryNode(Digest(digest), size)
                    offset += _DIRECTORY.size
                elif kind == 3:
                    (length,) = _LENGTH.unpack_from(data, offset)
                    offset += _LENGTH.size
                    if offset + length > len(data):
                        break
                    node = SymlinkNode(data[offset : offset + length])
                    offset += length
                else:
                    raise HandoverError(f"inode journal {path}: unknown inode kind {kind}")
                inodes[ino] = node
            else:
                raise HandoverError(f"inode journal {path}: unknown record at byte {offset}")
    except struct.error:
        pass  # the last record was cut short
    if session is None:
        raise HandoverError(f"inode journal {path} holds no session: the mount never started")
    return Restored(session[0], session[1], inodes, backing)


class Journal:
    """Appends records to the inode journal, one ``write`` each (O_APPEND)."""

    def __init__(self, path: Path, *, truncate: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        if truncate:
            flags |= os.O_TRUNC
        self.path = path
        self._fd = os.open(path, flags, 0o600)
        self._session: tuple[int, int] | None = None
        self._backing: dict[int, int] = {}
        self.records = 0
        """Inode records written since the journal was last written whole."""

    def session(self, minor: int, flags: int) -> None:
        self._session = (minor, flags)
        os.write(self._fd, _SESSION.pack(b"S", minor, flags))

    def inode(self, ino: int, node: Node) -> None:
        os.write(self._fd, encode_inode(ino, node))
        self.records += 1

    def backing(self, ino: int, backing_id: int | None) -> None:
        """``ino`` got a passthrough backing file (or gave it up: None)."""
        if backing_id is None:
            self._backing.pop(ino, None)
        else:
            self._backing[ino] = backing_id
        os.write(self._fd, _BACKING.pack(b"B", ino, backing_id or 0))

    def due(self, live: int) -> bool:
        """Whether the journal holds so many freed inodes that it is worth writing anew."""
        return self.records > max(COMPACT_AT, 4 * live)

    def rewrite(self, restored: Restored) -> None:
        """Write the journal anew with just ``restored``: a takeover, or compaction."""
        self._session = (restored.minor, restored.flags)
        records = [_SESSION.pack(b"S", restored.minor, restored.flags)]
        records += [encode_inode(ino, node) for ino, node in sorted(restored.inodes.items())]
        self._backing = dict(restored.backing)
        records += [_BACKING.pack(b"B", ino, bid) for ino, bid in sorted(self._backing.items())]
        temp = self.path.with_suffix(".new")
        temp.write_bytes(b"".join(records))
        os.replace(temp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.records = len(restored.inodes)

    def compact(self, live: Iterable[tuple[int, Node]]) -> None:
        """Keep only the inodes still live (a freed one is held by the kernel no more)."""
        if self._session is not None:
            self.rewrite(Restored(*self._session, dict(live), self._backing))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


# -- the keeper --------------------------------------------------------------------


def spawn_keeper(folder: Path, fd: int) -> subprocess.Popen[bytes]:
    """Start the keeper holding ``fd``; returns once it listens."""
    path = folder / KEEPER
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    ready_read, ready_write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "cafs.fuse.handover", str(path), str(fd), str(ready_write)],
            pass_fds=(fd, ready_write),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the mount leaves it be
        )
        os.close(ready_write)
        ready_write = -1
        if os.read(ready_read, 1) != b"1":
            process.wait(timeout=10)
            raise HandoverError(f"the fd keeper did not start (exit {process.returncode})")
    finally:
        os.close(ready_read)
        if ready_write >= 0:
            os.close(ready_write)
    return process


def keep(path: str, fd: int, ready: int) -> None:
    """The keeper: hold ``fd``, give a copy to each connection, leave when the mount goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(8)
    os.write(ready, b"1")
    os.close(ready)
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: only an error (the connection ended) wakes it
    poller.register(server.fileno(), select.POLLIN)
    try:
        while True:
            for which, events in poller.poll():
                if which == fd and events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    return
                if which == server.fileno():
                    connection, _ = server.accept()
                    with connection:
                        connection.settimeout(5)
                        try:
                            asked = connection.recv(1)
                        except OSError:
                            continue
                        if asked == b"q":
                            return
                        if asked == b"f":
                            socket.send_fds(connection, [b"fuse"], [fd])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def receive_fd(folder: Path) -> int:
    """A copy of the live /dev/fuse fd, from the keeper in ``folder``."""
    path = folder / KEEPER
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(str(path))
            connection.sendall(b"f")
            _, fds, _, _ = socket.recv_fds(connection, 16, 1)
        except OSError as exc:
            raise HandoverError(
                f"no live mount to take over at {path}: {exc.strerror or exc}"
            ) from exc
    if not fds:
        raise HandoverError(f"the keeper at {path} sent no fd")
    return fds[0]


def dismiss_keeper(folder: Path) -> None:
    """Before a real unmount: the keeper lets its copy of the fd go, so the connection ends
    with this process instead of leaving open files hanging on a daemon that is gone."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(str(folder / KEEPER))
            connection.sendall(b"q")
            connection.recv(1)  # the keeper closes the connection as it leaves
        except OSError:
            pass


# -- asking the predecessor to step down -------------------------------------------


async def request_handover(folder: Path) -> bool:
    """Ask the serving process to stop and hand over; False if none answers (it died)."""
    path = folder / CONTROL
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    try:
        writer.write(b"handover\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), HANDOVER_TIMEOUT)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    return answer == b"ok\n"


async def serve_control(
    folder: Path,
    step_down: Callable[[], Awaitable[None]],
    answered: Callable[[object], None],
) -> asyncio.AbstractServer:
    """Listen for a successor's request: ``step_down`` stops reading requests and returns
    once those in flight are answered; then the successor is told, then ``answered``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await reader.readline() == b"handover\n":
                log.info("a successor asked to take over: finishing requests in flight")
                await step_down()
                writer.write(b"ok\n")
                await writer.drain()
        finally:
            writer.close()
            answered(None)

    path = folder / CONTROL
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = await asyncio.start_unix_server(handle, path=str(path))
    os.chmod(path, 0o600)
    return server


def remove_state(folder: Path) -> None:
    """After a real unmount: nothing is left to take over."""
    for name in (CONTROL, JOURNAL):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


if __name__ == "__main__":
    keep(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

"""The vhost-user protocol (QEMU ``docs/interop/vhost-user.rst``): messages and framing.

Plain data and the code that moves one message over the unix socket: a
12-byte header (request, flags, payload size), the payload, and file
descriptors riding along as ``SCM_RIGHTS``. The back end's behaviour lives
in ``backend``.
"""

from __future__ import annotations

import array
import asyncio
import socket
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from cafs.errors import CafsError
from cafs.virtio.memory import close_fds

header = struct.Struct("<III")
"""request, flags, size (of the payload that follows)."""
u64 = struct.Struct("<Q")
vring_state = struct.Struct("<II")
"""index, num."""
vring_addr = struct.Struct("<IIQQQQ")
"""index, flags, descriptor table, used ring, available ring, log (addresses)."""
memory_table_head = struct.Struct("<II")
"""nregions, padding; then nregions regions."""

VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3

MAX_FDS = 32
"""Descriptors one message may carry (a memory table has at most 8 regions; slots 32)."""
MAX_PAYLOAD = 4096
"""The largest payload a message of the requests served here needs; longer ones are skipped."""

VRING_INDEX_MASK = 0xFF
VRING_NO_FD = 1 << 8
"""In SET_VRING_KICK/CALL/ERR: no fd comes with the message."""


class Request(IntEnum):
    """Front-end requests."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class VirtioFeature(IntFlag):
    """Virtio feature bits (VIRTIO 1.x section 6) and vhost-user's own bit 30."""

    RING_INDIRECT_DESC = 1 << 28
    RING_EVENT_IDX = 1 << 29
    PROTOCOL_FEATURES = 1 << 30
    VERSION_1 = 1 << 32


class ProtocolFeature(IntFlag):
    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16


class VhostUserError(CafsError):
    """A message the back end cannot act on."""


class Disconnected(CafsError):
    """The front end closed the connection."""


@dataclass(eq=False)
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def name(self) -> str:
        try:
            return Request(self.request).name
        except ValueError:
            return f"request {self.request}"

    def take_fd(self) -> int | None:
        """The message's one fd, now the caller's to close (None if it came without)."""
        if not self.fds:
            return None
        fd = self.fds.pop(0)
        return fd

    def close(self) -> None:
        """Close the fds nobody took."""
        close_fds(self.fds)
        self.fds = []

    def u64(self) -> int:
        return int(self._unpack(u64)[0])

    def _unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        if len(self.payload) < layout.size:
            raise VhostUserError(
                f"{self.name}: payload of {len(self.payload)} bytes, {layout.size} needed"
            )
        return layout.unpack_from(self.payload)

    def vring_state(self) -> tuple[int, int]:
        index, num = self._unpack(vring_state)
        return index, num

    def vring_addr(self) -> tuple[int, ...]:
        return self._unpack(vring_addr)


class Channel:
    """One connection to a front end, on a non-blocking unix stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()

    async def _readable(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._loop.add_reader(fd, ready)
        try:
            await waiter
        finally:
            self._loop.remove_reader(fd)

    async def _receive(self, size: int, fds: list[int]) -> bytes:
        """Exactly ``size`` bytes, and the descriptors that came with them."""
        data = bytearray()
        while len(data) < size:
            try:
                chunk, ancillary, flags, _ = self.sock.recvmsg(
                    size - len(data), socket.CMSG_SPACE(MAX_FDS * 4)
                )
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            except ConnectionResetError as exc:
                raise Disconnected("the front end reset the connection") from exc
            for level, kind, body in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(body[: len(body) - len(body) % 4])
                    fds.extend(received)
            if flags & socket.MSG_CTRUNC:
                close_fds(fds)
                fds.clear()
                raise VhostUserError(f"more than {MAX_FDS} descriptors in one message")
            if not chunk:
                raise Disconnected("the front end closed the connection")
            data += chunk
        return bytes(data)

    async def _discard(self, size: int) -> None:
        while size:
            try:
                chunk = self.sock.recv(min(size, 1 << 16))
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            if not chunk:
                raise Disconnected("the front end closed the connection")
            size -= len(chunk)

    async def receive(self) -> Message:
        """The next message. Disconnected at the end; VhostUserError for a bad frame."""
        fds: list[int] = []
        try:
            raw = await self._receive(header.size, fds)
            request, flags, size = header.unpack(raw)
            message = Message(request, flags, b"", fds)
            if flags & FLAG_VERSION_MASK != VERSION:
                await self._discard(size)
                version = flags & FLAG_VERSION_MASK
                raise VhostUserError(f"{message.name}: protocol version {version}")
            if size > MAX_PAYLOAD:
                await self._discard(size)
                raise VhostUserError(f"{message.name}: payload of {size} bytes is too large")
            message.payload = await self._receive(size, fds)
        except BaseException:
            close_fds(fds)
            raise
        return message

    async def reply(self, message: Message, payload: bytes) -> None:
        flags = VERSION | FLAG_REPLY
        await self._loop.sock_sendall(
            self.sock, header.pack(message.request, flags, len(payload)) + payload
        )

    def close(self) -> None:
        self.sock.close()

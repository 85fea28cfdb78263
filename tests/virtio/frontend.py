"""A vhost-user front end in miniature, for tests: what QEMU does, with no VM.

Guest memory is a memfd handed to the back end as QEMU hands it; the rings
and buffers are laid out in it here, by the rules of VIRTIO 1.x split
virtqueues, and requests are made and answers read the way a guest driver
does. Every layout is written from the vhost-user and VIRTIO specifications,
not taken from ``cafs.virtio``, so a wrong one there shows up here.

Blocking code: tests run it on a thread while the back end serves on the loop.
"""

from __future__ import annotations

import array
import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass, field

# vhost-user requests (docs/interop/vhost-user.rst)
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
SET_MEM_TABLE = 5
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
GET_CONFIG = 24

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
REGION = struct.Struct("<QQQQ")
VERSION = 1
REPLY = 1 << 2
NEED_REPLY = 1 << 3

F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_PROTOCOL_FEATURES = 1 << 30
F_VERSION_1 = 1 << 32
PF_MQ = 1 << 0
PF_REPLY_ACK = 1 << 3

DESC = struct.Struct("<QIHH")
NEXT, WRITE, INDIRECT = 1, 2, 4
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")

USER_BASE = 0x7F12_0000_0000
"""Where the front end "maps" guest memory: ring addresses are given in this space."""
RING_AREA = 0x10000
HEAP_START = 0x100000


@dataclass
class Ring:
    index: int
    size: int
    desc: int
    avail: int
    used: int
    kick: int
    call: int
    free: list[int] = field(default_factory=list)
    avail_idx: int = 0
    last_used: int = 0


class FrontEnd:
    """Speaks vhost-user on ``sock`` and drives rings in a memfd-backed guest memory."""

    def __init__(self, sock: socket.socket, memory_size: int = 16 << 20) -> None:
        self.sock = sock
        self.size = memory_size
        self.memfd = os.memfd_create("guest-ram")
        os.ftruncate(self.memfd, memory_size)
        self.mem = mmap.mmap(self.memfd, memory_size)
        self.rings: dict[int, Ring] = {}
        self.heap = HEAP_START
        self.unique = 0
        self.features = 0

    def close(self) -> None:
        for ring in self.rings.values():
            os.close(ring.kick)
            os.close(ring.call)
        self.sock.close()
        self.mem.close()
        os.close(self.memfd)

    # -- messages -------------------------------------------------------------------

    def send(
        self, request: int, payload: bytes = b"", fds: list[int] | None = None, flags: int = 0
    ) -> None:
        data = HEADER.pack(request, VERSION | flags, len(payload)) + payload
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([data], ancillary)

    def receive(self, request: int, timeout: float = 5.0) -> bytes:
        """One reply to ``request``: its payload."""
        self.sock.settimeout(timeout)
        head = self._exactly(HEADER.size)
        got, flags, size = HEADER.unpack(head)
        assert got == request, f"reply to {got}, expected {request}"
        assert flags & REPLY and flags & 3 == VERSION
        return self._exactly(size)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the back end closed the connection")
            data += chunk
        return data

    def call(self, request: int, payload: bytes = b"", fds: list[int] | None = None) -> bytes:
        self.send(request, payload, fds)
        return self.receive(request)

    def ack(self, request: int, payload: bytes = b"", fds: list[int] | None = None) -> int:
        """Send with need_reply; the back end's status (0 = success)."""
        self.send(request, payload, fds, NEED_REPLY)
        return int(U64.unpack(self.receive(request))[0])

    def silent(self, timeout: float = 0.2) -> bool:
        """No message arrives from the back end within ``timeout``."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return not ready

    # -- set-up as QEMU does it --------------------------------------------------------------

    def handshake(self, *, event_idx: bool = True, indirect: bool = True) -> None:
        offered = U64.unpack(self.call(GET_FEATURES))[0]
        protocol = U64.unpack(self.call(GET_PROTOCOL_FEATURES))[0]
        assert self.ack(SET_PROTOCOL_FEATURES, U64.pack(protocol & (PF_MQ | PF_REPLY_ACK))) == 0
        self.send(SET_OWNER)
        wanted = F_VERSION_1 | F_PROTOCOL_FEATURES
        if event_idx:
            wanted |= F_EVENT_IDX
        if indirect:
            wanted |= F_INDIRECT_DESC
        assert offered & wanted == wanted
        self.features = wanted
        assert self.ack(SET_FEATURES, U64.pack(wanted)) == 0
        table = struct.pack("<II", 1, 0) + REGION.pack(0, self.size, USER_BASE, 0)
        assert self.ack(SET_MEM_TABLE, table, [self.memfd]) == 0

    def setup_ring(self, index: int, size: int = 64, base: int = 0) -> Ring:
        area = index * RING_AREA
        ring = Ring(index, size, area, area + 0x4000, area + 0x8000,
                    os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK),
                    list(range(size)), base, base)  # fmt: skip
        self.mem[area : area + RING_AREA] = bytes(RING_AREA)
        U16.pack_into(self.mem, ring.avail + 2, base)
        U16.pack_into(self.mem, ring.used + 2, base)
        self.rings[index] = ring
        assert self.ack(SET_VRING_NUM, VRING_STATE.pack(index, size)) == 0
        assert self.ack(SET_VRING_BASE, VRING_STATE.pack(index, base)) == 0
        addr = VRING_ADDR.pack(index, 0, USER_BASE + ring.desc, USER_BASE + ring.used,
                               USER_BASE + ring.avail, 0)  # fmt: skip
        assert self.ack(SET_VRING_ADDR, addr) == 0
        assert self.ack(SET_VRING_CALL, U64.pack(index), [ring.call]) == 0
        assert self.ack(SET_VRING_KICK, U64.pack(index), [ring.kick]) == 0
        assert self.ack(SET_VRING_ENABLE, VRING_STATE.pack(index, 1)) == 0
        return ring

    def start(self, queues: int = 2) -> None:
        self.handshake()
        for index in range(queues):
            self.setup_ring(index)

    # -- the guest's side of the rings ----------------------------------------------------------

    def alloc(self, size: int) -> int:
        addr = self.heap
        self.heap += (size + 63) & ~63
        assert self.heap <= self.size, "test guest memory exhausted"
        return addr

    def write_desc(self, table: int, index: int, addr: int, length: int, flags: int,
                   next_index: int = 0) -> None:  # fmt: skip
        DESC.pack_into(self.mem, table + DESC.size * index, addr, length, flags, next_index)

    def chain(
        self,
        ring: Ring,
        readable: list[bytes],
        writable: list[int],
        *,
        indirect: bool = False,
    ) -> tuple[int, list[int]]:
        """Lay out a request; (head, guest addresses of the writable buffers)."""
        buffers: list[tuple[int, int, int]] = []
        for data in readable:
            addr = self.alloc(len(data))
            self.mem[addr : addr + len(data)] = data
            buffers.append((addr, len(data), 0))
        out = []
        for size in writable:
            addr = self.alloc(size)
            self.mem[addr : addr + size] = b"\xee" * size
            buffers.append((addr, size, WRITE))
            out.append(addr)
        if indirect:
            table = self.alloc(DESC.size * len(buffers))
            for i, (addr, length, flags) in enumerate(buffers):
                more = NEXT if i + 1 < len(buffers) else 0
                self.write_desc(table, i, addr, length, flags | more, i + 1)
            head = ring.free.pop(0)
            self.write_desc(ring.desc, head, table, DESC.size * len(buffers), INDIRECT)
            return head, out
        slots = [ring.free.pop(0) for _ in buffers]
        for i, (addr, length, flags) in enumerate(buffers):
            more = NEXT if i + 1 < len(buffers) else 0
            nxt = slots[i + 1] if more else 0
            self.write_desc(ring.desc, slots[i], addr, length, flags | more, nxt)
        return slots[0], out

    def publish(
        self, ring: Ring, head: int, *, kick: bool = True, used_event: int | None = None
    ) -> None:
        """Put ``head`` on the available ring and kick, as a driver does; ``used_event``
        (default: the next used entry) is when the guest wants its interrupt."""
        U16.pack_into(self.mem, ring.avail + 4 + 2 * (ring.avail_idx % ring.size), head)
        ring.avail_idx = (ring.avail_idx + 1) & 0xFFFF
        # used_event: interrupt me at the next used entry.
        wanted = ring.last_used if used_event is None else used_event
        U16.pack_into(self.mem, ring.avail + 4 + 2 * ring.size, wanted & 0xFFFF)
        U16.pack_into(self.mem, ring.avail + 2, ring.avail_idx)
        if kick:
            os.eventfd_write(ring.kick, 1)

    def used_idx(self, ring: Ring) -> int:
        return int(U16.unpack_from(self.mem, ring.used + 2)[0])

    def avail_event(self, ring: Ring) -> int:
        return int(U16.unpack_from(self.mem, ring.used + 4 + USED_ELEM.size * ring.size)[0])

    def set_used_event(self, ring: Ring, value: int) -> None:
        U16.pack_into(self.mem, ring.avail + 4 + 2 * ring.size, value & 0xFFFF)

    def wait_signal(self, ring: Ring, timeout: float = 5.0) -> bool:
        ready, _, _ = select.select([ring.call], [], [], timeout)
        if not ready:
            return False
        os.eventfd_read(ring.call)
        return True

    def take_used(self, ring: Ring) -> list[tuple[int, int]]:
        """Used entries not seen yet: (head, bytes written)."""
        found = []
        while ring.last_used != self.used_idx(ring):
            slot = ring.last_used % ring.size
            found.append(USED_ELEM.unpack_from(self.mem, ring.used + 4 + USED_ELEM.size * slot))
            ring.last_used = (ring.last_used + 1) & 0xFFFF
        return [(int(head), int(length)) for head, length in found]

    def wait_used(
        self, ring: Ring, count: int = 1, timeout: float = 5.0, *, rearm: bool = True
    ) -> list[tuple[int, int]]:
        """Wait for ``count`` used entries, asking for interrupts as a driver does
        (``rearm``: publish ``used_event``, then look once more before sleeping)."""
        found: list[tuple[int, int]] = []
        while True:
            found += self.take_used(ring)
            if len(found) >= count:
                return found
            if rearm:
                self.set_used_event(ring, ring.last_used)
                found += self.take_used(ring)
                if len(found) >= count:
                    return found
            if not self.wait_signal(ring, timeout):
                found += self.take_used(ring)
                assert len(found) >= count, f"{len(found)} of {count} requests came back"
                return found

    def release(self, ring: Ring, head: int, indirect: bool = False) -> None:
        """Give the descriptors of a returned chain back to the free list."""
        index = head
        while True:
            _, _, flags, nxt = DESC.unpack_from(self.mem, ring.desc + DESC.size * index)
            ring.free.append(index)
            if indirect or not flags & NEXT:
                return
            index = nxt

    # -- FUSE over a ring -------------------------------------------------------------------------

    def request(self, opcode: int, nodeid: int = 0, body: bytes = b"") -> tuple[int, bytes]:
        self.unique += 1
        header = struct.pack("<IIQQIIIHH", 40 + len(body), opcode, self.unique, nodeid,
                             0, 0, 1, 0, 0)  # fmt: skip
        return self.unique, header + body

    def fuse(
        self,
        opcode: int,
        nodeid: int = 0,
        body: bytes = b"",
        *,
        reply_size: int = 4096,
        queue: int = 1,
        split_in: int = 1,
        split_out: int = 1,
        indirect: bool = False,
    ) -> tuple[int, bytes]:
        """One FUSE request through ring ``queue``: (error, reply payload)."""
        unique, raw = self.request(opcode, nodeid, body)
        ring = self.rings[queue]
        cut = [len(raw) * i // split_in for i in range(split_in + 1)]
        readable = [raw[cut[i] : cut[i + 1]] for i in range(split_in)]
        sizes = [reply_size // split_out] * split_out
        sizes[-1] += reply_size - sum(sizes)
        head, out = self.chain(ring, readable, sizes, indirect=indirect)
        self.publish(ring, head)
        ((got, written),) = self.wait_used(ring)
        assert got == head
        self.release(ring, head, indirect)
        reply = b"".join(bytes(self.mem[a : a + s]) for a, s in zip(out, sizes, strict=True))
        reply = reply[:written]
        length, error, reply_unique = struct.unpack_from("<IiQ", reply)
        assert reply_unique == unique and length == written
        return -error, reply[16:]

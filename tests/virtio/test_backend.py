"""The vhost-user-fs back end in one process with a test front end: no VM, real memfd memory.

The back end serves on the event loop; each scenario runs the front end on a
thread, as QEMU would run beside cafs, and checks what lands in guest memory.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from cafs.castore.blobs.base import BlobReader, BytesBlobReader
from cafs.castore.blobs.memory import MemoryBlobService
from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import FileNode
from cafs.fs.filesystem import Filesystem
from cafs.fs.root_nodes import DirectoryRootNodes
from cafs.fuse.server import Session
from cafs.virtio.backend import Backend
from cafs.virtio.fs_device import VirtioFsDevice
from cafs.virtio.vhost_user import Channel
from tests.unit.test_filesystem import HELLO, Store
from tests.unit.test_fuse_session import Gate, GatedReader
from tests.virtio import frontend as fe
from tests.virtio.frontend import FrontEnd

LOOKUP, FORGET, GETATTR, OPEN, READ, INIT, DESTROY, MKDIR = 1, 2, 3, 14, 15, 26, 38, 9
INIT_IN = struct.Struct("<IIIII11I")
READ_IN = struct.Struct("<QQIIQII")
ENTRY_OUT = struct.Struct("<QQQQII")
ATTR_SIZE_AT = 40 + 8  # fuse_entry_out, then fuse_attr: ino, size
BIG = bytes(range(256)) * 1024  # 256 KiB
T = TypeVar("T")


@dataclass
class Served:
    device: VirtioFsDevice
    backend: Backend
    gate_open: Callable[[], None]
    loop: asyncio.AbstractEventLoop

    async def run(self, scenario: Callable[[FrontEnd], T], front: FrontEnd) -> T:
        return await asyncio.to_thread(scenario, front)


class SlowBlobs(MemoryBlobService):
    """Blobs of which one reads only once its gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: Digest | None = None
        self.gate = Gate()

    async def open_read(self, digest: Digest) -> BlobReader | None:
        reader = await super().open_read(digest)
        if reader is None or digest != self.slow:
            return reader
        assert isinstance(reader, BytesBlobReader)
        return GatedReader(reader.contents, self.gate)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, FrontEnd]]:
    store = Store()
    blobs = SlowBlobs()
    blobs.slow = await blobs.put(b"slow data")
    root = Directory(
        [
            (b"big", FileNode(await blobs.put(BIG), len(BIG))),
            (b"hello", FileNode(await blobs.put(HELLO), len(HELLO))),
            (b"slow", FileNode(blobs.slow, 9)),
            (b"sub", await store.directory({b"x": await store.file(b"x")})),
        ]
    )
    open_gate = blobs.gate.release

    def new_session() -> Session:
        return Session(Filesystem(blobs, store.directories, DirectoryRootNodes(root)))

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    device = VirtioFsDevice(new_session)
    backend = Backend(device)
    task = asyncio.ensure_future(backend.serve(Channel(ours)))
    loop = asyncio.get_running_loop()
    front = FrontEnd(theirs)
    try:
        yield Served(device, backend, lambda: loop.call_soon_threadsafe(open_gate.set), loop), front
    finally:
        front.close()
        await asyncio.wait_for(task, 5)
        await device.close()
        ours.close()


def init(front: FrontEnd) -> None:
    error, reply = front.fuse(INIT, 0, INIT_IN.pack(7, 38, 1 << 20, 0, 0, *[0] * 11))
    assert error == 0
    major, minor = struct.unpack_from("<II", reply)
    assert (major, minor) == (7, 38)


def lookup(front: FrontEnd, name: bytes, parent: int = 1) -> tuple[int, int]:
    """(nodeid, size)."""
    error, reply = front.fuse(LOOKUP, parent, name + b"\0")
    assert error == 0, os.strerror(error)
    nodeid = ENTRY_OUT.unpack_from(reply)[0]
    (size,) = struct.unpack_from("<Q", reply, ATTR_SIZE_AT)
    return nodeid, size


def open_file(front: FrontEnd, nodeid: int) -> int:
    error, reply = front.fuse(OPEN, nodeid, struct.pack("<II", os.O_RDONLY, 0))
    assert error == 0
    return int(struct.unpack_from("<Q", reply)[0])


def read(front: FrontEnd, nodeid: int, fh: int, offset: int, size: int, **how: int) -> bytes:
    body = READ_IN.pack(fh, offset, size, 0, 0, 0, 0)
    error, reply = front.fuse(READ, nodeid, body, reply_size=16 + size, **how)
    assert error == 0
    return reply


# -- the handshake ---------------------------------------------------------------------------


async def test_handshake_offers_the_features_a_virtio_fs_front_end_needs(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> tuple[int, int, int]:
        features = fe.U64.unpack(front.call(fe.GET_FEATURES))[0]
        protocol = fe.U64.unpack(front.call(fe.GET_PROTOCOL_FEATURES))[0]
        queues = fe.U64.unpack(front.call(fe.GET_QUEUE_NUM))[0]
        return features, protocol, queues

    features, protocol, queues = await server.run(scenario, front)
    for bit in (fe.F_VERSION_1, fe.F_INDIRECT_DESC, fe.F_EVENT_IDX, fe.F_PROTOCOL_FEATURES):
        assert features & bit
    assert protocol & fe.PF_MQ and protocol & fe.PF_REPLY_ACK
    assert queues >= 2  # hiprio and at least one request queue


# -- FUSE over the rings ------------------------------------------------------------------------


async def test_fuse_requests_round_trip_through_guest_memory(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.start()
        init(front)
        nodeid, size = lookup(front, b"hello")
        assert size == len(HELLO)
        fh = open_file(front, nodeid)
        assert read(front, nodeid, fh, 0, 4096) == HELLO
        big, size = lookup(front, b"big")
        assert size == len(BIG)
        fh = open_file(front, big)
        # The header and arguments spread over descriptors, the answer over several.
        assert read(front, big, fh, 0, 1 << 17, split_in=3, split_out=5) == BIG[: 1 << 17]
        # An indirect table, at an odd offset.
        got = read(front, big, fh, 12345, 70000, split_out=4, indirect=True)
        assert got == BIG[12345 : 12345 + 70000]
        # A second request queue (front ends other than Linux may use several).
        front.setup_ring(2)
        error, reply = front.fuse(LOOKUP, 1, b"hello\0", queue=2)
        assert error == 0 and ENTRY_OUT.unpack_from(reply)[0] == nodeid
        # Writes are refused as on a mount.
        assert front.fuse(MKDIR, 1, struct.pack("<II", 0o755, 0) + b"new\0")[0] == errno.EROFS

    await server.run(scenario, front)


async def test_a_slow_read_does_not_hold_up_the_requests_behind_it(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.start()
        init(front)
        nodeid, _ = lookup(front, b"slow")
        fh = open_file(front, nodeid)
        ring = front.rings[1]
        _, raw = front.request(READ, nodeid, READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0))
        slow_head, (slow_out,) = front.chain(ring, [raw], [4096])
        front.publish(ring, slow_head)
        assert lookup(front, b"hello")[1] == len(HELLO)  # answered while the read waits
        assert lookup(front, b"sub")[0] > 1
        assert front.take_used(ring) == []
        server.gate_open()
        ((head, written),) = front.wait_used(ring)
        assert head == slow_head and written == 16 + 9
        assert bytes(front.mem[slow_out + 16 : slow_out + 25]) == b"slow data"

    await server.run(scenario, front)


async def test_event_idx_interrupts_only_when_the_guest_asks(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.start()
        init(front)
        ring = front.rings[1]
        # The back end asks to be kicked at the next request.
        assert front.avail_event(ring) == ring.avail_idx
        _, raw = front.request(LOOKUP, 1, b"hello\0")
        head, _ = front.chain(ring, [raw], [4096])
        # Ask for an interrupt only 10 entries later: the answer comes, silently.
        front.publish(ring, head, used_event=ring.last_used + 10)
        assert front.wait_used(ring, timeout=0.5, rearm=False) == [(head, 16 + 128)]
        front.release(ring, head)
        assert not front.wait_signal(ring, timeout=0.3)
        # Ask for the next one: an interrupt.
        _, raw = front.request(LOOKUP, 1, b"hello\0")
        head, _ = front.chain(ring, [raw], [4096])
        front.publish(ring, head)
        assert front.wait_signal(ring, timeout=5)
        assert front.take_used(ring)[0][0] == head

    await server.run(scenario, front)


async def test_forget_on_the_hiprio_queue_returns_the_chain_without_a_reply(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> int:
        front.start()
        init(front)
        nodeid, _ = lookup(front, b"sub")
        hiprio = front.rings[0]
        _, raw = front.request(FORGET, nodeid, struct.pack("<Q", 1))
        head, _ = front.chain(hiprio, [raw], [])
        front.publish(hiprio, head)
        assert front.wait_used(hiprio) == [(head, 0)]
        return nodeid

    nodeid = await server.run(scenario, front)
    assert server.device.session.fs.inodes.get(nodeid) is None


async def test_a_second_init_begins_a_new_session(served: tuple[Served, FrontEnd]) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.start()
        init(front)
        assert lookup(front, b"hello")[1] == len(HELLO)
        assert front.fuse(DESTROY)[0] == 0
        init(front)  # the guest mounted again
        assert lookup(front, b"hello")[1] == len(HELLO)

    await server.run(scenario, front)
    assert server.device.sessions == 2


# -- what a broken guest or front end sends ------------------------------------------------------


async def test_bad_chains_are_returned_empty_and_the_ring_goes_on(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.start()
        init(front)
        ring = front.rings[1]
        _, raw = front.request(LOOKUP, 1, b"hello\0")
        addr = front.alloc(len(raw))
        front.mem[addr : addr + len(raw)] = raw
        reply = front.alloc(4096)
        bad: list[list[tuple[int, int, int, int]]] = [
            [(front.size + 4096, 64, 0, 0)],  # outside guest memory
            [(front.size - 8, 64, 0, 0)],  # runs off its end
            [(addr, len(raw), fe.NEXT, 1), (reply, 4096, fe.WRITE | fe.NEXT, 0)],  # loops
            [(addr, len(raw), fe.NEXT, 99)],  # next index outside the table
            [(reply, 4096, fe.WRITE | fe.NEXT, 1), (addr, len(raw), 0, 0)],  # read after write
            [(addr, 24, fe.INDIRECT, 0)],  # an indirect table of 24 bytes
        ]
        for descriptors in bad:
            slots = [ring.free.pop(0) for _ in descriptors]
            for slot, (a, length, flags, nxt) in zip(slots, descriptors, strict=True):
                target = slots[nxt] if nxt < len(slots) else nxt
                front.write_desc(ring.desc, slot, a, length, flags, target)
            front.publish(ring, slots[0])
            assert front.wait_used(ring) == [(slots[0], 0)]
            ring.free.extend(slots)
        # A nested indirect table.
        inner = front.alloc(16)
        front.write_desc(inner, 0, addr, len(raw), 0)
        outer = front.alloc(16)
        front.write_desc(outer, 0, inner, 16, fe.INDIRECT)
        slot = ring.free.pop(0)
        front.write_desc(ring.desc, slot, outer, 16, fe.INDIRECT)
        front.publish(ring, slot)
        assert front.wait_used(ring) == [(slot, 0)]
        ring.free.append(slot)
        # A head outside the ring cannot be returned; it is skipped.
        front.publish(ring, ring.size + 3)
        # Good requests are still served.
        assert lookup(front, b"hello")[1] == len(HELLO)

    await server.run(scenario, front)


async def test_malformed_messages_are_refused_and_the_back_end_goes_on(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.handshake()
        assert front.ack(99) != 0  # unknown request
        assert front.ack(fe.SET_VRING_NUM, fe.VRING_STATE.pack(1, 100)) != 0  # not a power of 2
        assert front.ack(fe.SET_VRING_NUM, fe.VRING_STATE.pack(50, 64)) != 0  # no such ring
        assert front.ack(fe.SET_VRING_NUM, b"\1\0") != 0  # truncated
        assert front.ack(fe.SET_MEM_TABLE, struct.pack("<II", 0, 0)) != 0  # no regions
        table = struct.pack("<II", 2, 0) + fe.REGION.pack(0, front.size, fe.USER_BASE, 0)
        assert front.ack(fe.SET_MEM_TABLE, table, [front.memfd]) != 0  # truncated table
        table = struct.pack("<II", 1, 0) + fe.REGION.pack(0, front.size, fe.USER_BASE, 0)
        assert front.ack(fe.SET_MEM_TABLE, table) != 0  # no fd
        big = struct.pack("<II", 1, 0) + fe.REGION.pack(0, 1 << 40, fe.USER_BASE, 0)
        assert front.ack(fe.SET_MEM_TABLE, big, [front.memfd]) != 0  # more than the fd holds
        assert front.ack(fe.SET_VRING_KICK, fe.U64.pack(1)) != 0  # no fd
        # A ring whose addresses lie outside memory cannot start.
        assert front.ack(fe.SET_VRING_NUM, fe.VRING_STATE.pack(1, 64)) == 0
        addr = fe.VRING_ADDR.pack(1, 0, 0x1000, 0x2000, 0x3000, 0)
        assert front.ack(fe.SET_VRING_ADDR, addr) == 0
        kick = os.eventfd(0)
        assert front.ack(fe.SET_VRING_KICK, fe.U64.pack(1), [kick]) != 0
        os.close(kick)
        # A request that waits for its answer gets one even when it fails.
        assert front.call(fe.GET_VRING_BASE, fe.VRING_STATE.pack(77, 0)) == fe.VRING_STATE.pack(
            0, 0
        )
        # A frame of a wrong version, and one too large, are skipped whole.
        front.sock.sendall(fe.HEADER.pack(fe.GET_FEATURES, 2, 0))
        front.sock.sendall(fe.HEADER.pack(fe.SET_FEATURES, 1, 1 << 20) + bytes(1 << 20))
        assert front.silent()
        # The memory table is still the good one, and the device still serves.
        front.handshake()
        for index in range(2):
            front.setup_ring(index)
        init(front)
        assert lookup(front, b"hello")[1] == len(HELLO)

    await server.run(scenario, front)


async def test_get_vring_base_stops_a_ring_and_a_new_kick_fd_resumes_it(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.start()
        init(front)
        ring = front.rings[1]
        assert lookup(front, b"hello")[1] == len(HELLO)
        state = front.call(fe.GET_VRING_BASE, fe.VRING_STATE.pack(1, 0))
        assert fe.VRING_STATE.unpack(state) == (1, ring.avail_idx)
        # A request made while the ring is stopped waits.
        _, raw = front.request(LOOKUP, 1, b"sub\0")
        head, _ = front.chain(ring, [raw], [4096])
        front.publish(ring, head)
        assert not front.wait_signal(ring, timeout=0.3)
        assert front.take_used(ring) == []
        # The front end restarts it where it stopped; the waiting request is served.
        assert front.ack(fe.SET_VRING_BASE, fe.VRING_STATE.pack(1, ring.avail_idx - 1)) == 0
        kick = os.eventfd(0, os.EFD_NONBLOCK)
        assert front.ack(fe.SET_VRING_KICK, fe.U64.pack(1), [kick]) == 0
        os.close(ring.kick)
        ring.kick = kick
        assert front.wait_used(ring)[0][0] == head

    await server.run(scenario, front)


async def test_memory_in_two_regions(served: tuple[Served, FrontEnd]) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.start()
        # A second region high above the first, as guests of 3 GiB and more get.
        high = os.memfd_create("guest-ram-high")
        os.ftruncate(high, 1 << 20)
        base = 1 << 32
        table = (
            struct.pack("<II", 2, 0)
            + fe.REGION.pack(0, front.size, fe.USER_BASE, 0)
            + fe.REGION.pack(base, 1 << 20, fe.USER_BASE + base, 0)
        )
        assert front.ack(fe.SET_MEM_TABLE, table, [front.memfd, high]) == 0
        init(front)
        import mmap

        with mmap.mmap(high, 1 << 20) as region:
            _, raw = front.request(LOOKUP, 1, b"hello\0")
            region[0 : len(raw)] = raw
            ring = front.rings[1]
            slots = [ring.free.pop(0), ring.free.pop(0)]
            front.write_desc(ring.desc, slots[0], base, len(raw), fe.NEXT, slots[1])
            front.write_desc(ring.desc, slots[1], base + 4096, 4096, fe.WRITE)
            front.publish(ring, slots[0])
            ((head, written),) = front.wait_used(ring)
            assert head == slots[0] and written == 16 + 128
            (size,) = struct.unpack_from("<Q", region, 4096 + 16 + ATTR_SIZE_AT)
            assert size == len(HELLO)
        os.close(high)

    await server.run(scenario, front)


async def test_the_back_end_stops_when_the_front_end_disconnects(
    served: tuple[Served, FrontEnd],
) -> None:
    server, front = served

    def scenario(front: FrontEnd) -> None:
        front.start()
        init(front)
        front.sock.shutdown(socket.SHUT_RDWR)

    await server.run(scenario, front)
    for _ in range(100):
        if all(vring.queue is None for vring in server.backend.vrings):
            break
        await asyncio.sleep(0.02)
    assert all(vring.kick_fd is None and vring.queue is None for vring in server.backend.vrings)

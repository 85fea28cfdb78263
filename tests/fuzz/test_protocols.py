"""The wire protocols cafs serves: FUSE requests, vhost-user messages, virtqueue rings.

A request or message is whatever the kernel, the guest or the front end
sends; the session and the back end must answer or refuse it, and keep
serving, whatever it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from cafs.castore.directory import Directory
from cafs.fs.filesystem import Filesystem
from cafs.fs.root_nodes import DirectoryRootNodes
from cafs.fuse.server import Session
from cafs.virtio.backend import Backend
from cafs.virtio.fs_device import VirtioFsDevice
from cafs.virtio.memory import GuestMemory, RegionLayout
from cafs.virtio.vhost_user import Channel
from cafs.virtio.virtqueue import ChainError, SplitQueue
from tests.fuzz.test_parsers import FUZZ
from tests.unit.test_filesystem import HELLO, Store

IN_HEADER = struct.Struct("<IIQQIIIHH")
INIT_BODY = struct.Struct("<IIIII11I").pack(7, 38, 1 << 20, 0xFFFFFFFF, 0, *[0] * 11)


async def _session() -> Session:
    store = Store()
    sub = await store.directory({b"x": await store.file(b"x")})
    root = Directory([(b"hello", await store.file(HELLO)), (b"sub", sub)])
    session = Session(Filesystem(store.blobs, store.directories, DirectoryRootNodes(root)))
    await session.serve(IN_HEADER.pack(40 + len(INIT_BODY), 26, 1, 0, 0, 0, 0, 0, 0) + INIT_BODY)
    return session


requests = st.tuples(
    st.integers(0, 60),  # opcode (and some that do not exist)
    st.integers(0, 6),  # node id
    st.integers(1, 1 << 40),  # unique
    st.binary(max_size=160),  # arguments
)


@FUZZ
@given(st.lists(requests, min_size=1, max_size=12), st.binary(max_size=80))
def test_fuse_session_answers_or_refuses_anything(
    batch: list[tuple[int, int, int, bytes]], junk: bytes
) -> None:
    async def run() -> None:
        session = await _session()
        answers = [session.handle(junk)]  # not even a header, maybe
        for opcode, nodeid, unique, body in batch:
            raw = IN_HEADER.pack(40 + len(body), opcode, unique, nodeid, 0, 0, 0, 0, 0) + body
            answers.append(session.handle(raw))
        for answer in answers:
            if isinstance(answer, asyncio.Task):
                reply = await asyncio.wait_for(answer, 10)
            else:
                reply = answer
            assert reply is None or isinstance(reply, list)
        # Still serving: a lookup gets its entry.
        reply = await session.serve(IN_HEADER.pack(46, 1, 99, 1, 0, 0, 0, 0, 0) + b"hello\0")
        assert reply is not None and struct.unpack_from("<IiQ", reply[0])[1] == 0
        await session.close()

    asyncio.run(run())


messages = st.tuples(
    st.integers(0, 45),  # request
    st.sampled_from([1, 1 | 8, 0, 2, 5]),  # flags: version 1, need_reply, wrong versions
    st.binary(max_size=72),
    st.booleans(),  # with an fd
)


@FUZZ
@given(st.lists(messages, min_size=1, max_size=10))
def test_vhost_user_back_end_survives_any_message(
    batch: list[tuple[int, int, bytes, bool]],
) -> None:
    async def run() -> None:
        ours, theirs = socket.socketpair()
        device = VirtioFsDevice(lambda: Session(Filesystem(*_empty())))
        backend = Backend(device)
        task = asyncio.ensure_future(backend.serve(Channel(ours)))
        loop = asyncio.get_running_loop()
        theirs.setblocking(False)
        try:
            for request, flags, payload, with_fd in batch:
                fds = [os.eventfd(0)] if with_fd else []
                data = struct.pack("<III", request, flags, len(payload)) + payload
                ancillary = [
                    (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd)) for fd in fds
                ]
                theirs.sendmsg([data], ancillary)
                for fd in fds:
                    os.close(fd)
            # Still serving: GET_FEATURES is answered (after whatever replies came first).
            theirs.sendall(struct.pack("<III", 1, 1, 0))
            received = b""
            deadline = loop.time() + 10
            while True:
                assert loop.time() < deadline, "the back end stopped answering"
                with contextlib.suppress(BlockingIOError):
                    received += theirs.recv(4096)
                found = _reply(received, 1)
                if found is not None:
                    assert struct.unpack("<Q", found)[0] & (1 << 32)  # VERSION_1 offered
                    break
                await asyncio.sleep(0.005)
        finally:
            theirs.close()
            await asyncio.wait_for(task, 10)
            await device.close()
            ours.close()

    asyncio.run(run())


def _empty() -> tuple[object, object, object]:
    store = Store()
    return store.blobs, store.directories, DirectoryRootNodes(Directory())


def _reply(data: bytes, request: int) -> bytes | None:
    """The payload of the first reply to ``request`` in ``data``, once whole."""
    at = 0
    while at + 12 <= len(data):
        got, _, size = struct.unpack_from("<III", data, at)
        if at + 12 + size > len(data):
            return None
        if got == request:
            return data[at + 12 : at + 12 + size]
        at += 12 + size
    return None


@FUZZ
@given(st.binary(min_size=16 * 8 + 6 + 2 * 8 + 2, max_size=4096), st.integers(0, 0xFFFF))
def test_split_queue_takes_only_chains_that_stay_in_memory(ring: bytes, avail_idx: int) -> None:
    size = 8
    memfd = os.memfd_create("fuzz-guest")
    try:
        os.ftruncate(memfd, 1 << 16)
        with mmap.mmap(memfd, 1 << 16) as view:
            view[0 : len(ring)] = ring
            memory = GuestMemory.map([RegionLayout(0, 1 << 16, 0, 0)], [memfd])
            try:
                queue = SplitQueue(memory, size, 0, 0x2000, 0x3000, 0, event_idx=True)
                struct.pack_into("<H", view, 0x2000 + 2, avail_idx)
                view[0x2004 : 0x2004 + 2 * size] = ring[: 2 * size].ljust(2 * size, b"\0")
                for _ in range(64):
                    try:
                        chain = queue.pop()
                    except ChainError:
                        continue
                    if chain is None:
                        break
                    for buf in chain.readable + chain.writable:
                        assert len(buf) <= 1 << 16
                    queue.push(chain.head, 0)
                queue.enable_notification()
                queue.needs_signal()
            finally:
                del queue
                memory.close()
    finally:
        os.close(memfd)

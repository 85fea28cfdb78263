"""The virtio-fs device: each request on a ring goes to the FUSE session, its reply back.

Queue 0 is the high-priority queue (FORGET, BATCH_FORGET, INTERRUPT), the
others are request queues; all of them feed one ``cafs.fuse.server.Session``,
the session ``/dev/fuse`` mounts use. A request the session answers at once
is returned in the same turn of the loop; the others run as tasks and are
returned when they finish, in any order. At most ``max_in_flight`` run at
once; past that the rings are left alone until one finishes.

A guest that unmounts and mounts again, or reboots, starts over with INIT: the
device then begins a new session on a new filesystem, as a new mount would.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable

from cafs.fuse import abi
from cafs.fuse.server import Reply, Session, parse_header, reply_error
from cafs.virtio.backend import Vring
from cafs.virtio.virtqueue import Chain

log = logging.getLogger(__name__)

HIPRIO_QUEUES = 1
MAX_REQUEST_QUEUES = 8
"""Request queues offered; Linux guests use one, other front ends may use more."""


class VirtioFsDevice:
    """Serves FUSE requests from virtqueues onto sessions made by ``new_session``."""

    def __init__(self, new_session: Callable[[], Session], max_in_flight: int = 64) -> None:
        self._new_session = new_session
        self.session = new_session()
        self.max_in_flight = max_in_flight
        self.sessions = 1
        """Sessions begun (one per INIT from the guest)."""
        self._tasks: set[asyncio.Task[Reply | None]] = set()
        self._waiting: list[Vring] = []
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def num_queues(self) -> int:
        return HIPRIO_QUEUES + MAX_REQUEST_QUEUES

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def kicked(self, vring: Vring) -> None:
        while len(self._tasks) < self.max_in_flight:
            chain = vring.next_chain()
            if chain is None:
                return
            self._serve(vring, chain)
        if vring not in self._waiting:
            self._waiting.append(vring)

    def _serve(self, vring: Vring, chain: Chain) -> None:
        generation = vring.generation
        request = chain.request()
        if self._starts_over(request):
            self._begin_session()
        answer = self.session.handle(request)
        if isinstance(answer, asyncio.Task):
            self._tasks.add(answer)
            answer.add_done_callback(lambda task: self._finished(task, vring, generation, chain))
            return
        self._reply(vring, generation, chain, answer)

    def _finished(
        self, task: asyncio.Task[Reply | None], vring: Vring, generation: int, chain: Chain
    ) -> None:
        self._tasks.discard(task)
        reply = None if task.cancelled() else task.result()
        self._reply(vring, generation, chain, reply)
        waiting, self._waiting = self._waiting, []
        for ring in waiting:
            self.kicked(ring)

    def _reply(self, vring: Vring, generation: int, chain: Chain, reply: Reply | None) -> None:
        written = 0
        if reply is not None:
            size = sum(len(piece) for piece in reply)
            if size > chain.capacity:
                unique = _unique(chain)
                log.warning(
                    "request unique=%s: a reply of %d bytes does not fit the %d the guest gave",
                    unique,
                    size,
                    chain.capacity,
                )
                reply = reply_error(unique or 0, errno.EIO)
                if chain.capacity < abi.out_header.size:
                    reply = []
            written = chain.write(list(reply))
        vring.complete(generation, chain.head, written)

    def _starts_over(self, request: bytes) -> bool:
        """An INIT after the first: the guest mounted anew (or rebooted)."""
        if len(request) < abi.in_header.size:
            return False
        opcode = int.from_bytes(request[4:8], "little")
        return opcode == abi.Opcode.INIT and self.session.minor is not None

    def _begin_session(self) -> None:
        log.info("the guest mounts again: a new session")
        task = asyncio.ensure_future(self._retire(self.session))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        self.session = self._new_session()
        self.sessions += 1

    @staticmethod
    async def _retire(session: Session) -> None:
        await session.close()
        await session.fs.close()

    async def close(self) -> None:
        for task in [*self._tasks, *self._retiring]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._retiring, return_exceptions=True)
        await self.session.close()
        await self.session.fs.close()


def _unique(chain: Chain) -> int | None:
    try:
        return parse_header(chain.request()).unique
    except ValueError:
        return None

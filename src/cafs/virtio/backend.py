"""A vhost-user device back end on asyncio: the control messages, the rings, the eventfds.

The front end configures the device over the socket (features, guest
memory, each ring's size, addresses and eventfds) and then talks through
the rings alone: it writes a kick eventfd when it adds requests, and the
back end writes the ring's call eventfd when it returns used buffers. Kick
fds are watched by the event loop, so a request costs no thread hop; used
buffers returned in one turn of the loop share one interrupt.

What the device does with a request is up to a ``Device`` (``fs_device``
serves FUSE). The back end never lets a bad message or a bad ring take it
down: the message is answered with a failure (where the front end waits for
one) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import ClassVar, Protocol

from cafs.virtio.memory import GuestMemory, GuestMemoryError, RegionLayout, region_layout
from cafs.virtio.vhost_user import (
    VRING_INDEX_MASK,
    VRING_NO_FD,
    Channel,
    Disconnected,
    Message,
    ProtocolFeature,
    Request,
    VhostUserError,
    VirtioFeature,
    memory_table_head,
    u64,
    vring_state,
)
from cafs.virtio.virtqueue import MAX_QUEUE_SIZE, Chain, ChainError, SplitQueue

log = logging.getLogger(__name__)

RING_FEATURES = (
    VirtioFeature.VERSION_1
    | VirtioFeature.RING_INDIRECT_DESC
    | VirtioFeature.RING_EVENT_IDX
    | VirtioFeature.PROTOCOL_FEATURES
)
PROTOCOL_FEATURES = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
MAX_REGIONS = 8
"""Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS)."""


class Device(Protocol):
    """A virtio device type served by the back end."""

    @property
    def num_queues(self) -> int:
        """The most rings the device serves (GET_QUEUE_NUM)."""
        ...

    def kicked(self, vring: Vring) -> None:
        """``vring`` may have new requests; take them with ``vring.next_chain``."""
        ...

    async def close(self) -> None:
        """The front end is gone: stop what is in flight."""
        ...


class Vring:
    """One ring's configuration, eventfds and, once started, its queue."""

    def __init__(self, index: int, on_kick: Callable[[Vring], None]) -> None:
        self.index = index
        self.size = 0
        self.addresses: tuple[int, int, int] | None = None
        """Descriptor table, available ring, used ring (front-end addresses)."""
        self.base = 0
        self.enabled = False
        self.event_idx = False
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.queue: SplitQueue | None = None
        self.generation = 0
        """Counts starts: a completion from an earlier start is dropped."""
        self._on_kick = on_kick
        self._loop = asyncio.get_running_loop()
        self._signal_due = False
        self._in_kick = False

    @property
    def ready(self) -> bool:
        return self.queue is not None and self.enabled

    # -- start and stop --------------------------------------------------------

    def start(self, memory: GuestMemory, event_idx: bool) -> None:
        """Map the rings (at SET_VRING_KICK, or after a new memory table)."""
        if self.size == 0 or self.addresses is None:
            raise VhostUserError(f"ring {self.index} started before its size and addresses")
        desc, avail, used = self.addresses
        next_avail = self.queue.next_avail if self.queue is not None else self.base
        queue = SplitQueue(memory, self.size, desc, avail, used, next_avail, event_idx=event_idx)
        if self.queue is not None:
            queue.next_used = self.queue.next_used
            self.queue.alive = False
        else:
            self.generation += 1
        self.queue = queue
        self.event_idx = event_idx
        if self.kick_fd is not None:
            self._loop.add_reader(self.kick_fd, self._kick)

    def stop(self) -> int:
        """Stop the ring (GET_VRING_BASE): the next available index to resume from."""
        if self.kick_fd is not None:
            self._loop.remove_reader(self.kick_fd)
        if self.queue is None:
            return self.base
        self.queue.alive = False
        self.base = self.queue.next_avail
        self.queue = None
        return self.base

    def set_fd(self, which: str, fd: int | None) -> None:
        old = getattr(self, which)
        if which == "kick_fd" and old is not None:
            self._loop.remove_reader(old)
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)
        setattr(self, which, fd)

    def close(self) -> None:
        self.stop()
        for which in ("kick_fd", "call_fd", "err_fd"):
            self.set_fd(which, None)

    # -- requests -----------------------------------------------------------------

    def _kick(self) -> None:
        assert self.kick_fd is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self.kick_fd, 8)
        self.poke()

    def poke(self) -> None:
        """Look at the ring without a kick (it may hold requests made before it started)."""
        if not self.ready:
            return
        self._in_kick = True
        try:
            self._on_kick(self)
        finally:
            self._in_kick = False
        if self._signal_due:
            # What was answered at once gets its interrupt now, not a loop turn later.
            self._signal()

    def next_chain(self) -> Chain | None:
        """The next request, or None once the ring is empty (notifications back on).

        A chain that cannot be used is logged and returned to the guest empty.
        """
        queue = self.queue
        while queue is not None and self.enabled:
            try:
                chain = queue.pop()
            except ChainError as exc:
                log.warning("ring %d: request dropped: %s", self.index, exc)
                if exc.head is not None:
                    self.complete(self.generation, exc.head, 0)
                continue
            if chain is not None:
                return chain
            if not queue.enable_notification():
                return None
        return None

    def complete(self, generation: int, head: int, written: int) -> None:
        """Return a chain to the guest; its interrupt goes out when the kick that brought it
        has been handled, or at the end of this loop turn."""
        queue = self.queue
        if queue is None or generation != self.generation:
            log.debug("ring %d: a reply after the ring stopped was dropped", self.index)
            return
        queue.push(head, written)
        if not self._signal_due:
            self._signal_due = True
            if not self._in_kick:
                self._loop.call_soon(self._signal)

    def _signal(self) -> None:
        if not self._signal_due:
            return
        self._signal_due = False
        queue = self.queue
        if queue is None or self.call_fd is None or not queue.needs_signal():
            return
        try:
            os.write(self.call_fd, u64.pack(1))
        except OSError as exc:
            log.warning("ring %d: signalling the guest failed: %s", self.index, exc)


class Backend:
    """The vhost-user back end of one device, for one front-end connection at a time."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.features = 0
        self.protocol_features = ProtocolFeature(0)
        self.memory = GuestMemory()
        self.vrings = [Vring(index, device.kicked) for index in range(device.num_queues)]
        self.messages = 0

    @property
    def offered_features(self) -> int:
        return int(RING_FEATURES)

    async def serve(self, channel: Channel) -> None:
        """Answer the front end's messages until it disconnects."""
        try:
            while True:
                try:
                    message = await channel.receive()
                except VhostUserError as exc:
                    log.warning("message skipped: %s", exc)
                    continue
                self.messages += 1
                await self._answer(channel, message)
        except Disconnected as exc:
            log.info("front end disconnected: %s", exc)
        finally:
            self.close()

    async def _answer(self, channel: Channel, message: Message) -> None:
        handler = self._handlers.get(message.request)
        log.debug("%s flags=%#x size=%d fds=%d", message.name, message.flags,
                  len(message.payload), len(message.fds))  # fmt: skip
        reply: bytes | None = None
        ok = True
        try:
            if handler is None:
                raise VhostUserError(f"{message.name} is not supported")
            reply = handler(self, message)
        except (VhostUserError, GuestMemoryError) as exc:
            log.warning("%s refused: %s", message.name, exc)
            ok = False
            reply = _FAILED_REPLIES.get(message.request)
        except Exception:
            log.exception("%s failed unexpectedly", message.name)
            ok = False
            reply = _FAILED_REPLIES.get(message.request)
        finally:
            message.close()
        if reply is not None:
            await channel.reply(message, reply)
        elif message.need_reply and self.protocol_features & ProtocolFeature.REPLY_ACK:
            await channel.reply(message, u64.pack(0 if ok else 1))

    def close(self) -> None:
        for vring in self.vrings:
            vring.close()
        self.memory.close()

    # -- helpers ------------------------------------------------------------------------

    def _vring(self, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise VhostUserError(f"ring {index} does not exist ({len(self.vrings)} rings)")
        return self.vrings[index]

    @property
    def _event_idx(self) -> bool:
        return bool(self.features & VirtioFeature.RING_EVENT_IDX)

    # -- features and ownership ------------------------------------------------------------

    def _get_features(self, message: Message) -> bytes:
        return u64.pack(self.offered_features)

    def _set_features(self, message: Message) -> None:
        features = message.u64()
        unknown = features & ~self.offered_features
        if unknown:
            raise VhostUserError(f"features {unknown:#x} were not offered")
        self.features = features
        if not features & VirtioFeature.PROTOCOL_FEATURES:
            # Without protocol features rings are enabled from the start.
            for vring in self.vrings:
                vring.enabled = True

    def _get_protocol_features(self, message: Message) -> bytes:
        return u64.pack(int(PROTOCOL_FEATURES))

    def _set_protocol_features(self, message: Message) -> None:
        features = message.u64()
        if features & ~int(PROTOCOL_FEATURES):
            raise VhostUserError(f"protocol features {features:#x} were not all offered")
        self.protocol_features = ProtocolFeature(features)

    def _get_queue_num(self, message: Message) -> bytes:
        return u64.pack(len(self.vrings))

    def _set_owner(self, message: Message) -> None:
        pass

    def _reset(self, message: Message) -> None:
        for vring in self.vrings:
            vring.close()
            vring.enabled = False
        self.features = 0

    # -- memory ------------------------------------------------------------------------------

    def _set_mem_table(self, message: Message) -> None:
        if len(message.payload) < memory_table_head.size:
            raise VhostUserError("memory table without its header")
        count, _ = memory_table_head.unpack_from(message.payload)
        if not 0 < count <= MAX_REGIONS:
            raise VhostUserError(f"memory table of {count} regions (1 to {MAX_REGIONS})")
        end = memory_table_head.size + count * region_layout.size
        if len(message.payload) < end:
            raise VhostUserError(f"memory table of {count} regions is truncated")
        layouts = [
            RegionLayout.unpack(message.payload, memory_table_head.size + i * region_layout.size)
            for i in range(count)
        ]
        memory = GuestMemory.map(layouts, message.fds)
        old, self.memory = self.memory, memory
        for vring in self.vrings:
            if vring.queue is not None:
                vring.start(memory, vring.event_idx)
        old.close()
        log.debug(
            "guest memory: %s",
            ", ".join(f"{layout.guest_addr:#x}+{layout.size:#x}" for layout in layouts),
        )

    # -- rings ------------------------------------------------------------------------------------

    def _set_vring_num(self, message: Message) -> None:
        index, num = message.vring_state()
        if not 0 < num <= MAX_QUEUE_SIZE or num & (num - 1):
            raise VhostUserError(f"ring size {num} is not a power of 2 up to {MAX_QUEUE_SIZE}")
        self._vring(index).size = num

    def _set_vring_addr(self, message: Message) -> None:
        index, _flags, desc, used, avail, _log = message.vring_addr()
        vring = self._vring(index)
        vring.addresses = (desc, avail, used)
        if vring.queue is not None:
            vring.start(self.memory, vring.event_idx)

    def _set_vring_base(self, message: Message) -> None:
        index, num = message.vring_state()
        vring = self._vring(index)
        if vring.queue is not None:
            raise VhostUserError(f"ring {index} is running; its base cannot change")
        vring.base = num & 0xFFFF

    def _get_vring_base(self, message: Message) -> bytes:
        index, _ = message.vring_state()
        vring = self._vring(index)
        base = vring.stop()
        log.debug("ring %d stopped at %d", index, base)
        return vring_state.pack(index, base)

    def _ring_fd(self, message: Message) -> tuple[Vring, int | None]:
        value = message.u64()
        vring = self._vring(value & VRING_INDEX_MASK)
        fd = None if value & VRING_NO_FD else message.take_fd()
        if fd is None and not value & VRING_NO_FD:
            raise VhostUserError(f"{message.name} without its fd")
        return vring, fd

    def _set_vring_kick(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        if fd is None:
            raise VhostUserError("rings without a kick eventfd (polling) are not supported")
        os.set_blocking(fd, False)
        vring.stop()
        vring.set_fd("kick_fd", fd)
        vring.start(self.memory, self._event_idx)
        vring.poke()

    def _set_vring_call(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        if fd is not None:
            os.set_blocking(fd, False)
        vring.set_fd("call_fd", fd)

    def _set_vring_err(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        vring.set_fd("err_fd", fd)

    def _set_vring_enable(self, message: Message) -> None:
        index, enable = message.vring_state()
        vring = self._vring(index)
        vring.enabled = bool(enable)
        vring.poke()

    def _set_backend_req_fd(self, message: Message) -> None:
        # Not offered; a front end that sends one anyway gets it closed.
        pass

    _handlers: ClassVar[dict[int, Callable[[Backend, Message], bytes | None]]] = {
        Request.GET_FEATURES: _get_features,
        Request.SET_FEATURES: _set_features,
        Request.GET_PROTOCOL_FEATURES: _get_protocol_features,
        Request.SET_PROTOCOL_FEATURES: _set_protocol_features,
        Request.GET_QUEUE_NUM: _get_queue_num,
        Request.SET_OWNER: _set_owner,
        Request.RESET_OWNER: _reset,
        Request.RESET_DEVICE: _reset,
        Request.SET_MEM_TABLE: _set_mem_table,
        Request.SET_VRING_NUM: _set_vring_num,
        Request.SET_VRING_ADDR: _set_vring_addr,
        Request.SET_VRING_BASE: _set_vring_base,
        Request.GET_VRING_BASE: _get_vring_base,
        Request.SET_VRING_KICK: _set_vring_kick,
        Request.SET_VRING_CALL: _set_vring_call,
        Request.SET_VRING_ERR: _set_vring_err,
        Request.SET_VRING_ENABLE: _set_vring_enable,
        Request.SET_BACKEND_REQ_FD: _set_backend_req_fd,
    }


_FAILED_REPLIES: dict[int, bytes] = {
    Request.GET_FEATURES: u64.pack(0),
    Request.GET_PROTOCOL_FEATURES: u64.pack(0),
    Request.GET_QUEUE_NUM: u64.pack(0),
    Request.GET_VRING_BASE: vring_state.pack(0, 0),
}
"""What a request that expects an answer gets when it fails: the front end must not hang."""

"""Split virtqueues (VIRTIO 1.x, section 2.7): requests in, used buffers out.

The guest puts descriptor chains on the available ring; each chain is a
request: device-readable buffers first, then device-writable ones for the
answer. The device takes chains in ring order and may return them in any
order on the used ring, so a slow request never holds up the others.

With ``VIRTIO_RING_F_EVENT_IDX`` both sides tell each other when to notify:
the guest publishes ``used_event`` (signal me once the used index passes
it), the device ``avail_event`` (kick me once the available index passes it).
Each side writes its own index and then reads the other's, which needs a full
fence in between; see ``full_fence``.

Everything read from the guest is checked: a descriptor outside guest
memory, an index outside its table, a chain longer than its table (a loop),
a nested indirect table or a readable buffer after a writable one make that
one request a ``ChainError``, never a crash or a read of other memory.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

from cafs.errors import CafsError
from cafs.virtio.memory import GuestMemory, GuestMemoryError

descriptor = struct.Struct("<QIHH")
"""addr, len, flags, next."""
used_element = struct.Struct("<II")
"""id (the chain's head), len (bytes written)."""
u16 = struct.Struct("<H")

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1

MAX_QUEUE_SIZE = 32768


class ChainError(CafsError):
    """A descriptor chain the device cannot use."""

    def __init__(self, message: str, head: int | None) -> None:
        super().__init__(message)
        self.head = head
        """The chain's head, if it can be returned to the guest; None if not."""


_fence_lock = threading.Lock()


def full_fence() -> None:
    """Order this thread's earlier stores before its later loads.

    Taking a lock is an atomic read-modify-write, a full barrier on x86-64
    (and on arm64 an acquire-release pair); Python has no fence of its own.
    """
    with _fence_lock:
        pass


@dataclass(eq=False)
class Chain:
    """One request: where it came from and the guest buffers it names."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    def request(self) -> bytes:
        """The device-readable part, in one piece."""
        if len(self.readable) == 1:
            return bytes(self.readable[0])
        return b"".join(self.readable)

    @property
    def capacity(self) -> int:
        return sum(len(buf) for buf in self.writable)

    def write(self, pieces: list[bytes | bytearray | memoryview]) -> int:
        """Copy ``pieces`` into the writable part in order; the bytes written.

        The caller checks ``capacity`` first: what does not fit is cut off.
        """
        written = 0
        bufs = iter(self.writable)
        buf = next(bufs, None)
        at = 0
        for piece in pieces:
            data = memoryview(piece).cast("B")
            while len(data) and buf is not None:
                room = len(buf) - at
                n = min(room, len(data))
                buf[at : at + n] = data[:n]
                data = data[n:]
                at += n
                written += n
                if at == len(buf):
                    buf = next(bufs, None)
                    at = 0
            if buf is None:
                break
        return written


class SplitQueue:
    """One started virtqueue: its rings in guest memory and the device's indices."""

    def __init__(
        self,
        memory: GuestMemory,
        size: int,
        desc_addr: int,
        avail_addr: int,
        used_addr: int,
        next_avail: int,
        *,
        event_idx: bool,
        user_addresses: bool = True,
    ) -> None:
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise GuestMemoryError(f"queue size {size} is not a power of 2 up to {MAX_QUEUE_SIZE}")
        translate = memory.user_slice if user_addresses else memory.slice
        self.memory = memory
        self.size = size
        self.event_idx = event_idx
        self.desc = translate(desc_addr, descriptor.size * size)
        self.avail = translate(avail_addr, 6 + 2 * size)
        self.used = translate(used_addr, 6 + used_element.size * size)
        self.next_avail = next_avail & 0xFFFF
        self.next_used = next_avail & 0xFFFF
        self._signalled_used: int | None = None
        self.alive = True
        """False once the front end stopped the ring: late completions are dropped."""

    # -- the available ring ------------------------------------------------------

    def avail_idx(self) -> int:
        return int(u16.unpack_from(self.avail, 2)[0])

    def has_work(self) -> bool:
        return self.avail_idx() != self.next_avail

    def pop(self) -> Chain | None:
        """The next request on the available ring, or None.

        Raises ChainError for a request that cannot be served; the ring
        moves past it all the same.
        """
        if self.avail_idx() == self.next_avail:
            return None
        slot = self.next_avail % self.size
        (head,) = u16.unpack_from(self.avail, 4 + 2 * slot)
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return self._chain(head)

    def _chain(self, head: int) -> Chain:
        if head >= self.size:
            raise ChainError(f"chain head {head} is outside a queue of {self.size}", None)
        chain = Chain(head)
        table = self.desc
        table_size = self.size
        index = head
        seen = 0
        indirect = False
        while True:
            if index >= table_size:
                raise ChainError(f"descriptor index {index} is outside its table", head)
            seen += 1
            if seen > table_size:
                raise ChainError("descriptor chain loops", head)
            addr, length, flags, next_index = descriptor.unpack_from(table, index * 16)
            if flags & DESC_F_INDIRECT:
                if indirect:
                    raise ChainError("nested indirect descriptor table", head)
                if flags & DESC_F_NEXT:
                    raise ChainError("indirect descriptor with NEXT set", head)
                if length == 0 or length % descriptor.size:
                    raise ChainError(f"indirect table of {length} bytes", head)
                try:
                    table = self.memory.slice(addr, length)
                except GuestMemoryError as exc:
                    raise ChainError(f"indirect table: {exc}", head) from exc
                table_size = length // descriptor.size
                index = 0
                seen = 0
                indirect = True
                continue
            try:
                buf = self.memory.slice(addr, length)
            except GuestMemoryError as exc:
                raise ChainError(str(exc), head) from exc
            if flags & DESC_F_WRITE:
                chain.writable.append(buf)
            elif chain.writable:
                raise ChainError("a device-readable buffer after a writable one", head)
            else:
                chain.readable.append(buf)
            if not flags & DESC_F_NEXT:
                return chain
            index = next_index

    def enable_notification(self) -> bool:
        """Ask for a kick on the next request; True if one came in meanwhile.

        Called when the ring looks empty: with EVENT_IDX, publish
        ``avail_event`` and look again, so a request made between the last
        look and the publication is not left waiting for a kick never sent.
        """
        if not self.event_idx:
            return self.has_work()
        u16.pack_into(self.used, 4 + used_element.size * self.size, self.next_avail)
        full_fence()
        return self.has_work()

    # -- the used ring ----------------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Return a chain to the guest with ``written`` bytes of answer in it."""
        slot = self.next_used % self.size
        used_element.pack_into(self.used, 4 + used_element.size * slot, head, written)
        self.next_used = (self.next_used + 1) & 0xFFFF
        # The element is stored before the index that publishes it.
        u16.pack_into(self.used, 2, self.next_used)

    def needs_signal(self) -> bool:
        """Whether the guest wants an interrupt for what was pushed since the last one."""
        new = self.next_used
        old = self._signalled_used
        self._signalled_used = new
        if not self.event_idx:
            (flags,) = u16.unpack_from(self.avail, 0)
            return not flags & AVAIL_F_NO_INTERRUPT
        if old is None:
            return True
        if old == new:
            return False
        full_fence()
        used_event: int = u16.unpack_from(self.avail, 4 + 2 * self.size)[0]
        return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

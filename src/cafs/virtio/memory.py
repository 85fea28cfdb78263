"""Guest memory: the front end's RAM regions, mapped shared, and address translation.

The front end sends one file descriptor per RAM region (``SET_MEM_TABLE``).
Each is mapped ``MAP_SHARED``, so what the guest writes is seen here and what
cafs writes into a reply is seen by the guest. Descriptors carry guest
physical addresses; ring addresses (``SET_VRING_ADDR``) are the front end's
own virtual addresses. Both are translated here, and anything that does not
lie wholly inside one region is an error, never a read of other memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cafs.errors import CafsError

region_layout = struct.Struct("<QQQQ")
"""One memory region: guest_phys_addr, memory_size, userspace_addr, mmap_offset."""


class GuestMemoryError(CafsError):
    """An address range outside the guest's memory, or a region that cannot be mapped."""


@dataclass(frozen=True)
class RegionLayout:
    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> RegionLayout:
        return cls(*region_layout.unpack_from(data, offset))


class _Region:
    __slots__ = ("layout", "mapping", "view")

    def __init__(self, layout: RegionLayout, fd: int) -> None:
        if layout.size <= 0:
            raise GuestMemoryError(f"memory region at {layout.guest_addr:#x} has size 0")
        # mmap offsets must be page-aligned: map from the page below and skip the rest.
        skew = layout.mmap_offset % mmap.ALLOCATIONGRANULARITY
        try:
            self.mapping = mmap.mmap(
                fd,
                layout.size + skew,
                flags=mmap.MAP_SHARED,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
                offset=layout.mmap_offset - skew,
            )
        except (OSError, ValueError, OverflowError) as exc:
            raise GuestMemoryError(
                f"cannot map memory region at {layout.guest_addr:#x} "
                f"({layout.size} bytes, offset {layout.mmap_offset}): {exc}"
            ) from exc
        self.layout = layout
        self.view = memoryview(self.mapping)[skew : skew + layout.size]

    def close(self) -> None:
        # Slices still held by requests in flight keep the mapping alive;
        # it is unmapped when the last of them goes.
        with contextlib.suppress(BufferError):
            self.view.release()
            self.mapping.close()


class GuestMemory:
    """The guest's RAM as the front end described it last."""

    def __init__(self, regions: Sequence[_Region] = ()) -> None:
        self._regions = list(regions)

    @classmethod
    def map(cls, layouts: Sequence[RegionLayout], fds: Sequence[int]) -> GuestMemory:
        """Map each region from its fd. The fds stay the caller's to close."""
        if len(layouts) != len(fds):
            raise GuestMemoryError(f"{len(layouts)} memory regions but {len(fds)} descriptors")
        regions: list[_Region] = []
        try:
            for layout, fd in zip(layouts, fds, strict=True):
                regions.append(_Region(layout, fd))
        except GuestMemoryError:
            for region in regions:
                region.close()
            raise
        return cls(regions)

    @property
    def layouts(self) -> list[RegionLayout]:
        return [region.layout for region in self._regions]

    def __len__(self) -> int:
        return len(self._regions)

    def slice(self, addr: int, length: int) -> memoryview:
        """``length`` bytes at guest physical address ``addr``."""
        for region in self._regions:
            start = addr - region.layout.guest_addr
            if start >= 0 and start + length <= region.layout.size:
                return region.view[start : start + length]
        raise GuestMemoryError(f"guest address range {addr:#x}+{length} is outside guest memory")

    def user_slice(self, addr: int, length: int) -> memoryview:
        """``length`` bytes at the front end's virtual address ``addr``."""
        for region in self._regions:
            start = addr - region.layout.user_addr
            if start >= 0 and start + length <= region.layout.size:
                return region.view[start : start + length]
        raise GuestMemoryError(
            f"front-end address range {addr:#x}+{length} is outside guest memory"
        )

    def close(self) -> None:
        for region in self._regions:
            region.close()
        self._regions = []


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

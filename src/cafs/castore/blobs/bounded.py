"""A size bound on a near cache's objects, least recently used out first.

Reads mark what they use (a file's modification time, at most once a minute
per blob), writes add to a running total, and when the total passes the
bound the least recently used objects are deleted until it is 10% under.
Blob indexes go whenever chunks do: an index is small and is written again on
the next read from far, while one left naming an evicted chunk would send
reads to a chunk that is no longer there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from cafs.castore.blobs.objectstore import ObjectStoreBlobService, chunk_key
from cafs.castore.digest import Digest
from cafs.castore.objectstore import ObjectInfo

log = logging.getLogger(__name__)

TOUCH_EVERY = 60.0
TOUCHES_REMEMBERED = 65536
LOW_WATER = 0.9


class SizeBound:
    def __init__(self, near: ObjectStoreBlobService, limit: int) -> None:
        self.near = near
        self.limit = limit
        self._total: int | None = None  # unknown until the first scan
        self._evicting: asyncio.Task[None] | None = None
        self._touched: OrderedDict[Digest, float] = OrderedDict()

    async def used(self, digests: Iterable[Digest]) -> None:
        """Mark blobs just read near as recently used."""
        now = time.monotonic()
        due = []
        for digest in digests:
            last = self._touched.get(digest)
            if last is None or now - last > TOUCH_EVERY:
                due.append(digest)
                self._touched[digest] = now
                self._touched.move_to_end(digest)
        while len(self._touched) > TOUCHES_REMEMBERED:
            self._touched.popitem(last=False)
        if due:
            await self.near.storage.touch([chunk_key(digest) for digest in due])

    def added(self, size: int) -> None:
        """Count bytes just written near; start an eviction once past the bound."""
        if self._total is not None:
            self._total += size
        if (self._total is None or self._total > self.limit) and (
            self._evicting is None or self._evicting.done()
        ):
            self._evicting = asyncio.ensure_future(self._evict())

    async def _evict(self) -> None:
        try:
            await self.evict()
        except Exception:
            log.exception("evicting from the near cache failed")

    async def evict(self) -> int:
        """Bring the near cache under its bound; returns the bytes freed."""
        storage = self.near.storage

        def listing() -> list[ObjectInfo]:
            return [*storage.list_sync("chunks/"), *storage.list_sync("blobs/")]

        objects = await asyncio.to_thread(listing)
        total = sum(info.size for info in objects)
        if total <= self.limit:
            self._total = total
            return 0
        goal = int(self.limit * LOW_WATER)
        chunks = sorted((i for i in objects if i.key.startswith("chunks/")), key=_age)
        indexes = [i for i in objects if i.key.startswith("blobs/")]
        doomed = list(indexes)
        remaining = total - sum(i.size for i in indexes)
        for info in chunks:
            if remaining <= goal:
                break
            doomed.append(info)
            remaining -= info.size
        await storage.delete([info.key for info in doomed])
        self._total = remaining
        freed = total - remaining
        log.info(
            "near cache over %d bytes: evicted %d objects, %d bytes", self.limit, len(doomed), freed
        )
        return freed

    async def wait(self) -> None:
        """Let a running eviction finish (for close, and for tests)."""
        if self._evicting is not None:
            await asyncio.shield(self._evicting)


def _age(info: ObjectInfo) -> float:
    return info.modified

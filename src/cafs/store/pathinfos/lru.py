"""An in-memory LRU of PathInfos in front of another service.

Lookups by digest repeat a lot (every FUSE root lookup, every narinfo
request), and a PathInfo is small, so a bounded cache of decoded ones saves
a database read and a re-validation each time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator

from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService, check_store_path_digest


class LruPathInfoService(PathInfoService):
    """Reads through to ``inner`` on a miss; writes go to ``inner`` first, then the cache."""

    def __init__(self, inner: PathInfoService, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"LRU capacity must be at least 1, got {capacity}")
        self.inner = inner
        self.capacity = capacity
        self._cache: OrderedDict[bytes, PathInfo] = OrderedDict()

    def _remember(self, info: PathInfo) -> None:
        digest = info.store_path.digest
        self._cache[digest] = info
        self._cache.move_to_end(digest)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)

    async def get(self, digest: bytes) -> PathInfo | None:
        digest = check_store_path_digest(digest)
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            return cached
        info = await self.inner.get(digest)
        # A put that finished while inner was read holds the newer value: keep it.
        if info is not None and digest not in self._cache:
            self._remember(info)
        return info

    async def put(self, info: PathInfo) -> PathInfo:
        stored = await self.inner.put(info)
        self._remember(stored)
        return stored

    async def list(self) -> AsyncIterator[PathInfo]:
        async for info in self.inner.list():
            yield info

    async def close(self) -> None:
        self._cache.clear()
        await self.inner.close()

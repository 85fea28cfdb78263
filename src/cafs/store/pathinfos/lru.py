"""``lru://?capacity=N``: a bounded in-memory PathInfo store that forgets the least used.

Meant as the near side of a cache (``cache://?near=lru://?capacity=1000&far=…``):
lookups by digest repeat a lot (every FUSE root lookup, every narinfo
request) and a PathInfo is small, so keeping the recent ones decoded saves a
round trip or a database read and a re-validation each time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from urllib.parse import SplitResult

from cafs.castore.services import CastoreServices
from cafs.errors import InvalidAddressError
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService, check_store_path_digest
from cafs.urls import query_options


class LruPathInfoService(PathInfoService):
    @classmethod
    def from_url(
        cls, url: str, parts: SplitResult, castore: CastoreServices | None = None
    ) -> LruPathInfoService:
        """``lru://?capacity=N``: the N most recently used PathInfos, in memory."""
        if parts.netloc or parts.path:
            raise InvalidAddressError(url, "lru:// takes no host and no path, only ?capacity=N")
        text = query_options(url, parts, {"capacity"}).get("capacity", "")
        if not text.isdigit() or int(text) < 1:
            raise InvalidAddressError(url, "lru needs ?capacity=N with N at least 1")
        return cls(int(text))

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"LRU capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._cache: OrderedDict[bytes, PathInfo] = OrderedDict()

    async def get(self, digest: bytes) -> PathInfo | None:
        digest = check_store_path_digest(digest)
        info = self._cache.get(digest)
        if info is not None:
            self._cache.move_to_end(digest)
        return info

    async def put(self, info: PathInfo) -> PathInfo:
        digest = info.store_path.digest
        self._cache[digest] = info
        self._cache.move_to_end(digest)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return info

    async def list(self) -> AsyncIterator[PathInfo]:
        for info in list(self._cache.values()):
            yield info

    async def close(self) -> None:
        self._cache.clear()

"""``cache://?near=URL&far=URL``: a fast PathInfo service in front of a slow one.

Reads try near first; a hit far away is kept near (read-through). Writes go
to far, the source of truth, and then near, so a path just added is served
locally at once. Misses are not remembered: a path added elsewhere shows up
on the next lookup.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import SplitResult

from cafs import counters
from cafs.castore.near_far import NearFar
from cafs.castore.nodes import Node
from cafs.castore.services import CastoreServices
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService, check_store_path_digest
from cafs.urls import cache_sides, cache_urls


class CachePathInfoService(NearFar[PathInfoService], PathInfoService):
    @classmethod
    def from_url(
        cls, url: str, parts: SplitResult, castore: CastoreServices | None = None
    ) -> CachePathInfoService:
        """``cache://?near=URL&far=URL``: both sides built from their own URLs."""
        from cafs.store.composition import path_info_service_from_addr

        def side(side_url: str) -> PathInfoService:
            return path_info_service_from_addr(side_url, castore)

        return cls(*cache_sides(url, cache_urls(url, parts), side))

    async def get(self, digest: bytes) -> PathInfo | None:
        digest = check_store_path_digest(digest)
        info = await self.near.get(digest)
        counters.cache_lookup("pathinfo", info is not None)
        if info is not None:
            return info
        info = await self.far.get(digest)
        if info is not None:
            await self.near.put(info)
        return info

    async def put(self, info: PathInfo) -> PathInfo:
        stored = await self.far.put(info)
        await self.near.put(stored)
        return stored

    async def list(self) -> AsyncIterator[PathInfo]:
        async for info in self.far.list():
            yield info

    async def calculate_nar(self, node: Node) -> tuple[int, bytes] | None:
        return await self.far.calculate_nar(node)

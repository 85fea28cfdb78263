"""``cache://?near=URL&far=URL``: a local DirectoryService in front of a remote one.

A miss near fetches the requested directory's whole closure from far in one
call (checked root to leaves), keeps all of it near and answers from it, so
walking a tree costs one round trip instead of one per directory. Near only
ever receives whole closures, so a directory found near has its closure
there too. Writes go to far, the source of truth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import SplitResult

from cafs import counters
from cafs.castore.closure import RootToLeavesValidator, leaves_first
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryPutter, DirectoryService
from cafs.castore.directory import Directory
from cafs.castore.near_far import NearFar
from cafs.errors import ClosureError, IntegrityError
from cafs.urls import cache_sides, cache_urls


class CachedDirectoryService(NearFar[DirectoryService], DirectoryService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> CachedDirectoryService:
        """``cache://?near=URL&far=URL``: both sides built from their own URLs."""
        from cafs.castore.composition import directory_service_from_addr

        return cls(*cache_sides(url, cache_urls(url, parts), directory_service_from_addr))

    async def _fetch_closure(self, root: Digest) -> list[Directory]:
        """``root``'s closure from far, root first, now also kept near; [] if far lacks it."""
        validator = RootToLeavesValidator(root)
        closure: list[Directory] = []
        try:
            async for directory in self.far.get_recursive(root):
                validator.add(directory)
                closure.append(directory)
        except ClosureError as exc:
            raise IntegrityError(f"closure of {root} from far: {exc}") from None
        if closure and validator.missing():
            raise IntegrityError(f"closure of {root} from far is incomplete")
        if closure:
            await self.near.put_many(leaves_first(closure))
        return closure

    async def get(self, digest: Digest) -> Directory | None:
        found = await self.near.get(digest)
        counters.cache_lookup("directory", found is not None)
        if found is not None:
            return found
        closure = await self._fetch_closure(digest)
        return closure[0] if closure else None

    async def get_recursive(self, root: Digest) -> AsyncIterator[Directory]:
        if await self.near.get(root) is not None:
            async for directory in self.near.get_recursive(root):
                yield directory
            return
        for directory in await self._fetch_closure(root):
            yield directory

    async def put(self, directory: Directory) -> Digest:
        return await self.far.put(directory)

    async def put_many(self, directories: list[Directory]) -> None:
        await self.far.put_many(directories)

    def put_multiple_start(self) -> DirectoryPutter:
        return self.far.put_multiple_start()

    async def pin(self, digest: Digest) -> None:
        await self.far.pin(digest)

    async def unpin(self, digest: Digest) -> bool:
        return await self.far.unpin(digest)

    async def pins(self) -> list[Digest]:
        return await self.far.pins()

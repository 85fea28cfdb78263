"""The store mode of the mount: the root names are store path basenames.

A name is looked up by the digest in its hash part, and answered only when
the stored path carries exactly that name: ``<hash>-other`` is not
``<hash>-name``, however the digest matches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from cafs.castore.digest import Digest
from cafs.castore.nodes import Node
from cafs.errors import StorePathError
from cafs.store.pathinfos.base import PathInfoService
from cafs.store.storepath import StorePath


class PathInfoRootNodes:
    def __init__(self, path_infos: PathInfoService) -> None:
        self._path_infos = path_infos

    async def get_by_basename(self, name: bytes) -> Node | None:
        try:
            wanted = StorePath.from_basename(name)
        except StorePathError:
            return None
        info = await self._path_infos.get_path(wanted)
        return None if info is None else info.node

    async def list(self) -> AsyncIterator[tuple[bytes, Node]]:
        seen: set[bytes] = set()
        async for info in self._path_infos.list():
            name = info.store_path.basename.encode()
            if name not in seen:
                seen.add(name)
                yield name, info.node

    @property
    def root_digest(self) -> Digest | None:
        return None

    @property
    def subdirectories(self) -> int | None:
        return None

    @property
    def fixed(self) -> bool:
        return False  # paths are added while the mount runs

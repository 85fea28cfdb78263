"""``memory://``: PathInfos in a dict, for tests and throwaway stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import SplitResult

from cafs.castore.services import CastoreServices
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService, check_store_path_digest, check_stored
from cafs.urls import check_memory_url


class MemoryPathInfoService(PathInfoService):
    @classmethod
    def from_url(
        cls, url: str, parts: SplitResult, castore: CastoreServices | None = None
    ) -> MemoryPathInfoService:
        """``memory://``: takes no host, path or option."""
        check_memory_url(url, parts)
        return cls()

    def __init__(self) -> None:
        # Kept encoded, as a real store would, so reads re-validate.
        self._infos: dict[bytes, bytes] = {}

    async def get(self, digest: bytes) -> PathInfo | None:
        digest = check_store_path_digest(digest)
        data = self._infos.get(digest)
        if data is None:
            return None
        return check_stored(digest, PathInfo.from_bytes(data))

    async def put(self, info: PathInfo) -> PathInfo:
        self._infos[info.store_path.digest] = info.to_bytes()
        return info

    async def list(self) -> AsyncIterator[PathInfo]:
        # A snapshot: puts while the caller iterates neither fail nor show up.
        for digest, data in list(self._infos.items()):
            yield check_stored(digest, PathInfo.from_bytes(data))

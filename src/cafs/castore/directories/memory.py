"""``memory://``: directories in a dict, for tests and throwaway stores."""

from __future__ import annotations

from urllib.parse import SplitResult

from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService, check_digest
from cafs.castore.directory import Directory
from cafs.urls import check_memory_url


class MemoryDirectoryService(DirectoryService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> MemoryDirectoryService:
        """``memory://``: takes no host, path or option."""
        check_memory_url(url, parts)
        return cls()

    def __init__(self) -> None:
        # Kept encoded, as a real store would, so reads re-validate and re-hash.
        self._directories: dict[Digest, bytes] = {}

    async def get(self, digest: Digest) -> Directory | None:
        data = self._directories.get(digest)
        if data is None:
            return None
        return check_digest(digest, Directory.from_bytes(data))

    async def put(self, directory: Directory) -> Digest:
        digest = directory.digest
        self._directories.setdefault(digest, directory.canonical_bytes())
        return digest

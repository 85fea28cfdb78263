"""The DirectoryService interface and the closure putter."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator

import blake3

from cafs.castore.closure import LeavesToRootValidator
from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.errors import CafsError, IntegrityError, StorageError


class DirectoryPutter(ABC):
    """Takes a closure leaves first; ``close`` validates it, stores it, returns the root."""

    @abstractmethod
    async def put(self, directory: Directory) -> None: ...

    @abstractmethod
    async def close(self) -> Digest: ...


class DirectoryService(ABC):
    """Stores Directory messages by digest.

    Every Directory handed out is valid and hashes to the digest it was asked
    for. A missing directory is ``None``, not an error.
    """

    @abstractmethod
    async def get(self, digest: Digest) -> Directory | None: ...

    @abstractmethod
    async def put(self, directory: Directory) -> Digest:
        """Store one directory. Children are not checked (use a putter for that)."""

    async def put_many(self, directories: list[Directory]) -> None:
        """Store directories that were already validated as a closure."""
        for directory in directories:
            await self.put(directory)

    async def get_recursive(self, root: Digest) -> AsyncIterator[Directory]:
        """The closure of ``root``: root first, each directory once; empty if absent.

        A directory referenced but missing is an error (the closure has a hole).
        """
        queue: deque[Digest] = deque([root])
        seen = {root}
        first = True
        while queue:
            digest = queue.popleft()
            directory = await self.get(digest)
            if directory is None:
                if first:
                    return
                raise StorageError(f"directory {digest} is referenced but missing")
            first = False
            yield directory
            for _, child in directory.directories():
                if child.digest not in seen:
                    seen.add(child.digest)
                    queue.append(child.digest)

    def put_multiple_start(self) -> DirectoryPutter:
        return ValidatingPutter(self)

    async def pin(self, digest: Digest) -> None:
        """Keep ``digest`` (a directory's closure, or a blob) through garbage collection."""
        raise StorageError(f"{type(self).__name__} keeps no pins")

    async def unpin(self, digest: Digest) -> bool:
        """Drop a pin; False if there was none."""
        raise StorageError(f"{type(self).__name__} keeps no pins")

    async def pins(self) -> list[Digest]:
        """Every pinned digest (none for a backend that keeps no pins)."""
        return []

    async def connect(self) -> None:  # noqa: B027 - only remote backends connect
        """Reach the backend now, failing early (remote backends with ``wait-connect=1``)."""

    async def close(self) -> None:  # noqa: B027 - backends without resources keep the default
        """Release connections and threads."""


class ValidatingPutter(DirectoryPutter):
    """Buffers a closure, checks it as a whole, then stores it in one go."""

    def __init__(self, service: DirectoryService) -> None:
        self._service = service
        self._validator = LeavesToRootValidator()
        self._closed = False

    async def put(self, directory: Directory) -> None:
        if self._closed:
            raise ValueError("put on a closed directory putter")
        self._validator.add(directory)

    async def close(self) -> Digest:
        if self._closed:
            raise ValueError("directory putter closed twice")
        self._closed = True
        root, directories = self._validator.finish()
        await self._service.put_many(directories)
        return root


def check_digest(expected: Digest, directory: Directory) -> Directory:
    """Refuse a stored directory that does not hash to the digest it is stored under."""
    if directory.digest != expected:
        raise IntegrityError(f"directory {expected} is corrupt: it hashes to {directory.digest}")
    return directory


def checked_directory(digest: Digest, key: str, data: bytes) -> Directory:
    """A stored Directory, refused unless it hashes to its digest and is valid."""
    actual = Digest(blake3.blake3(data).digest())
    if actual != digest:
        raise IntegrityError(f"directory {digest} is corrupt: it hashes to {actual} ({key})")
    try:
        return Directory.from_bytes(data)
    except CafsError as exc:
        raise IntegrityError(f"directory {digest} is corrupt: {exc} ({key})") from exc

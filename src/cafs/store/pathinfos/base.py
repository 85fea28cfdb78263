"""The PathInfoService interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from cafs.castore.nodes import Node
from cafs.errors import IntegrityError, InvalidDigestError
from cafs.store import nixbase32
from cafs.store.pathinfo import PathInfo
from cafs.store.storepath import DIGEST_SIZE, StorePath


class PathInfoService(ABC):
    """Stores PathInfos by the 20-byte digest of their store path.

    Every PathInfo handed out is valid and belongs to the digest it was asked
    for. A missing one is ``None``, not an error.
    """

    @abstractmethod
    async def get(self, digest: bytes) -> PathInfo | None: ...

    async def get_path(self, path: StorePath) -> PathInfo | None:
        """The PathInfo of exactly ``path``: same digest *and* same name, else None."""
        info = await self.get(path.digest)
        return info if info is not None and info.store_path == path else None

    @abstractmethod
    async def put(self, info: PathInfo) -> PathInfo:
        """Store ``info`` (replacing any earlier one); returns what was stored.

        What was stored may differ from ``info``: a signing service adds a signature.
        """

    @abstractmethod
    def list(self) -> AsyncIterator[PathInfo]:
        """Every stored PathInfo once, in no particular order."""

    async def calculate_nar(self, node: Node) -> tuple[int, bytes] | None:
        """The NAR size and SHA-256 of ``node``, if this service computes them itself.

        A remote service renders the NAR where the data lives, instead of
        the caller fetching every blob; local backends answer None and the
        caller renders.
        """
        return None

    async def connect(self) -> None:  # noqa: B027 - only remote backends connect
        """Reach the backend now, failing early (remote backends with ``wait-connect=1``)."""

    async def close(self) -> None:  # noqa: B027 - backends without resources keep the default
        """Release connections and threads."""


def check_store_path_digest(digest: bytes) -> bytes:
    """Refuse a lookup key that cannot be a store path digest."""
    if len(digest) != DIGEST_SIZE:
        raise InvalidDigestError(
            f"invalid store path digest length: {len(digest)} bytes, expected {DIGEST_SIZE}"
        )
    return bytes(digest)


def check_stored(digest: bytes, info: PathInfo) -> PathInfo:
    """Refuse a stored PathInfo that is filed under another store path's digest."""
    if info.store_path.digest != digest:
        raise IntegrityError(
            f"path info stored under {nixbase32.encode(digest)} is corrupt: "
            f"it describes {info.store_path.absolute}"
        )
    return info

"""The castore services one command works with, built from their URLs."""

from __future__ import annotations

from dataclasses import dataclass

from cafs.castore.blobs.base import BlobService
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.directories.base import DirectoryService
from cafs.config import default_blob_service_addr, default_directory_service_addr


@dataclass
class CastoreServices:
    """A BlobService and a DirectoryService, connected and closed together."""

    blobs: BlobService
    directories: DirectoryService

    @classmethod
    def from_addrs(cls, blob_addr: str | None, directory_addr: str | None) -> CastoreServices:
        """The services the URLs name; None means the embedded store's."""
        blobs = blob_service_from_addr(blob_addr or default_blob_service_addr())
        directories = directory_service_from_addr(
            directory_addr or default_directory_service_addr()
        )
        return cls(blobs, directories)

    async def connect(self) -> None:
        """Open local stores and reach remote ones now, so a bad one fails before any work."""
        await self.blobs.connect()
        await self.directories.connect()

    async def close(self) -> None:
        try:
            await self.blobs.close()
        finally:
            await self.directories.close()

"""Where the embedded store lives, and the service URLs it is made of."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from cafs.castore.blobs.base import BlobService
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.directories.base import DirectoryService

if TYPE_CHECKING:
    from cafs.store.pathinfos.base import PathInfoService


def store_home() -> Path:
    """``$CAFS_HOME``, else ``$XDG_DATA_HOME/cafs``, else ``~/.local/share/cafs``."""
    explicit = os.environ.get("CAFS_HOME")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser().absolute() / "cafs"
    return Path.home() / ".local" / "share" / "cafs"


def default_blob_service_addr() -> str:
    return "objectstore+file://" + quote(str(store_home() / "objects"))


def default_directory_service_addr() -> str:
    return "sqlite://" + quote(str(store_home() / "directories.sqlite"))


def default_path_info_service_addr() -> str:
    return "sqlite://" + quote(str(store_home() / "pathinfo.sqlite"))


@dataclass
class CastoreServices:
    """The castore services one command works with."""

    blobs: BlobService
    directories: DirectoryService

    @classmethod
    def from_addrs(cls, blob_addr: str | None, directory_addr: str | None) -> CastoreServices:
        blobs = blob_service_from_addr(blob_addr or default_blob_service_addr())
        directories = directory_service_from_addr(
            directory_addr or default_directory_service_addr()
        )
        return cls(blobs, directories)

    async def connect(self) -> None:
        """Reach remote backends now, so an unreachable one fails before any work."""
        await self.blobs.connect()
        await self.directories.connect()

    async def close(self) -> None:
        await self.blobs.close()
        await self.directories.close()


@dataclass
class StoreServices(CastoreServices):
    """The castore services plus the PathInfo service, for commands of the Nix layer."""

    path_infos: PathInfoService

    @classmethod
    def from_addrs(
        cls,
        blob_addr: str | None,
        directory_addr: str | None,
        path_info_addr: str | None = None,
    ) -> StoreServices:
        # Imported here so castore-only commands never load the Nix layer.
        from cafs.store.composition import path_info_service_from_addr

        # Castore first: a nix+http PathInfoService ingests into these very services.
        castore = CastoreServices.from_addrs(blob_addr, directory_addr)
        path_infos = path_info_service_from_addr(
            path_info_addr or default_path_info_service_addr(), castore
        )
        return cls(castore.blobs, castore.directories, path_infos)

    async def connect(self) -> None:
        await super().connect()
        await self.path_infos.connect()

    async def close(self) -> None:
        try:
            await self.path_infos.close()
        finally:
            await super().close()

"""The castore services plus the PathInfo service, for commands of the Nix layer."""

from __future__ import annotations

from dataclasses import dataclass

from cafs.castore.services import CastoreServices
from cafs.config import default_path_info_service_addr
from cafs.store.composition import path_info_service_from_addr
from cafs.store.pathinfos.base import PathInfoService


@dataclass
class StoreServices(CastoreServices):
    path_infos: PathInfoService

    @classmethod
    def from_addrs(
        cls,
        blob_addr: str | None,
        directory_addr: str | None,
        path_info_addr: str | None = None,
    ) -> StoreServices:
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

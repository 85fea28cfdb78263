"""Turning PathInfo service URLs into services.

A table from URL scheme to the backend that parses the rest of its URL, as
in ``cafs.castore.composition``. tvix backends this build does not have (redb,
bigtable) are refused with a reason rather than treated as unknown, so a URL
copied from a tvix setup gets a clear answer. ``nix+http(s)://`` ingests what
it fetches, so every backend is handed the castore services the caller reads
from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cafs.store.pathinfos.base import PathInfoService
from cafs.urls import Backends, backend_for, parse_url

if TYPE_CHECKING:
    from cafs.castore.services import CastoreServices

PATH_INFO_BACKENDS: Backends = {
    "memory": "cafs.store.pathinfos.memory:MemoryPathInfoService",
    "sqlite": "cafs.store.pathinfos.sqlite:SqlitePathInfoService",
    "objectstore": "cafs.store.pathinfos.objectstore:ObjectStorePathInfoService",
    "grpc": "cafs.store.pathinfos.grpc:GrpcPathInfoService",
    "cache": "cafs.store.pathinfos.cache:CachePathInfoService",
    "lru": "cafs.store.pathinfos.lru:LruPathInfoService",
    "nix": "cafs.store.pathinfos.nix_http:NixHttpPathInfoService",
    "redb": None,
    "bigtable": None,
}


def path_info_service_from_addr(
    url: str, castore: CastoreServices | None = None
) -> PathInfoService:
    """The service ``url`` names; ``castore`` is where ``nix+http(s)://`` ingests NARs."""
    parts = parse_url(url)
    backend = backend_for(url, parts, PATH_INFO_BACKENDS, "path info service")
    service: PathInfoService = backend.from_url(url, parts, castore)
    return service

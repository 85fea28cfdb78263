"""Turning PathInfo service URLs into services, with the castore URL rules.

Only the embedded backends have a URL form here. tvix's remote and cloud
backends (gRPC, redb, nix+http, bigtable) are refused with a reason rather
than treated as unknown, so a URL copied from a tvix setup gets a clear answer.
"""

from __future__ import annotations

from cafs.castore.composition import (
    REMOTE_SCHEMES,
    check_memory_url,
    parse_url,
    sqlite_database_path,
    unsupported_remote,
)
from cafs.errors import InvalidAddressError
from cafs.store.pathinfos.base import PathInfoService

# tvix PathInfoService schemes that this build knows of but does not implement.
TVIX_ONLY_SCHEMES = ("redb", "nix+http", "nix+https", "bigtable")


def path_info_service_from_addr(url: str) -> PathInfoService:
    parts = parse_url(url)
    scheme = parts.scheme
    if scheme == "memory":
        from cafs.store.pathinfos.memory import MemoryPathInfoService

        check_memory_url(url, parts)
        return MemoryPathInfoService()
    if scheme == "sqlite":
        from cafs.store.pathinfos.sqlite import SqlitePathInfoService

        return SqlitePathInfoService(sqlite_database_path(url, parts))
    if scheme in REMOTE_SCHEMES or scheme in TVIX_ONLY_SCHEMES:
        raise unsupported_remote(url, parts)
    raise InvalidAddressError(
        url, f"unknown path info service scheme {scheme!r} (use memory:// or sqlite:///path)"
    )

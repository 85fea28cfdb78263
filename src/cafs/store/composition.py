"""Turning PathInfo service URLs into services, with the castore URL rules.

tvix backends this build does not have (redb, bigtable) are refused with a
reason rather than treated as unknown, so a URL copied from a tvix setup gets
a clear answer. ``nix+http(s)://`` ingests what it fetches, so it needs the
castore services the caller reads from: they come in as ``castore``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import SplitResult, parse_qsl

from cafs.castore.composition import (
    REMOTE_SCHEMES,
    cache_sides,
    check_memory_url,
    parse_url,
    sqlite_database_path,
    unsupported_remote,
)
from cafs.errors import InvalidAddressError
from cafs.store.pathinfos.base import PathInfoService

if TYPE_CHECKING:
    from cafs.config import CastoreServices

# tvix PathInfoService schemes that this build knows of but does not implement.
TVIX_ONLY_SCHEMES = ("redb", "bigtable")
NIX_HTTP_SCHEMES = ("nix+http", "nix+https")


def path_info_service_from_addr(
    url: str, castore: CastoreServices | None = None
) -> PathInfoService:
    """The service ``url`` names; ``castore`` is where ``nix+http(s)://`` ingests NARs."""
    parts = parse_url(url)
    scheme = parts.scheme
    if scheme == "memory":
        from cafs.store.pathinfos.memory import MemoryPathInfoService

        check_memory_url(url, parts)
        return MemoryPathInfoService()
    if scheme == "sqlite":
        from cafs.store.pathinfos.sqlite import SqlitePathInfoService

        return SqlitePathInfoService(sqlite_database_path(url, parts))
    if scheme in REMOTE_SCHEMES:
        from cafs.grpc.channel import parse_channel_url
        from cafs.store.pathinfos.grpc import GrpcPathInfoService

        return GrpcPathInfoService(parse_channel_url(url))
    if scheme == "cache":
        from cafs.store.pathinfos.cache import CachePathInfoService

        def side(side_url: str) -> PathInfoService:
            return path_info_service_from_addr(side_url, castore)

        return CachePathInfoService(*cache_sides(url, parts, side))
    if scheme == "lru":
        from cafs.store.pathinfos.lru import LruPathInfoService

        return LruPathInfoService(lru_capacity(url, parts))
    if scheme in NIX_HTTP_SCHEMES:
        from cafs.store.pathinfos.nix_http import NixHttpPathInfoService, parse_address

        address = parse_address(url, parts)
        if castore is None:
            raise InvalidAddressError(
                url, f"{scheme}:// needs blob and directory services to ingest NARs into"
            )
        return NixHttpPathInfoService(address, castore.blobs, castore.directories)
    if scheme in TVIX_ONLY_SCHEMES:
        raise unsupported_remote(url, parts)
    raise InvalidAddressError(
        url, f"unknown path info service scheme {scheme!r} (use memory:// or sqlite:///path)"
    )


def lru_capacity(url: str, parts: SplitResult) -> int:
    if parts.netloc or parts.path:
        raise InvalidAddressError(url, "lru:// takes no host and no path, only ?capacity=N")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"capacity"})
    if unknown:
        raise InvalidAddressError(url, f"unsupported option(s): {', '.join(unknown)}")
    text = options.get("capacity", "")
    if not text.isdigit() or int(text) < 1:
        raise InvalidAddressError(url, "lru needs ?capacity=N with N at least 1")
    return int(text)

"""Turning PathInfo service URLs into services, with the castore URL rules.

tvix backends this build does not have (redb, nix+http, bigtable) are
refused with a reason rather than treated as unknown, so a URL copied from a
tvix setup gets a clear answer.
"""

from __future__ import annotations

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
    if scheme in REMOTE_SCHEMES:
        from cafs.grpc.channel import parse_channel_url
        from cafs.store.pathinfos.grpc import GrpcPathInfoService

        return GrpcPathInfoService(parse_channel_url(url))
    if scheme == "cache":
        from cafs.store.pathinfos.cache import CachePathInfoService

        return CachePathInfoService(*cache_sides(url, parts, path_info_service_from_addr))
    if scheme == "lru":
        from cafs.store.pathinfos.lru import LruPathInfoService

        return LruPathInfoService(lru_capacity(url, parts))
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

"""Turning service URLs into services.

One function per service kind, each a table from URL scheme to backend, as
tvix's ``from_addr``. Every refusal is an ``InvalidAddressError`` naming the
URL and the reason in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from cafs.castore.blobs.base import BlobService
from cafs.castore.directories.base import DirectoryService
from cafs.errors import InvalidAddressError

S = TypeVar("S")

REMOTE_SCHEMES = ("grpc+unix", "grpc+http", "grpc+https")
OBJECT_STORE_CLOUD = ("s3", "gs", "az", "azure", "abfs", "http", "https")


def parse_url(url: str) -> SplitResult:
    if "://" not in url:
        raise InvalidAddressError(url, "expected a URL such as memory:// or sqlite:///path")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise InvalidAddressError(url, str(exc)) from None
    if not parts.scheme:
        raise InvalidAddressError(url, "missing scheme")
    return parts


def check_no_query(url: str, parts: SplitResult) -> None:
    if parts.query:
        names = ", ".join(sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}))
        raise InvalidAddressError(url, f"unsupported option(s): {names or parts.query}")


def check_memory_url(url: str, parts: SplitResult) -> None:
    if parts.netloc or parts.path:
        raise InvalidAddressError(url, "memory:// takes no host and no path")
    check_no_query(url, parts)


def local_path(url: str, parts: SplitResult, what: str) -> Path:
    if parts.netloc not in ("", "localhost"):
        raise InvalidAddressError(url, f"{what} URLs take no host (use three slashes)")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidAddressError(url, f"{what} needs an absolute path")
    if path == "/":
        raise InvalidAddressError(url, "refusing to use / as a store")
    return Path(path)


def cache_urls(url: str, parts: SplitResult) -> tuple[str, str]:
    """The near and far URLs of ``cache://?near=URL&far=URL``.

    The values are URLs themselves, so they are split at the first ``=``
    only and %-decoded without turning ``+`` into a space
    (``far=grpc+unix:///run/cafs.sock`` works as written); a value holding
    ``&`` must write it as ``%26``.
    """
    if parts.netloc or parts.path:
        raise InvalidAddressError(url, "cache:// takes no host and no path, only ?near=…&far=…")
    found: dict[str, str] = {}
    for pair in parts.query.split("&") if parts.query else []:
        key, sep, value = pair.partition("=")
        if key not in ("near", "far"):
            raise InvalidAddressError(url, f"unsupported option {key!r} (cache takes near and far)")
        if not sep or not value:
            raise InvalidAddressError(url, f"{key} needs a URL")
        if key in found:
            raise InvalidAddressError(url, f"{key} is given twice")
        found[key] = unquote(value)
    for key in ("near", "far"):
        if key not in found:
            raise InvalidAddressError(url, f"cache needs {key}=URL")
    return found["near"], found["far"]


def cache_sides(url: str, parts: SplitResult, build: Callable[[str], S]) -> tuple[S, S]:
    """Near and far of a cache URL, built by ``build``; a bad side names the cache URL."""
    sides = []
    for key, side_url in zip(("near", "far"), cache_urls(url, parts), strict=True):
        try:
            sides.append(build(side_url))
        except InvalidAddressError as exc:
            raise InvalidAddressError(url, f"{key}: {exc}") from None
    return sides[0], sides[1]


def unsupported_remote(url: str, parts: SplitResult) -> InvalidAddressError:
    return InvalidAddressError(url, f"scheme {parts.scheme!r} is not supported by this cafs build")


def sqlite_database_path(url: str, parts: SplitResult) -> Path | None:
    """The file of a ``sqlite:///path`` URL; None for ``sqlite://``, a throwaway in-memory store."""
    check_no_query(url, parts)
    if not parts.netloc and not parts.path:
        return None
    return local_path(url, parts, "sqlite")


def blob_service_from_addr(url: str) -> BlobService:
    parts = parse_url(url)
    scheme = parts.scheme
    if scheme == "memory":
        from cafs.castore.blobs.memory import MemoryBlobService

        check_memory_url(url, parts)
        return MemoryBlobService()
    if scheme.startswith("objectstore+"):
        from cafs.castore.blobs.objectstore import ObjectStoreBlobService
        from cafs.castore.objectstore import FileObjectStorage, MemoryObjectStorage

        inner = scheme.removeprefix("objectstore+")
        if inner == "file":
            check_no_query(url, parts)
            return ObjectStoreBlobService(FileObjectStorage(local_path(url, parts, "file")))
        if inner == "memory":
            if parts.netloc or parts.path not in ("", "/"):
                raise InvalidAddressError(url, "objectstore+memory:/// takes no host and no path")
            check_no_query(url, parts)
            return ObjectStoreBlobService(MemoryObjectStorage())
        if inner in OBJECT_STORE_CLOUD:
            raise unsupported_remote(url, parts)
        raise InvalidAddressError(url, f"unknown object store scheme {inner!r}")
    if scheme in REMOTE_SCHEMES:
        from cafs.castore.blobs.grpc import GrpcBlobService
        from cafs.grpc.channel import parse_channel_url

        return GrpcBlobService(parse_channel_url(url))
    if scheme == "cache":
        from cafs.castore.blobs.cache import CachedBlobService

        return CachedBlobService(*cache_sides(url, parts, blob_service_from_addr))
    raise InvalidAddressError(url, f"unknown blob service scheme {scheme!r}")


def directory_service_from_addr(url: str) -> DirectoryService:
    parts = parse_url(url)
    scheme = parts.scheme
    if scheme == "memory":
        from cafs.castore.directories.memory import MemoryDirectoryService

        check_memory_url(url, parts)
        return MemoryDirectoryService()
    if scheme == "sqlite":
        from cafs.castore.directories.sqlite import SqliteDirectoryService

        return SqliteDirectoryService(sqlite_database_path(url, parts))
    if scheme in REMOTE_SCHEMES:
        from cafs.castore.directories.grpc import GrpcDirectoryService
        from cafs.grpc.channel import parse_channel_url

        return GrpcDirectoryService(parse_channel_url(url))
    if scheme == "cache":
        from cafs.castore.directories.cache import CachedDirectoryService

        return CachedDirectoryService(*cache_sides(url, parts, directory_service_from_addr))
    if scheme.startswith("objectstore+"):
        raise unsupported_remote(url, parts)
    raise InvalidAddressError(url, f"unknown directory service scheme {scheme!r}")


def deadline_option(url: str, value: str) -> float:
    """A ``?deadline=SECONDS`` value: a number of seconds above 0 (a bad one names the URL)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e6:
        raise InvalidAddressError(
            url, f"deadline must be a number of seconds above 0, not {value!r}"
        )
    return seconds

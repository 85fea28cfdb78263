"""Service URLs: what is accepted, and a one-line refusal for everything else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cafs.castore.blobs.cache import CachedBlobService
from cafs.castore.blobs.grpc import GrpcBlobService
from cafs.castore.blobs.memory import MemoryBlobService
from cafs.castore.blobs.objectstore import ObjectStoreBlobService
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.directories.cache import CachedDirectoryService
from cafs.castore.directories.grpc import GrpcDirectoryService
from cafs.castore.directories.memory import MemoryDirectoryService
from cafs.castore.directories.sqlite import SqliteDirectoryService
from cafs.config import default_blob_service_addr, default_directory_service_addr, store_home
from cafs.errors import InvalidAddressError
from cafs.rpc.channel import parse_channel_url


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", MemoryBlobService),
        ("objectstore+memory:///", ObjectStoreBlobService),
        ("objectstore+file:///{tmp}/blobs", ObjectStoreBlobService),
    ],
)
def test_blob_urls(url: str, kind: type, tmp_path: Path) -> None:
    assert isinstance(blob_service_from_addr(url.replace("/{tmp}", str(tmp_path))), kind)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", MemoryDirectoryService),
        ("sqlite://", SqliteDirectoryService),
        ("sqlite:///{tmp}/dirs.sqlite", SqliteDirectoryService),
    ],
)
def test_directory_urls(url: str, kind: type, tmp_path: Path) -> None:
    assert isinstance(directory_service_from_addr(url.replace("/{tmp}", str(tmp_path))), kind)


@pytest.mark.parametrize(
    ("url", "target", "secure", "wait_connect"),
    [
        ("grpc+unix:///run/cafs.sock", "unix:///run/cafs.sock", False, False),
        ("grpc+unix:///run/cafs.sock?wait-connect=1", "unix:///run/cafs.sock", False, True),
        ("grpc+http://[::1]:8000", "[::1]:8000", False, False),
        ("grpc+http://localhost", "localhost:80", False, False),
        ("grpc+http://127.0.0.1:8000/?wait-connect=0", "127.0.0.1:8000", False, False),
        ("grpc+https://store.example", "store.example:443", True, False),
    ],
)
def test_channel_urls(url: str, target: str, secure: bool, wait_connect: bool) -> None:
    address = parse_channel_url(url)
    assert (address.target, address.secure, address.wait_connect) == (
        target,
        secure,
        wait_connect,
    )


def test_remote_and_cache_urls() -> None:
    assert isinstance(blob_service_from_addr("grpc+unix:///run/cafs.sock"), GrpcBlobService)
    assert isinstance(directory_service_from_addr("grpc+http://[::1]:8000"), GrpcDirectoryService)
    # The far URL keeps its "+": query values are not form-decoded.
    blobs = blob_service_from_addr("cache://?near=memory://&far=grpc+unix:///run/cafs.sock")
    assert isinstance(blobs, CachedBlobService)
    assert isinstance(blobs.near, MemoryBlobService) and isinstance(blobs.far, GrpcBlobService)
    directories = directory_service_from_addr(
        "cache://?near=sqlite://&far=grpc+http://127.0.0.1:8000%3Fwait-connect%3D1"
    )
    assert isinstance(directories, CachedDirectoryService)
    assert isinstance(directories.far, GrpcDirectoryService)


BAD_BLOB_URLS = [
    ("memory:///", "no host and no path"),
    ("memory:///foo", "no host and no path"),
    ("memory://foo", "no host and no path"),
    ("memory://?x=1", "unsupported option"),
    ("objectstore+file://relative", "no host"),
    ("objectstore+file:///", "refusing"),
    ("objectstore+file:///tmp/x?foo=bar", "unsupported option"),
    ("objectstore+nope:///x", "unknown object store scheme"),
    ("objectstore+s3://bucket/prefix?no_such=1", "unknown object store option"),
    ("objectstore+s3://bucket/prefix?deadline=0", "deadline must be"),
    ("grpc+unix://host/run/cafs.sock", "host may not be set for unix domain sockets"),
    ("grpc+unix://relative.sock", "host may not be set"),
    ("grpc+http://[::1]:8000/some-path", "path may not be set"),
    ("grpc+https://host/x", "path may not be set"),
    ("grpc+http://host:8000?foo=1", "unsupported option 'foo'"),
    ("grpc+http://host:8000?wait-connect=yes", "wait-connect must be 0 or 1"),
    ("grpc+http://:8000", "missing host"),
    ("cache://?near=memory://", "cache needs far=URL"),
    ("cache://host?near=memory://&far=memory://", "no host and no path"),
    ("cache://?near=memory://&far=memory://&size=1", "unsupported option 'size'"),
    ("cache://?near=memory://&near=memory://&far=memory://", "near is given twice"),
    ("cache://?near=memory://&far=memory:///x", "no host and no path"),
    ("ftp://host/x", "unknown blob service scheme"),
    ("not a url", "expected a URL"),
    ("/just/a/path", "expected a URL"),
    ("http://host:notaport", "port"),
]


@pytest.mark.parametrize(("url", "reason"), BAD_BLOB_URLS)
def test_bad_blob_urls(url: str, reason: str) -> None:
    with pytest.raises(InvalidAddressError, match=reason) as info:
        blob_service_from_addr(url)
    message = str(info.value)
    assert url in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sqlite://host/x", "no host"),
        ("sqlite:///", "refusing"),
        ("redb:///x", "not supported by this cafs build"),
        ("couchdb:///x", "unknown directory service scheme"),
        ("grpc+unix://host/x", "host may not be set"),
        ("cache://?far=memory://", "cache needs near=URL"),
        ("memory://x", "no host"),
    ],
)
def test_bad_directory_urls(url: str, reason: str) -> None:
    with pytest.raises(InvalidAddressError, match=reason):
        directory_service_from_addr(url)


def test_store_home_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAFS_HOME", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store_home() == tmp_path / "explicit"
    monkeypatch.delenv("CAFS_HOME")
    assert store_home() == tmp_path / "xdg" / "cafs"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_home() == tmp_path / "home" / ".local" / "share" / "cafs"


def test_default_urls_are_usable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAFS_HOME", str(tmp_path / "with space#and?odd"))
    blobs = blob_service_from_addr(default_blob_service_addr())
    assert isinstance(blobs, ObjectStoreBlobService)
    asyncio.run(blobs.connect())
    directories = directory_service_from_addr(default_directory_service_addr())
    assert isinstance(directories, SqliteDirectoryService)
    assert (tmp_path / "with space#and?odd" / "objects" / "tmp").is_dir()

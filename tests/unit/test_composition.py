"""Service URLs: what is accepted, and a one-line refusal for everything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from cafs.castore.blobs.memory import MemoryBlobService
from cafs.castore.blobs.objectstore import ObjectStoreBlobService
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.directories.memory import MemoryDirectoryService
from cafs.castore.directories.sqlite import SqliteDirectoryService
from cafs.config import default_blob_service_addr, default_directory_service_addr, store_home
from cafs.errors import InvalidAddressError


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


BAD_BLOB_URLS = [
    ("memory:///", "no host and no path"),
    ("memory:///foo", "no host and no path"),
    ("memory://foo", "no host and no path"),
    ("memory://?x=1", "unsupported option"),
    ("objectstore+file://relative", "no host"),
    ("objectstore+file:///", "refusing"),
    ("objectstore+file:///tmp/x?foo=bar", "unsupported option"),
    ("objectstore+nope:///x", "unknown object store scheme"),
    ("objectstore+s3://bucket/prefix", "not supported"),
    ("grpc+unix:///run/cafs.sock", "not supported"),
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
        ("redb:///x", "unknown directory service scheme"),
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
    assert isinstance(blob_service_from_addr(default_blob_service_addr()), ObjectStoreBlobService)
    directories = directory_service_from_addr(default_directory_service_addr())
    assert isinstance(directories, SqliteDirectoryService)
    assert (tmp_path / "with space#and?odd" / "objects" / "tmp").is_dir()

"""PathInfoService conformance on every backend, and what each wrapper adds."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cafs.castore.digest import Digest
from cafs.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from cafs.config import default_path_info_service_addr, store_home
from cafs.errors import IntegrityError, InvalidAddressError, InvalidDigestError
from cafs.store.composition import path_info_service_from_addr
from cafs.store.hashes import CAHash, NixHash
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService
from cafs.store.pathinfos.cache import CachePathInfoService
from cafs.store.pathinfos.lru import LruPathInfoService
from cafs.store.pathinfos.memory import MemoryPathInfoService
from cafs.store.pathinfos.signing import SigningPathInfoService
from cafs.store.pathinfos.sqlite import LIST_BATCH, SqlitePathInfoService
from cafs.store.services import StoreServices
from cafs.store.signatures import Signature, SigningKey
from cafs.store.storepath import StorePath
from tests.conftest import daemon_for

# vectors.md §6: the keyfile-signing wrapper's test key, and what it appends to PATH_INFO.
SIGNING_KEY = SigningKey.parse(
    "do.not.use:sGPzxuK5WvWPraytx+6sjtaff866sYlfvErE6x0hFEhy5eqe7OVZ8ZMqZ/ME/HaRdKGNGvJkyGKXYTaeA6lR3A=="
)
PATH_INFO_SIGNATURE = Signature.parse(
    "do.not.use:xl4q2L5wQMou13ZQ9/YPqK1z/DSIYycTtndVNfp2ybT8Cpg+yPv1sCQN8VVWppnq5BXTuMhjaq7K/ebYN4LYBg=="
)

DUMMY_PATH = StorePath(bytes(20), "dummy")
PATH_INFO = PathInfo(
    store_path=DUMMY_PATH,
    node=DirectoryNode(Digest(bytes(32)), 0),
    references=(DUMMY_PATH,),
    nar_size=0,
    nar_sha256=bytes(32),
    ca=CAHash("nar", NixHash("sha256", bytes(32))),
)


def make_info(index: int) -> PathInfo:
    """A distinct valid PathInfo per ``index``."""
    path = StorePath(index.to_bytes(20, "big"), f"path-{index}")
    return PathInfo(
        store_path=path,
        node=FileNode(Digest(bytes([index % 256]) * 32), index, executable=index % 2 == 1),
        references=(path, DUMMY_PATH),
        nar_size=128 + index,
        nar_sha256=bytes([index % 256]) * 32,
        deriver=StorePath(bytes(20), f"path-{index}.drv"),
    )


class CountingMemoryService(MemoryPathInfoService):
    """A memory service that counts the lookups reaching it."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, digest: bytes) -> PathInfo | None:
        self.gets += 1
        return await super().get(digest)


BACKENDS = ["memory", "sqlite", "objectstore", "lru", "signing", "grpc-unix", "grpc-tcp"]


def cached(far: PathInfoService, capacity: int) -> CachePathInfoService:
    return CachePathInfoService(LruPathInfoService(capacity), far)


def make_service(kind: str, tmp_path: Path) -> PathInfoService:
    if kind == "memory":
        return path_info_service_from_addr("memory://")
    if kind == "sqlite":
        return path_info_service_from_addr(f"sqlite://{tmp_path / 'pathinfo.sqlite'}")
    if kind == "objectstore":
        return path_info_service_from_addr(f"objectstore+file://{tmp_path / 'bucket'}")
    if kind == "lru":
        return cached(MemoryPathInfoService(), capacity=2)
    return SigningPathInfoService(MemoryPathInfoService(), SIGNING_KEY)


@pytest.fixture(params=BACKENDS)
async def service(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PathInfoService]:
    with contextlib.ExitStack() as stack:
        if request.param.startswith("grpc-"):
            daemon = stack.enter_context(daemon_for(request.param, tmp_path))
            svc = path_info_service_from_addr(daemon.url)
        else:
            svc = make_service(request.param, tmp_path)
        try:
            yield svc
        finally:
            await svc.close()


def unsigned(info: PathInfo) -> PathInfo:
    """``info`` without the signature a signing service may have added."""
    return dataclasses.replace(info, signatures=())


# --- conformance --------------------------------------------------------------------------------


async def test_get_missing_is_none(service: PathInfoService) -> None:
    assert await service.get(bytes(20)) is None
    assert [info async for info in service.list()] == []


async def test_put_get(service: PathInfoService) -> None:
    stored = await service.put(PATH_INFO)
    assert unsigned(stored) == PATH_INFO
    assert await service.get(DUMMY_PATH.digest) == stored
    for index in range(1, 6):
        info = make_info(index)
        stored = await service.put(info)
        assert unsigned(stored) == info
        assert await service.get(info.store_path.digest) == stored


async def test_put_overwrites(service: PathInfoService) -> None:
    await service.put(PATH_INFO)
    newer = dataclasses.replace(PATH_INFO, nar_size=42, node=SymlinkNode(b"/somewhere"), ca=None)
    stored = await service.put(newer)
    assert unsigned(stored) == newer
    got = await service.get(DUMMY_PATH.digest)
    assert got is not None and unsigned(got) == newer
    assert len([info async for info in service.list()]) == 1


async def test_list_returns_each_once(service: PathInfoService) -> None:
    infos = [make_info(index) for index in range(1, 8)]
    for info in infos:
        await service.put(info)
    await service.put(infos[0])  # again: still listed once
    listed = [unsigned(info) async for info in service.list()]
    assert len(listed) == len(infos)
    assert sorted(listed, key=lambda i: i.store_path.digest) == infos


@pytest.mark.parametrize("digest", [b"", bytes(19), bytes(21), bytes(32)])
async def test_wrong_digest_length(service: PathInfoService, digest: bytes) -> None:
    with pytest.raises(InvalidDigestError, match=f"{len(digest)} bytes, expected 20"):
        await service.get(digest)


# --- sqlite -------------------------------------------------------------------------------------


async def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'p.sqlite'}"
    service = path_info_service_from_addr(url)
    await service.put(PATH_INFO)
    await service.close()
    service = path_info_service_from_addr(url)
    try:
        assert await service.get(DUMMY_PATH.digest) == PATH_INFO
    finally:
        await service.close()


async def test_sqlite_list_pages(tmp_path: Path) -> None:
    service = SqlitePathInfoService(tmp_path / "p.sqlite")
    try:
        count = LIST_BATCH * 2 + 3
        for index in range(1, count + 1):
            await service.put(make_info(index))
        digests = [info.store_path.digest async for info in service.list()]
        assert len(digests) == count == len(set(digests))
    finally:
        await service.close()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xff\xff\xff", "is corrupt: invalid path info: cannot decode"),
        (make_info(3).to_bytes(), "is corrupt: it describes /nix/store/.*-path-3"),
        (
            PATH_INFO.to_proto().narinfo.SerializeToString(),
            "is corrupt: invalid path info",
        ),
    ],
)
async def test_sqlite_corrupted_row_is_an_error(tmp_path: Path, data: bytes, error: str) -> None:
    path = tmp_path / "p.sqlite"
    service = path_info_service_from_addr(f"sqlite://{path}")
    await service.put(PATH_INFO)
    await service.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE pathinfos SET data = ?", (data,))
    conn.close()
    service = path_info_service_from_addr(f"sqlite://{path}")
    try:
        with pytest.raises(IntegrityError, match=error):
            await service.get(DUMMY_PATH.digest)
        with pytest.raises(IntegrityError, match=error):
            _ = [info async for info in service.list()]
    finally:
        await service.close()


async def test_sqlite_two_databases_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    first = SqlitePathInfoService(path)
    second = SqlitePathInfoService(path)
    try:
        assert await second.get(DUMMY_PATH.digest) is None
        await first.put(PATH_INFO)
        assert await second.get(DUMMY_PATH.digest) == PATH_INFO
        await second.put(make_info(1))
        assert await first.get(make_info(1).store_path.digest) == make_info(1)
        assert len([info async for info in first.list()]) == 2
    finally:
        await first.close()
        await second.close()


# --- LRU ----------------------------------------------------------------------------------------


async def test_lru_hit_does_not_reach_inner() -> None:
    inner = CountingMemoryService()
    service = cached(inner, capacity=4)
    await service.put(PATH_INFO)
    assert await service.get(DUMMY_PATH.digest) == PATH_INFO
    assert await service.get(DUMMY_PATH.digest) == PATH_INFO
    assert inner.gets == 0
    # A miss goes to inner once, then stays cached.
    await inner.put(make_info(1))
    assert await service.get(make_info(1).store_path.digest) == make_info(1)
    assert await service.get(make_info(1).store_path.digest) == make_info(1)
    assert inner.gets == 1
    # Misses of absent paths are not cached.
    assert await service.get(bytes([7]) * 20) is None
    assert await service.get(bytes([7]) * 20) is None
    assert inner.gets == 3


async def test_lru_evicts_least_recently_used() -> None:
    inner = CountingMemoryService()
    service = cached(inner, capacity=2)
    a, b, c = make_info(1), make_info(2), make_info(3)
    await service.put(a)
    await service.put(b)
    assert await service.get(a.store_path.digest) == a  # a is now the most recent
    await service.put(c)  # evicts b
    assert inner.gets == 0
    assert await service.get(a.store_path.digest) == a
    assert await service.get(c.store_path.digest) == c
    assert inner.gets == 0
    assert await service.get(b.store_path.digest) == b  # back from inner, evicting a
    assert inner.gets == 1
    assert await service.get(a.store_path.digest) == a
    assert inner.gets == 2


async def test_lru_list_passes_through() -> None:
    inner = MemoryPathInfoService()
    service = cached(inner, capacity=1)
    await inner.put(make_info(1))
    await service.put(make_info(2))
    assert sorted([i.store_path.name async for i in service.list()]) == ["path-1", "path-2"]


def test_lru_needs_capacity() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LruPathInfoService(capacity=0)


# --- signing ------------------------------------------------------------------------------------


async def test_signing_appends_verifiable_signature() -> None:
    inner = MemoryPathInfoService()
    service = SigningPathInfoService(inner, SIGNING_KEY)
    existing = Signature("other", bytes(64))
    stored = await service.put(PATH_INFO.with_signature(existing))
    # Ed25519 is deterministic: the exact signature tvix's wrapper appends.
    assert stored.signatures == (existing, PATH_INFO_SIGNATURE)
    assert SIGNING_KEY.verifying_key.verify(PATH_INFO.fingerprint(), stored.signatures[-1])
    assert await inner.get(DUMMY_PATH.digest) == stored
    assert await service.get(DUMMY_PATH.digest) == stored


async def test_signing_every_put() -> None:
    key = SigningKey.generate("test-1")
    service = SigningPathInfoService(MemoryPathInfoService(), key)
    for index in range(1, 4):
        info = make_info(index)
        stored = await service.put(info)
        (signature,) = stored.signatures
        assert signature.name == "test-1"
        assert key.verifying_key.verify(info.fingerprint(), signature)
        stranger = SigningKey.generate("test-1").verifying_key
        assert not stranger.verify(info.fingerprint(), signature)


# --- URLs and config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", MemoryPathInfoService),
        ("sqlite://", SqlitePathInfoService),
        ("sqlite:///{tmp}/p.sqlite", SqlitePathInfoService),
    ],
)
async def test_urls(url: str, kind: type, tmp_path: Path) -> None:
    service = path_info_service_from_addr(url.replace("/{tmp}", str(tmp_path)))
    try:
        assert isinstance(service, kind)
    finally:
        await service.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("memory:///x", "takes no host and no path"),
        ("sqlite://relative", "take no host"),
        ("sqlite:///", "refusing to use /"),
        ("sqlite:///p?cache=1", "unsupported option"),
        ("redb:///var/lib/pathinfo.redb", "not supported by this cafs build"),
        ("grpc+http://[::1]:8000/path", "path may not be set"),
        ("grpc+unix://host/tmp/sock", "host may not be set"),
        ("lru://?capacity=0", "capacity=N with N at least 1"),
        ("lru://", "capacity=N"),
        ("cache://?near=lru://?capacity=10", "cache needs far=URL"),
        ("cache://?near=memory://&far=redb://", "not supported by this cafs build"),
        ("nix+https://cache.nixos.org", "needs blob and directory services"),
        ("objectstore+ftp:///x", "unknown object store scheme"),
        ("couchdb:///x", "unknown path info service scheme"),
        ("pathinfo", "expected a URL"),
    ],
)
def test_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(InvalidAddressError, match=reason):
        path_info_service_from_addr(url)


def test_default_addr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAFS_HOME", str(tmp_path / "with space"))
    addr = default_path_info_service_addr()
    assert addr == "sqlite://" + str(store_home() / "pathinfo.sqlite").replace(" ", "%20")


async def test_store_services(tmp_path: Path) -> None:
    services = StoreServices.from_addrs(
        "memory://", "memory://", f"sqlite://{tmp_path / 'p.sqlite'}"
    )
    try:
        assert isinstance(services.path_infos, SqlitePathInfoService)
        await services.path_infos.put(PATH_INFO)
    finally:
        await services.close()
    assert (tmp_path / "p.sqlite").exists()


async def test_store_services_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAFS_HOME", str(tmp_path))
    services = StoreServices.from_addrs("memory://", "memory://")
    try:
        assert isinstance(services.path_infos, SqlitePathInfoService)
        await services.connect()  # databases open here, off the event loop
    finally:
        await services.close()
    assert (tmp_path / "pathinfo.sqlite").exists()

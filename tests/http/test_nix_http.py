"""The ``nix+http://`` PathInfoService against binary caches served over real sockets.

The caches are directories written here with cafs's own pieces (import,
NAR rendering, narinfo, signatures) in every compression, laid out as Nix
writes them. The service tests serve them in-process with aiohttp on
127.0.0.1 (so odd answers can be made too); the mount test serves them with
``python -m http.server`` in its own process, stopped by PID.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import dataclasses
import gzip
import hashlib
import logging
import lzma
import os
import random
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestServer

from cafs.errors import (
    CafsError,
    IntegrityError,
    InvalidAddressError,
    StorageError,
    ValidationError,
)
from cafs.store import nixbase32
from cafs.store.composition import path_info_service_from_addr
from cafs.store.hashes import NixHash
from cafs.store.importer import content_addressed_info, ingest_with_nar
from cafs.store.nar.render import render_nar
from cafs.store.narinfo import NarInfoFlag
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.nix_http import NixHttpPathInfoService, parse_address
from cafs.store.services import StoreServices
from cafs.store.signatures import SigningKey
from cafs.store.storepath import StorePath
from tests.http.bridge import running_bridge
from tests.mount.conftest import mounted_store
from tests.process import cafs, cafs_bytes

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda data: data,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    "gzip": gzip.compress,
}
SUFFIXES = {"none": "", "xz": ".xz", "bzip2": ".bz2", "zstd": ".zst", "gzip": ".gz"}
KEY = SigningKey.generate("cafs-test-cache-1")
OTHER_KEY = SigningKey.generate("someone-else-1")
FORGED_KEY = SigningKey.generate(KEY.name)  # the trusted name, another secret
ABSENT = StorePath.from_basename(f"{'0' * 32}-absent")


# -- a binary cache written by cafs --------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One store path of the cache: what its narinfo says, and its NAR."""

    info: PathInfo
    nar: bytes
    source: Path
    compression: str

    @property
    def path(self) -> StorePath:
        return self.info.store_path

    @property
    def narinfo_name(self) -> str:
        return f"{nixbase32.encode(self.path.digest)}.narinfo"


@dataclass(frozen=True)
class BinaryCache:
    root: Path
    entries: dict[str, Entry]

    def narinfo(self, label: str) -> Path:
        return self.root / self.entries[label].narinfo_name

    def nar_file(self, label: str) -> Path:
        text = self.narinfo(label).read_text()
        found = re.search(r"^URL: (.*)$", text, re.MULTILINE)
        assert found is not None, text
        return self.root / found.group(1)

    def copy(self, to: Path) -> BinaryCache:
        shutil.copytree(self.root, to)
        return BinaryCache(to, self.entries)


def make_tree(root: Path) -> Path:
    rng = random.Random(7)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "hello").write_bytes(b"Hello World!\n")
    (root / "sub" / "big").write_bytes(rng.randbytes(2 * 1024 * 1024 + 17))
    (root / "sub" / "deeper" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "sub" / "deeper" / "tool").chmod(0o755)
    (root / "link").symlink_to("sub/big")
    (root / "empty-dir").mkdir()
    (root / "empty").write_bytes(b"")
    for i in range(40):
        (root / "sub" / f"small-{i}").write_bytes(rng.randbytes(i * 53))
    return root


def write_entry(
    root: Path,
    info: PathInfo,
    nar: bytes,
    compression: str,
    sign_with: tuple[SigningKey, ...],
    *,
    default_compression: bool = False,
) -> None:
    """The NAR file and narinfo Nix's ``nix copy --to file://…`` would write."""
    data = COMPRESSORS[compression](nar)
    file_hash = hashlib.sha256(data).digest()
    url = f"nar/{nixbase32.encode(file_hash)}.nar{SUFFIXES[compression]}"
    (root / "nar").mkdir(exist_ok=True)
    (root / url).write_bytes(data)
    narinfo = info.to_narinfo(url)
    narinfo.compression = None if compression == "none" else compression
    narinfo.file_hash = NixHash("sha256", file_hash)
    narinfo.file_size = len(data)
    if default_compression:
        narinfo.flags |= NarInfoFlag.COMPRESSION_DEFAULT
    for key in sign_with:
        narinfo.sign(key)
    name = f"{nixbase32.encode(info.store_path.digest)}.narinfo"
    (root / name).write_text(narinfo.render())


async def write_cache(root: Path, sources: Path) -> dict[str, Entry]:
    services = StoreServices.from_addrs("memory://", "memory://", "memory://")
    await services.connect()
    try:
        tree = make_tree(sources / "tree")
        single = sources / "single"
        single.write_bytes(b"a lone file\n")
        link = sources / "link"
        link.symlink_to("/nix/store/somewhere-else")
        ingested = {
            source: await ingest_with_nar(source, services) for source in (tree, single, link)
        }
        nars = {
            source: b"".join(
                [p async for p in render_nar(i.node, services.blobs, services.directories)]
            )
            for source, i in ingested.items()
        }

        def info(name: str, source: Path) -> PathInfo:
            i = ingested[source]
            return content_addressed_info(name, i.node, i.nar_size, i.nar_sha256)

        entries: dict[str, Entry] = {}
        single_info = info("single", single)
        # label, contents, compression, signed by, Compression line left out
        plans: list[tuple[str, Path, str, tuple[SigningKey, ...], bool]] = [
            *((c, tree, c, (KEY,), False) for c in COMPRESSORS),
            ("bzip2-by-default", tree, "bzip2", (KEY,), True),
            ("single", single, "xz", (KEY,), False),
            ("link", link, "none", (KEY,), False),
            ("unsigned", tree, "zstd", (), False),
            ("other-key", tree, "zstd", (OTHER_KEY,), False),
            ("forged", tree, "zstd", (FORGED_KEY,), False),
            ("two-keys", tree, "zstd", (OTHER_KEY, KEY), False),
        ]
        for label, source, compression, keys, default in plans:
            entry_info = single_info if label == "single" else info(f"cache-{label}", source)
            if label == "none":  # real references (one of them itself) and a deriver
                entry_info = dataclasses.replace(
                    entry_info,
                    references=(single_info.store_path, entry_info.store_path),
                    deriver=StorePath.from_basename(f"{'1' * 32}-cache-none.drv"),
                )
            write_entry(
                root, entry_info, nars[source], compression, keys, default_compression=default
            )
            signatures = tuple(key.sign(entry_info.fingerprint()) for key in keys)
            entry_info = dataclasses.replace(entry_info, signatures=signatures)
            entries[label] = Entry(entry_info, nars[source], source, compression)
        return entries
    finally:
        await services.close()


@pytest.fixture(scope="module")
def binary_cache(tmp_path_factory: pytest.TempPathFactory) -> BinaryCache:
    base = tmp_path_factory.mktemp("binary-cache")
    root = base / "cache"
    root.mkdir()
    (base / "sources").mkdir()
    entries = asyncio.run(write_cache(root, base / "sources"))
    (root / "nix-cache-info").write_text("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
    return BinaryCache(root, entries)


# -- an HTTP server in-process -------------------------------------------------------------


@dataclass
class Served:
    """A cache directory on a real socket; ``requests`` lists every path asked for."""

    host: str
    requests: list[str]

    def url(self, path: str = "/", keys: tuple[SigningKey, ...] | None = (KEY,)) -> str:
        url = f"nix+http://{self.host}{path}"
        if keys is not None:
            text = " ".join(k.verifying_key.to_nix_string() for k in keys)
            url += "?trusted-public-keys=" + quote(text, safe=":+=/")
        return url


@contextlib.asynccontextmanager
async def serving(root: Path) -> AsyncIterator[Served]:
    """``root`` under ``/`` and ``/cache/``, plus misbehaving prefixes (see the handlers)."""
    requests: list[str] = []
    stop = asyncio.Event()

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        requests.append(request.path)
        return await handler(request)

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no\n")

    async def misbehaving(request: web.Request) -> web.StreamResponse:
        kind, tail = request.match_info["kind"], request.match_info["tail"]
        data = (root / tail).read_bytes()
        if tail.endswith(".narinfo") or tail == "nix-cache-info":
            return web.Response(body=data)
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        if kind == "stall":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 60)
        raise ConnectionResetError("cut off half way")  # aiohttp drops the connection

    app = web.Application(middlewares=[record])
    app.router.add_get("/status/{code}/{tail:.*}", status)
    app.router.add_get("/{kind:cut|stall}/{tail:.*}", misbehaving)
    app.router.add_static("/cache/", root)
    app.router.add_static("/", root)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Served(f"127.0.0.1:{server.port}", requests)
    finally:
        stop.set()
        await server.close()


@contextlib.asynccontextmanager
async def store_over(url: str) -> AsyncIterator[StoreServices]:
    """Memory castore services with the PathInfo service ``url``, built as the CLI builds them."""
    services = StoreServices.from_addrs("memory://", "memory://", url)
    await services.connect()
    try:
        yield services
    finally:
        await services.close()


async def nar_of(info: PathInfo, services: StoreServices) -> bytes:
    return b"".join([p async for p in render_nar(info.node, services.blobs, services.directories)])


async def expect_refused(
    services: StoreServices, path: StorePath, match: str, kind: type[CafsError] = IntegrityError
) -> None:
    with pytest.raises(kind, match=match):
        await services.path_infos.get(path.digest)


# -- lookups -------------------------------------------------------------------------------


@pytest.mark.parametrize("label", [*COMPRESSORS, "bzip2-by-default", "single", "link"])
async def test_get_ingests_the_nar_in_every_compression(
    binary_cache: BinaryCache, label: str
) -> None:
    entry = binary_cache.entries[label]
    async with serving(binary_cache.root) as served, store_over(served.url()) as services:
        info = await services.path_infos.get(entry.path.digest)
        assert info == entry.info
        assert await nar_of(info, services) == entry.nar
        assert await services.path_infos.get_path(entry.path) == entry.info


async def test_references_deriver_and_signatures_come_from_the_narinfo(
    binary_cache: BinaryCache,
) -> None:
    entry = binary_cache.entries["none"]
    async with serving(binary_cache.root) as served, store_over(served.url()) as services:
        info = await services.path_infos.get(entry.path.digest)
    assert info is not None
    assert info.references == (binary_cache.entries["single"].path, entry.path)
    assert info.deriver is not None and info.deriver.name == "cache-none.drv"
    assert [s.name for s in info.signatures] == [KEY.name]
    assert info.ca is not None and info.ca.kind == "nar"


async def test_a_path_the_cache_lacks_is_none(binary_cache: BinaryCache) -> None:
    async with serving(binary_cache.root) as served, store_over(served.url()) as services:
        assert await services.path_infos.get(ABSENT.digest) is None
    assert served.requests == [f"/{nixbase32.encode(ABSENT.digest)}.narinfo"]


@pytest.mark.parametrize("code", [403, 404])
async def test_forbidden_and_not_found_are_none(binary_cache: BinaryCache, code: int) -> None:
    entry = binary_cache.entries["xz"]
    async with (
        serving(binary_cache.root) as served,
        store_over(served.url(f"/status/{code}")) as services,
    ):
        assert await services.path_infos.get(entry.path.digest) is None


async def test_another_status_is_an_error_naming_url_and_status(
    binary_cache: BinaryCache,
) -> None:
    entry = binary_cache.entries["xz"]
    async with (
        serving(binary_cache.root) as served,
        store_over(served.url("/status/500")) as services,
    ):
        url = f"http://{served.host}/status/500/{entry.narinfo_name}"
        await expect_refused(services, entry.path, f"{re.escape(url)}: HTTP 500", StorageError)


@pytest.mark.parametrize("path", ["/cache", "/cache/"])
async def test_the_url_path_is_the_cache_directory(binary_cache: BinaryCache, path: str) -> None:
    entry = binary_cache.entries["xz"]
    async with serving(binary_cache.root) as served, store_over(served.url(path)) as services:
        assert await services.path_infos.get(entry.path.digest) == entry.info
    nar_url = "/cache/" + str(binary_cache.nar_file("xz").relative_to(binary_cache.root))
    assert served.requests == [f"/cache/{entry.narinfo_name}", nar_url]


async def test_every_get_downloads_again_and_concurrent_gets_share_one(
    binary_cache: BinaryCache,
) -> None:
    entry = binary_cache.entries["zstd"]
    async with serving(binary_cache.root) as served, store_over(served.url()) as services:
        results = await asyncio.gather(
            *(services.path_infos.get(entry.path.digest) for _ in range(4))
        )
        assert results == [entry.info] * 4
        assert len(served.requests) == 2  # one narinfo, one NAR
        assert await services.path_infos.get(entry.path.digest) == entry.info
        assert len(served.requests) == 4


async def test_downloads_are_logged(
    binary_cache: BinaryCache, caplog: pytest.LogCaptureFixture
) -> None:
    entry = binary_cache.entries["xz"]
    caplog.set_level(logging.INFO, logger="cafs.store.pathinfos.nix_http")
    async with serving(binary_cache.root) as served, store_over(served.url()) as services:
        await services.path_infos.get(entry.path.digest)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"downloading the NAR of {entry.path.absolute}") for m in messages)
    assert any(
        m.startswith(f"downloaded the NAR of {entry.path.absolute}: {len(entry.nar)} bytes")
        and "MB/s" in m
        for m in messages
    ), messages


async def test_behind_a_cache_the_near_side_keeps_what_far_returned(
    binary_cache: BinaryCache, tmp_path: Path
) -> None:
    entry = binary_cache.entries["gzip"]
    near = f"sqlite://{tmp_path / 'near.sqlite'}"
    async with serving(binary_cache.root) as served:
        url = f"cache://?near={near}&far={served.url()}"
        async with store_over(url) as services:
            assert await services.path_infos.get(entry.path.digest) == entry.info
            assert await services.path_infos.get(entry.path.digest) == entry.info
            assert len(served.requests) == 2
    # Percent-encoded far URL, as a shell user may write it.
    async with serving(binary_cache.root) as served:
        url = f"cache://?near=lru://?capacity=10&far={quote(served.url(), safe='')}"
        async with store_over(url) as services:
            assert await services.path_infos.get(entry.path.digest) == entry.info


# -- signatures ----------------------------------------------------------------------------


async def test_unsigned_paths_are_accepted_without_trusted_keys(binary_cache: BinaryCache) -> None:
    entry = binary_cache.entries["unsigned"]
    async with serving(binary_cache.root) as served, store_over(served.url(keys=None)) as services:
        assert await services.path_infos.get(entry.path.digest) == entry.info


async def test_one_good_signature_among_several_is_enough(binary_cache: BinaryCache) -> None:
    entry = binary_cache.entries["two-keys"]
    async with (
        serving(binary_cache.root) as served,
        store_over(served.url(keys=(OTHER_KEY, KEY))) as services,
    ):
        assert await services.path_infos.get(entry.path.digest) == entry.info
        async with store_over(served.url(keys=(KEY,))) as services:
            assert await services.path_infos.get(entry.path.digest) == entry.info


@pytest.mark.parametrize(
    ("label", "match"),
    [
        ("unsigned", "is not signed, and trusted-public-keys .*cafs-test-cache-1"),
        ("other-key", r"signed only by untrusted keys \(someone-else-1; "),
        ("forged", "signature of .* by cafs-test-cache-1 does not verify"),
    ],
)
async def test_untrusted_narinfos_are_refused_and_nothing_is_kept(
    binary_cache: BinaryCache, tmp_path: Path, label: str, match: str
) -> None:
    entry = binary_cache.entries[label]
    near = f"sqlite://{tmp_path / 'near.sqlite'}"
    async with (
        serving(binary_cache.root) as served,
        store_over(f"cache://?near={near}&far={served.url()}") as services,
    ):
        await expect_refused(services, entry.path, match)
        assert served.requests == [f"/{entry.narinfo_name}"]  # no NAR downloaded
    async with store_over(near) as services:
        assert await services.path_infos.get(entry.path.digest) is None


# -- bad data ------------------------------------------------------------------------------


def flip_a_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("label", "damage", "match"),
    [
        ("none", "flip", "the NAR from .* has sha256:.*, the NarHash of .* is sha256:"),
        ("xz", "flip", "the NAR of .* is corrupt: the xz stream is corrupt"),
        ("none", "truncate", "the NAR of .* is corrupt: NAR is truncated"),
        ("zstd", "truncate", "is corrupt"),
        ("bzip2", "append", "is larger than the FileSize of .*: refused"),
    ],
)
async def test_a_damaged_nar_is_refused_and_nothing_is_kept(
    binary_cache: BinaryCache, tmp_path: Path, label: str, damage: str, match: str
) -> None:
    cache = binary_cache.copy(tmp_path / "cache")
    entry = cache.entries[label]
    nar_file = cache.nar_file(label)
    if damage == "flip":
        flip_a_byte(nar_file)
    elif damage == "truncate":
        nar_file.write_bytes(nar_file.read_bytes()[:-100])
    else:
        nar_file.write_bytes(nar_file.read_bytes() + b"more")
    near = f"sqlite://{tmp_path / 'near.sqlite'}"
    async with (
        serving(cache.root) as served,
        store_over(f"cache://?near={near}&far={served.url()}") as services,
    ):
        await expect_refused(services, entry.path, match)
    async with store_over(near) as services:
        assert await services.path_infos.get(entry.path.digest) is None


def edit_narinfo(path: Path, field: str, value: str | None) -> None:
    """Set (or drop, for None) one field; signatures go (the fingerprint may change)."""
    lines = [
        line for line in path.read_text().splitlines() if not line.startswith((f"{field}:", "Sig:"))
    ]
    if value is not None:
        lines.append(f"{field}: {value}")
    path.write_text("".join(line + "\n" for line in lines))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("NarSize", "1000", r"larger than the NarSize of .* \(1000 bytes\): refused"),
        ("NarSize", None, "missing required field"),
        ("NarHash", f"sha256:{'0' * 52}", "the NarHash of .* is sha256:0{52}: refused"),
        ("FileHash", f"sha256:{'1' * 52}", "the FileHash of .* is sha256:1{52}: refused"),
        ("FileSize", "999999999", "the FileSize of .* is 999999999: refused"),
        ("Compression", "lz4", "unsupported compression 'lz4'"),
    ],
)
async def test_a_narinfo_that_does_not_match_its_nar_is_refused(
    binary_cache: BinaryCache, tmp_path: Path, field: str, value: str | None, match: str
) -> None:
    cache = binary_cache.copy(tmp_path / "cache")
    entry = cache.entries["xz"]
    edit_narinfo(cache.narinfo("xz"), field, value)
    async with serving(cache.root) as served, store_over(served.url(keys=None)) as services:
        await expect_refused(services, entry.path, match, CafsError)


async def test_a_narinfo_under_another_paths_hash_is_refused(
    binary_cache: BinaryCache, tmp_path: Path
) -> None:
    cache = binary_cache.copy(tmp_path / "cache")
    entry = cache.entries["xz"]
    shutil.copy(cache.narinfo("xz"), cache.root / f"{nixbase32.encode(ABSENT.digest)}.narinfo")
    async with serving(cache.root) as served, store_over(served.url()) as services:
        match = f"describes {re.escape(entry.path.absolute)}, not the path with hash"
        await expect_refused(services, ABSENT, match)
    assert len(served.requests) == 1


async def test_garbage_instead_of_a_narinfo_is_an_error(
    binary_cache: BinaryCache, tmp_path: Path
) -> None:
    cache = binary_cache.copy(tmp_path / "cache")
    entry = cache.entries["xz"]
    cache.narinfo("xz").write_bytes(b"<html>\xff</html>\n")
    async with serving(cache.root) as served, store_over(served.url()) as services:
        await expect_refused(services, entry.path, "is not UTF-8 text")
    cache.narinfo("xz").write_text("<html>not found</html>\n")
    async with serving(cache.root) as served, store_over(served.url()) as services:
        await expect_refused(services, entry.path, "not a valid narinfo: .*expected 'Key: value'")


async def test_a_missing_nar_file_is_an_error(binary_cache: BinaryCache, tmp_path: Path) -> None:
    cache = binary_cache.copy(tmp_path / "cache")
    entry = cache.entries["zstd"]
    cache.nar_file("zstd").unlink()
    async with serving(cache.root) as served, store_over(served.url()) as services:
        await expect_refused(services, entry.path, r"\.nar\.zst: HTTP 404", StorageError)


async def test_a_connection_cut_mid_nar_is_an_error(binary_cache: BinaryCache) -> None:
    entry = binary_cache.entries["none"]
    async with serving(binary_cache.root) as served, store_over(served.url("/cut/")) as services:
        await expect_refused(services, entry.path, r"failed after [0-9]+ bytes", StorageError)


async def test_a_stalled_download_times_out(binary_cache: BinaryCache) -> None:
    entry = binary_cache.entries["none"]
    async with serving(binary_cache.root) as served:
        url = served.url("/stall/")
        services = StoreServices.from_addrs("memory://", "memory://", "memory://")
        address = parse_address(url, urlsplit(url))
        service = NixHttpPathInfoService(
            address, services.blobs, services.directories, read_timeout=0.5
        )
        try:
            with pytest.raises(StorageError, match=r"failed after [0-9]+ bytes"):
                await asyncio.wait_for(service.get(entry.path.digest), 20)
        finally:
            await service.close()
            await services.close()


# -- what the service does not do ----------------------------------------------------------


async def test_put_and_list_are_refused(binary_cache: BinaryCache) -> None:
    entry = binary_cache.entries["xz"]
    async with serving(binary_cache.root) as served, store_over(served.url()) as services:
        with pytest.raises(ValidationError, match="put is not supported"):
            await services.path_infos.put(entry.info)
        with pytest.raises(ValidationError, match="listing its paths is not supported"):
            async for _ in services.path_infos.list():
                pass
        assert await services.path_infos.calculate_nar(entry.info.node) is None
    assert served.requests == []


# -- URLs ----------------------------------------------------------------------------------


def test_url_parts() -> None:
    keys = (KEY.verifying_key, OTHER_KEY.verifying_key)
    k1, k2 = (k.to_nix_string() for k in keys)
    cases = {
        "nix+http://h": ("http://h/", None),
        "nix+https://h:8443/a/b": ("https://h:8443/a/b/", None),
        "nix+http://h/a/b/": ("http://h/a/b/", None),
        f"nix+http://h?trusted-public-keys={k1}%20{k2}": ("http://h/", keys),
        f"nix+http://h/?trusted-public-keys={k1}&trusted-public-keys={k2}": ("http://h/", keys),
        f"nix+http://u:p@h/?trusted-public-keys={quote(k1)}": ("http://u:p@h/", keys[:1]),
    }
    # A key with "+" in its base64: written as is or as %2B, it is the same key.
    plus = next(
        key.verifying_key
        for seed in range(256)
        if "+" in (key := SigningKey("plus-1", bytes([seed]) * 32)).verifying_key.to_nix_string()
    )
    text = plus.to_nix_string()
    cases[f"nix+http://h?trusted-public-keys={text}"] = ("http://h/", (plus,))
    cases[f"nix+http://h?trusted-public-keys={quote(text)}"] = ("http://h/", (plus,))
    for url, (base, trusted) in cases.items():
        address = parse_address(url, urlsplit(url))
        assert (address.base_url, address.trusted_keys) == (base, trusted), url
        assert address.deadline == 30.0
    assert (
        parse_address("nix+http://h/?deadline=2.5", urlsplit("nix+http://h/?deadline=2.5")).deadline
        == 2.5
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("nix+http://h/?priority=30", r"unsupported option\(s\): priority \(only trusted"),
        ("nix+http://h/?a=1&b=2&trusted-public-keys=", r"unsupported option\(s\): a, b"),
        ("nix+http://h/?trusted-public-keys=", "trusted-public-keys is given without a key"),
        ("nix+http://h/?trusted-public-keys=nocolon", "trusted-public-keys: .*name:base64"),
        ("nix+http://h/?trusted-public-keys=k:AAAA", "trusted-public-keys: "),
        ("nix+http:///path", "needs a host"),
        ("nix+http://h/#frag", "takes no #fragment"),
        ("nix+http://h/?deadline=0", "deadline must be a number of seconds above 0"),
        ("nix+http://h/?deadline=soon", "deadline must be"),
        ("nix+http://h:notaport/", "Port could not be cast"),
        ("cache://?near=memory://&far=nix+http://h/?x=1", r"far: .*unsupported option\(s\): x"),
    ],
)
def test_bad_urls(url: str, reason: str) -> None:
    castore = StoreServices.from_addrs("memory://", "memory://", "memory://")
    with pytest.raises(InvalidAddressError, match=reason) as raised:
        path_info_service_from_addr(url, castore)
    assert url in str(raised.value)


def test_without_castore_services_the_scheme_is_refused() -> None:
    with pytest.raises(InvalidAddressError, match="needs blob and directory services"):
        path_info_service_from_addr("nix+https://cache.example")


def test_the_cli_turns_a_bad_url_into_one_line(tmp_path: Path) -> None:
    result = cafs(
        "path-info",
        f"/nix/store/{ABSENT.basename}",
        "--path-info-service-addr",
        "nix+http://127.0.0.1:1/?colour=blue",
        home=tmp_path / "home",
        check=False,
    )
    assert result.returncode == 4  # invalid input: a bad URL
    [line] = result.stderr.splitlines()
    assert "unsupported option(s): colour" in line


# -- cafs's own binary cache -----------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_reads_what_cafs_nar_bridge_serves(
    binary_cache: BinaryCache, tmp_path: Path, compression: str
) -> None:
    """nar-bridge's NAR URLs (a node and ``?narsize=N``) resolve against the cache URL."""
    served_home, reading_home = tmp_path / "served", tmp_path / "reading"
    source = binary_cache.entries["none"].source
    [path] = cafs("import", str(source), home=served_home).stdout.split()
    nar = cafs_bytes("nar", "dump", path, home=served_home)
    secret = tmp_path / "secret"
    secret.write_text(KEY.to_nix_string())
    flags = ("--signing-key-file", str(secret), "--compression", compression)
    with running_bridge(served_home, *flags) as bridge:
        url = bridge.url.replace("http://", "nix+http://") + "?trusted-public-keys="
        url += KEY.verifying_key.to_nix_string()
        assert cafs_bytes("nar", "dump", path, "--path-info-service-addr", url,
                          home=reading_home) == nar  # fmt: skip
        other = url.replace(KEY.name, OTHER_KEY.name)
        refused = cafs("nar", "dump", path, "--path-info-service-addr", other,
                       home=reading_home, check=False)  # fmt: skip
    assert refused.returncode == 5  # corrupt: what the cache sent cannot be trusted
    assert "signed only by untrusted keys" in refused.stderr, refused.stderr


# -- a mount over a binary cache -----------------------------------------------------------


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``directory``: its ``host:port``; stopped by PID."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"port (\d+)", line)
        assert found, f"http.server said {line!r}"
        yield f"127.0.0.1:{found.group(1)}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def assert_same_tree(source: Path, served: Path) -> int:
    """Every node of ``source`` is in ``served`` with the same kind, bytes, target and x bit.

    Returns the number of file bytes compared.
    """
    compared = 0
    for root, dirs, files in os.walk(source):
        relative = Path(root).relative_to(source)
        assert sorted(os.listdir(served / relative)) == sorted(dirs + files), relative
        for name in dirs + files:
            ours, theirs = Path(root) / name, served / relative / name
            mode = os.lstat(ours).st_mode
            if stat.S_ISLNK(mode):
                assert os.readlink(theirs) == os.readlink(ours), theirs
            elif stat.S_ISREG(mode):
                data = ours.read_bytes()
                assert theirs.read_bytes() == data, theirs
                assert bool(os.stat(theirs).st_mode & 0o100) == bool(mode & 0o100), theirs
                compared += len(data)
    return compared


def assert_same_node(source: Path, served: Path) -> int:
    """A file, symlink or tree at ``served`` equal to ``source``; the file bytes compared."""
    if source.is_symlink():
        assert os.readlink(served) == os.readlink(source), served
        return 0
    if source.is_file():
        data = source.read_bytes()
        assert served.read_bytes() == data, served
        assert bool(os.stat(served).st_mode & 0o100) == bool(os.stat(source).st_mode & 0o100)
        return len(data)
    return assert_same_tree(source, served)


def assert_serves(entry: Entry, mount: Path) -> None:
    compared = assert_same_node(entry.source, mount / entry.path.basename)
    assert compared > 2 * 1024 * 1024 or not entry.source.is_dir()


def test_mount_over_a_binary_cache(binary_cache: BinaryCache, tmp_path: Path) -> None:
    """Every path byte for byte; refusals are EIO; the near side serves once the cache is gone."""
    cache = binary_cache.copy(tmp_path / "cache")
    flip_a_byte(cache.nar_file("gzip"))
    good = ["none", "xz", "bzip2-by-default", "single", "link"]
    state = tmp_path / "state"
    state.mkdir()
    key = quote(KEY.verifying_key.to_nix_string(), safe=":")
    home = tmp_path / "home"

    def flags(host: str) -> tuple[str, ...]:
        far = f"nix+http://{host}/?trusted-public-keys={key}"
        return (
            "--blob-service-addr",
            f"objectstore+file://{state / 'objects'}",
            "--directory-service-addr",
            f"sqlite://{state / 'directories.sqlite'}",
            "--path-info-service-addr",
            f"cache://?near=sqlite://{state / 'pathinfo.sqlite'}&far={far}",
        )

    with http_server(cache.root) as host, mounted_store(tmp_path / "mnt", home, *flags(host)) as m:
        for label in good:
            assert_serves(cache.entries[label], m.path)
        for label in ("gzip", "unsigned", "other-key"):
            with pytest.raises(OSError, match=r"\[Errno 5\]"):
                os.lstat(m.path / cache.entries[label].path.basename)
        with pytest.raises(FileNotFoundError):
            os.lstat(m.path / ABSENT.basename)
        log = m.stderr()
    assert "the NAR of" in log and "is corrupt" in log, log
    assert "is not signed" in log and "signed only by untrusted keys" in log, log
    assert log.count("downloaded the NAR of") == len(good), log

    # The cache is gone: what was fetched is served from near.
    with mounted_store(tmp_path / "mnt2", home, *flags("127.0.0.1:1")) as m:
        for label in good:
            assert_serves(cache.entries[label], m.path)
        with pytest.raises(OSError, match=r"\[Errno 5\]"):
            os.lstat(m.path / cache.entries["gzip"].path.basename)
        log = m.stderr()
    assert "downloading" not in log, log

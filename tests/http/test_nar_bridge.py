"""nar-bridge over a real socket: what a Nix client asks for, and what it uploads.

The bridge runs in-process on 127.0.0.1 (aiohttp's test server, a real
listening socket) over memory services; requests are made with a real HTTP
client. The real Nix against the real command is in tests/compat.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import zstandard
from aiohttp.test_utils import TestServer

from cafs.castore.blobs.plain import PlainFileBlobService, PlainFiles
from cafs.http.nar_bridge import BridgeOptions, NarBridge
from cafs.store import nixbase32
from cafs.store.importer import import_path
from cafs.store.nar.render import render_nar
from cafs.store.narinfo import NarInfo
from cafs.store.pathinfo import PathInfo
from cafs.store.services import StoreServices
from cafs.store.signatures import SigningKey

SECRET = SigningKey.generate("cafs-test-1")


@dataclass
class Bridge:
    url: str
    http: aiohttp.ClientSession
    services: StoreServices
    info: PathInfo
    nar: bytes

    async def get(self, path: str, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
        async with self.http.get(self.url + path, **kwargs) as response:  # type: ignore[arg-type]
            return response.status, dict(response.headers), await response.read()

    async def put(self, path: str, data: bytes) -> tuple[int, str]:
        async with self.http.put(self.url + path, data=data) as response:
            return response.status, await response.text()


def make_tree(root: Path) -> Path:
    rng = random.Random(5)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "hello").write_bytes(b"Hello World!\n")
    (root / "sub" / "big").write_bytes(rng.randbytes(3 * 1024 * 1024 + 17))
    (root / "sub" / "deeper" / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "sub" / "deeper" / "tool").chmod(0o755)
    (root / "link").symlink_to("sub/big")
    for i in range(50):
        (root / "sub" / f"small{i}").write_bytes(rng.randbytes(i * 37))
    return root


async def nar_of(info: PathInfo, services: StoreServices) -> bytes:
    return b"".join([p async for p in render_nar(info.node, services.blobs, services.directories)])


@pytest.fixture
async def bridge_factory(
    tmp_path: Path,
) -> AsyncIterator[object]:
    started: list[tuple[TestServer, aiohttp.ClientSession, StoreServices]] = []

    async def start(
        options: BridgeOptions | None = None, empty: bool = False, plain: Path | None = None
    ) -> Bridge:
        services = StoreServices.from_addrs("memory://", "memory://", "memory://")
        await services.connect()
        if plain is not None:
            # As `cafs nar-bridge` serves: large blobs from plain copies, made as it goes.
            services.blobs = PlainFileBlobService(services.blobs, PlainFiles(plain, 1 << 30))
            await services.blobs.connect()
        info = None
        nar = b""
        if not empty:
            tree = make_tree(tmp_path / f"tree{len(started)}")
            info = await import_path(str(tree), services)
            nar = await nar_of(info, services)
        server = TestServer(NarBridge(services, options).application(), host="127.0.0.1")
        await server.start_server()
        http = aiohttp.ClientSession()
        started.append((server, http, services))
        return Bridge(str(server.make_url("")), http, services, info, nar)  # type: ignore[arg-type]

    yield start
    for server, http, services in started:
        await http.close()
        await server.close()
        await services.close()


def narinfo_path(info: PathInfo) -> str:
    return f"/{nixbase32.encode(info.store_path.digest)}.narinfo"


async def narinfo_of(bridge: Bridge) -> NarInfo:
    status, headers, body = await bridge.get(narinfo_path(bridge.info))
    assert status == 200 and headers["Content-Type"].startswith("text/x-nix-narinfo")
    return NarInfo.parse(body.decode())


# -- reading ---------------------------------------------------------------------------


async def test_cache_info_and_narinfo(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = await bridge_factory(BridgeOptions(priority=17))
    status, headers, body = await bridge.get("/nix-cache-info")
    assert status == 200 and headers["Content-Type"].startswith("text/x-nix-cache-info")
    assert body.decode().splitlines() == [
        "StoreDir: /nix/store",
        "WantMassQuery: 1",
        "Priority: 17",
    ]
    narinfo = await narinfo_of(bridge)
    info = bridge.info
    assert narinfo.store_path == info.store_path
    assert (narinfo.nar_size, narinfo.nar_hash.digest) == (info.nar_size, info.nar_sha256)
    assert narinfo.compression is None and narinfo.file_size == info.nar_size
    assert narinfo.ca == info.ca and narinfo.signatures == []
    assert narinfo.url.startswith("nar/tvix-castore/") and narinfo.url.endswith(
        f"?narsize={info.nar_size}"
    )
    async with bridge.http.head(bridge.url + narinfo_path(info)) as response:
        assert response.status == 200 and await response.read() == b""


async def test_narinfo_is_signed_on_the_fly(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = await bridge_factory(BridgeOptions(signing_key=SECRET))
    narinfo = await narinfo_of(bridge)
    assert [s.name for s in narinfo.signatures] == ["cafs-test-1"]
    assert narinfo.verify([SECRET.verifying_key])
    assert not narinfo.verify([SigningKey.generate("cafs-test-1").verifying_key])


async def test_unknown_and_malformed_names_are_404(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = await bridge_factory()
    for path in ("/" + "0" * 32 + ".narinfo", "/short.narinfo", "/nar/whatever.nar", "/x"):
        status, _, body = await bridge.get(path)
        assert status == 404, path
        assert len(body.decode().strip().splitlines()) <= 1


async def test_the_nar_whole_and_by_range(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = await bridge_factory()
    url = "/" + (await narinfo_of(bridge)).url
    nar = bridge.nar
    status, headers, body = await bridge.get(url)
    assert status == 200 and body == nar
    assert headers["Content-Type"] == "application/x-nix-nar"
    assert int(headers["Content-Length"]) == len(nar) and headers["Accept-Ranges"] == "bytes"
    middle = len(nar) // 2
    cases = {
        "bytes=0-0": (0, 1),  # the first byte
        f"bytes={middle}-{middle + 99_999}": (middle, middle + 100_000),  # the middle
        "bytes=-1": (len(nar) - 1, len(nar)),  # the last byte
        f"bytes={len(nar) - 10}-": (len(nar) - 10, len(nar)),  # open-ended
        f"bytes={len(nar) - 5}-{len(nar) + 1000}": (len(nar) - 5, len(nar)),  # past the end
    }
    for header, (start, end) in cases.items():
        status, headers, body = await bridge.get(url, headers={"Range": header})
        assert status == 206, header
        assert body == nar[start:end], header
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(nar)}", header
    status, headers, _ = await bridge.get(url, headers={"Range": f"bytes={len(nar)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(nar)}"
    async with bridge.http.head(bridge.url + url) as response:
        assert response.status == 200 and response.headers["Content-Length"] == str(len(nar))


async def test_large_files_are_served_from_their_plain_copies(  # type: ignore[no-untyped-def]
    bridge_factory, tmp_path: Path
) -> None:
    bridge = await bridge_factory(plain=tmp_path / "plain")
    url = "/" + (await narinfo_of(bridge)).url
    status, _, body = await bridge.get(url)
    assert status == 200 and body == bridge.nar
    blobs = bridge.services.blobs
    assert isinstance(blobs, PlainFileBlobService)
    await blobs.plain.wait()
    copies = list((tmp_path / "plain").iterdir())
    assert [c.stat().st_size for c in copies] == [3 * 1024 * 1024 + 17]
    status, _, again = await bridge.get(url)
    assert status == 200 and again == bridge.nar
    middle = len(bridge.nar) // 2
    status, _, part = await bridge.get(url, headers={"Range": f"bytes={middle}-{middle + 9999}"})
    assert status == 206 and part == bridge.nar[middle : middle + 10_000]


async def test_nar_urls_that_name_no_node(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = await bridge_factory()
    url = (await narinfo_of(bridge)).url
    status, _, _ = await bridge.get("/" + url.split("?")[0])  # no narsize
    assert status == 400
    for bad in ("!!!", "AAAA", "Zm9v"):
        status, _, _ = await bridge.get(f"/nar/tvix-castore/{bad}?narsize=1")
        assert status == 404, bad
    # A narsize that is not the NAR's: refused, never sent cut short or too long.
    size = len(bridge.nar)
    for lie in (size - 1, size + 1):
        wrong = "/" + url.replace(f"narsize={size}", f"narsize={lie}")
        for headers in ({}, {"Range": "bytes=0-9"}):
            status, _, body = await bridge.get(wrong, headers=headers)
            assert status == 400 and b"not " + str(lie).encode() in body, (lie, headers)


async def test_zstd_serving(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    bridge = await bridge_factory(BridgeOptions(compression="zstd"))
    narinfo = await narinfo_of(bridge)
    assert narinfo.compression == "zstd" and ".zst?" in narinfo.url
    status, _, body = await bridge.get("/" + narinfo.url)
    assert status == 200
    assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == bridge.nar


# -- uploads (nix copy --to) ---------------------------------------------------------------


def compress(nar: bytes, how: str) -> tuple[bytes, str]:
    data = {
        "none": lambda: nar,
        "xz": lambda: lzma.compress(nar),
        "bzip2": lambda: bz2.compress(nar),
        "zstd": lambda: zstandard.ZstdCompressor().compress(nar),
        "gzip": lambda: gzip.compress(nar),
    }[how]()
    # Nix 2.8 names a gzip upload plain ".nar": the bridge goes by the first bytes.
    suffix = {"none": "", "xz": ".xz", "bzip2": ".bz2", "zstd": ".zst", "gzip": ""}[how]
    return data, f"nar/{nixbase32.encode(hashlib.sha256(data).digest())}.nar{suffix}"


def upload_narinfo(info: PathInfo, url: str, data: bytes, how: str) -> str:
    narinfo = info.to_narinfo(url)
    narinfo.compression = None if how == "none" else how
    narinfo.file_size = len(data)
    from cafs.store.hashes import NixHash

    narinfo.file_hash = NixHash("sha256", hashlib.sha256(data).digest())
    return narinfo.render()


async def test_uploads_are_refused_unless_allowed(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    source = await bridge_factory()
    target = await bridge_factory(empty=True)
    data, url = compress(source.nar, "none")
    status, text = await target.put("/" + url, data)
    assert status == 403 and "--allow-put" in text
    status, _ = await target.put(narinfo_path(source.info), b"StorePath: x\n")
    assert status == 403
    assert [i async for i in target.services.path_infos.list()] == []


@pytest.mark.parametrize("how", ["none", "xz", "bzip2", "zstd", "gzip"])
async def test_an_upload_is_stored_as_nix_copy_sends_it(bridge_factory, how: str) -> None:  # type: ignore[no-untyped-def]
    source = await bridge_factory()
    target = await bridge_factory(BridgeOptions(allow_put=True), empty=True)
    data, url = compress(source.nar, how)
    assert await target.put("/" + url, data) == (200, "")
    narinfo = upload_narinfo(source.info, url, data, how)
    assert await target.put(narinfo_path(source.info), narinfo.encode()) == (200, "")
    stored = await target.services.path_infos.get(source.info.store_path.digest)
    assert stored is not None and stored.node == source.info.node
    assert await nar_of(stored, target.services) == source.nar
    # And it is served back.
    status, _, body = await target.get("/" + (await narinfo_of(target_with(target, stored))).url)
    assert status == 200 and body == source.nar


def target_with(bridge: Bridge, info: PathInfo) -> Bridge:
    return Bridge(bridge.url, bridge.http, bridge.services, info, bridge.nar)


async def test_bad_uploads_store_no_path(bridge_factory) -> None:  # type: ignore[no-untyped-def]
    source = await bridge_factory()
    target = await bridge_factory(BridgeOptions(allow_put=True), empty=True)
    nar = source.nar
    data, url = compress(nar, "none")
    # The narinfo before its NAR.
    narinfo = upload_narinfo(source.info, url, data, "none")
    status, text = await target.put(narinfo_path(source.info), narinfo.encode())
    assert status == 400 and "send it first" in text
    # A NAR that does not hash to its name.
    wrong = "nar/" + nixbase32.encode(hashlib.sha256(b"other").digest()) + ".nar"
    status, text = await target.put("/" + wrong, data)
    assert status == 400 and "hashes to" in text
    # Truncated and malformed NARs.
    for broken in (nar[: len(nar) // 2], b"not a nar at all"):
        broken_data, broken_url = compress(broken, "none")
        status, text = await target.put("/" + broken_url, broken_data)
        assert status == 400 and len(text.strip().splitlines()) == 1, text
    # A compression cafs cannot read (lz4, as Nix can write it).
    lz4 = b"\x04\x22\x4d\x18" + bytes(64)
    lz4_url = "nar/" + nixbase32.encode(hashlib.sha256(lz4).digest()) + ".nar.lz4"
    status, text = await target.put("/" + lz4_url, lz4)
    assert status == 400 and "compression=xz" in text
    # A corrupt xz stream.
    xz_data, _ = compress(nar, "xz")
    corrupt = xz_data[:100] + bytes([xz_data[100] ^ 0xFF]) + xz_data[101:]
    corrupt_url = "nar/" + nixbase32.encode(hashlib.sha256(corrupt).digest()) + ".nar.xz"
    status, _ = await target.put("/" + corrupt_url, corrupt)
    assert status == 400
    # The NAR arrives; narinfos that disagree with it are refused.
    assert (await target.put("/" + url, data))[0] == 200
    info = source.info
    bad_size = narinfo.replace(f"NarSize: {info.nar_size}", f"NarSize: {info.nar_size + 1}")
    other_url = narinfo.replace(f"URL: {url}", "URL: nar/elsewhere.nar")
    for text_narinfo in (bad_size, other_url, "garbage", narinfo.replace("StorePath", "Store")):
        status, reason = await target.put(narinfo_path(info), text_narinfo.encode())
        assert status == 400, reason
    # A narinfo under another path's name.
    other = "/" + "1" * 32 + ".narinfo"
    assert (await target.put(other, narinfo.encode()))[0] == 400
    assert [i async for i in target.services.path_infos.list()] == []
    # The good one still goes in.
    assert await target.put(narinfo_path(info), narinfo.encode()) == (200, "")
    assert await target.services.path_infos.get(info.store_path.digest) is not None

"""NARs: the wire layout proven against the vectors, rendering, ingestion and malformed input.

The NARs here are built by a small encoder written from the grammar alone
(``nar_string`` and friends below), never by ``cafs.store.nar.format``, so
a mistake in the code under test cannot hide in the expected bytes.
"""

from __future__ import annotations

import hashlib
import random
import re
import struct
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cafs.castore.blobs.base import BlobService
from cafs.castore.blobs.objectstore import chunk_key
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directories.grpc import GrpcDirectoryService
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from cafs.errors import CafsError, ClosureError, IntegrityError, NarError
from cafs.store import nixbase32
from cafs.store.nar.ingest import ByteSource, IngestedNar, bytes_source, file_source, ingest_nar
from cafs.store.nar.render import calculate_nar, nar_size_of, render_nar
from tests.fixtures import (
    DIRECTORY_COMPLICATED,
    DIRECTORY_WITH_KEEP,
    EMPTY_DIGEST,
    HELLOWORLD_BLOB,
    HELLOWORLD_DIGEST,
)

# -- an independent NAR encoder, from the grammar ---------------------------------------


def nar_string(data: bytes) -> bytes:
    """u64 little-endian length, the bytes, zero padding to a multiple of 8."""
    return struct.pack("<Q", len(data)) + data + bytes(-len(data) % 8)


def tokens(*words: bytes) -> bytes:
    return b"".join(nar_string(w) for w in words)


def regular(data: bytes, executable: bool = False) -> bytes:
    marker = tokens(b"executable", b"") if executable else b""
    return tokens(b"(", b"type", b"regular") + marker + tokens(b"contents", data, b")")


def symlink(target: bytes) -> bytes:
    return tokens(b"(", b"type", b"symlink", b"target", target, b")")


def entry(name: bytes, node: bytes) -> bytes:
    return tokens(b"entry", b"(", b"name", name, b"node") + node + tokens(b")")


def directory(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A directory node; entries are written in the order given (callers sort)."""
    body = b"".join(entry(name, node) for name, node in entries)
    return tokens(b"(", b"type", b"directory") + body + tokens(b")")


def archive(node: bytes) -> bytes:
    return nar_string(b"nix-archive-1") + node


# -- the fixtures of vectors.md §3 ------------------------------------------------------

SOMEWHERE = b"/nix/store/somewhereelse"
ONE_BYTE = bytes.fromhex("01")
COMPLICATED_DIGEST = "424a7f6ce08d805d15b428062faae96299a1675d708c3a39261afe38cdd04feb"


@dataclass(frozen=True)
class NarFixture:
    nar: bytes
    size: int
    sha256: str
    nixbase32: str
    node: Node


FIXTURES = {
    "symlink": NarFixture(
        archive(symlink(SOMEWHERE)),
        136,
        "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1",
        "1wcwacrb5q36hpsx1shk0dkm26hwbmqmgi0nm973h9jqkdz3jz89",
        SymlinkNode(SOMEWHERE),
    ),
    "helloworld": NarFixture(
        archive(regular(HELLOWORLD_BLOB)),
        128,
        "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040",
        "0h40zg6hakjv951nyhdad7mv9za56m3za5gnpiw5s1hbwcxzdrq3",
        FileNode(HELLOWORLD_DIGEST, 12),
    ),
    "complicated": NarFixture(
        archive(
            directory(
                [
                    (b".keep", regular(b"")),
                    (b"aa", symlink(SOMEWHERE)),
                    (b"keep", directory([(b".keep", regular(b""))])),
                ]
            )
        ),
        840,
        "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a",
        "06li2smqgskxxr291x1cgzf61rzm7c8f93bisnglq0nzm1wj5mgb",
        DirectoryNode(Digest(bytes.fromhex(COMPLICATED_DIGEST)), 8),
    ),
    "emptydirectory": NarFixture(
        archive(directory([])),
        96,
        "a50a5ab6d992f5598edd92105059fae9acfc192981e08bd88534c2167e92526a",
        "0sjjj9z1dhilhpc8pq4154czrb79z9cm044jvn75kxcjv6v5l2m5",
        DirectoryNode(EMPTY_DIGEST, 0),
    ),
    "onebyteregular": NarFixture(
        archive(regular(ONE_BYTE)),
        120,
        "730850a811259dbf3a68dc2ee87a79aa6cae9f71375edf396f9d7a91fbe9134d",
        "0k8kx7xr2ylxdwwxypipf6gswv5ag5xfhbnwd0xbz79526l5023k",
        FileNode(Digest.of(ONE_BYTE), 1),
    ),
}
COMPLICATED_NAR = FIXTURES["complicated"].nar


async def seed_fixtures(blobs: BlobService, directories: DirectoryService) -> None:
    """The blobs and directories behind the fixtures' castore nodes."""
    for data in (b"", HELLOWORLD_BLOB, ONE_BYTE):
        await blobs.put(data)
    for d in (Directory(), DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED):
        await directories.put(d)


async def render(node: Node, blobs: BlobService, directories: DirectoryService) -> bytes:
    return b"".join([piece async for piece in render_nar(node, blobs, directories)])


def memory_services() -> tuple[BlobService, DirectoryService]:
    return blob_service_from_addr("memory://"), directory_service_from_addr("memory://")


def pieces_source(data: bytes, most: int) -> ByteSource:
    """A source that hands out at most ``most`` bytes per read (stresses buffer edges)."""
    inner = bytes_source(data)

    async def read(n: int) -> bytes:
        return await inner(min(n, most))

    return read


# -- the layout and the known answers ---------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_encoder_reproduces_the_vector_fixtures(name: str) -> None:
    fixture = FIXTURES[name]
    assert len(fixture.nar) == fixture.size
    sha = hashlib.sha256(fixture.nar).digest()
    assert sha.hex() == fixture.sha256
    assert nixbase32.encode(sha) == fixture.nixbase32


def test_fixture_nodes_match_the_castore_vectors() -> None:
    assert DIRECTORY_COMPLICATED.as_node() == FIXTURES["complicated"].node
    assert Directory().as_node() == FIXTURES["emptydirectory"].node


async def test_render_fixtures_on_every_backend(
    blob_service: BlobService, directory_service: DirectoryService
) -> None:
    await seed_fixtures(blob_service, directory_service)
    for name, fixture in FIXTURES.items():
        assert await render(fixture.node, blob_service, directory_service) == fixture.nar, name
        size, sha256 = await calculate_nar(fixture.node, blob_service, directory_service)
        assert (size, sha256.hex()) == (fixture.size, fixture.sha256), name


async def test_calculate_nar_answers_of_vectors_section_9() -> None:
    blobs, directories = memory_services()
    await seed_fixtures(blobs, directories)
    # The §9 answers (abbreviated there) in full, from the §3 table.
    answers: list[tuple[Node, int, str]] = [
        (
            FileNode(HELLOWORLD_DIGEST, 12),
            128,
            "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040",
        ),
        (
            SymlinkNode(SOMEWHERE),
            136,
            "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1",
        ),
        (
            DIRECTORY_COMPLICATED.as_node(),
            840,
            "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a",
        ),
    ]
    seen: list[int] = []
    for node, size, sha256 in answers:
        got = await calculate_nar(node, blobs, directories, progress=seen.append)
        assert got == (size, bytes.fromhex(sha256))
    assert sum(seen) == 128 + 136 + 840  # progress hears every byte


@pytest.mark.parametrize("name", FIXTURES)
async def test_ingest_fixtures_on_every_backend(
    name: str, blob_service: BlobService, directory_service: DirectoryService
) -> None:
    fixture = FIXTURES[name]
    result = await ingest_nar(bytes_source(fixture.nar), blob_service, directory_service)
    assert result == IngestedNar(fixture.node, fixture.size, bytes.fromhex(fixture.sha256))
    assert await render(result.node, blob_service, directory_service) == fixture.nar


async def test_ingested_complicated_is_the_tvix_directory() -> None:
    blobs, directories = memory_services()
    result = await ingest_nar(bytes_source(COMPLICATED_NAR), blobs, directories)
    assert result.node == DirectoryNode(Digest(bytes.fromhex(COMPLICATED_DIGEST)), 8)
    assert await directories.get(result.node.digest) == DIRECTORY_COMPLICATED
    assert await directories.get(DIRECTORY_WITH_KEEP.digest) == DIRECTORY_WITH_KEEP


async def test_ingest_from_reads_of_every_size() -> None:
    for most in (1, 3, 8, 13, 100):
        blobs, directories = memory_services()
        result = await ingest_nar(pieces_source(COMPLICATED_NAR, most), blobs, directories)
        assert result.node == FIXTURES["complicated"].node
        assert result.nar_size == 840


async def test_file_source_over_a_real_file(tmp_path: Path) -> None:
    big = random.Random(21).randbytes(2 * 1024 * 1024 + 5)  # more than one 1 MiB read
    nar = archive(directory([(b"big", regular(big, True)), (b"small", regular(b"s"))]))
    path = tmp_path / "tree.nar"
    path.write_bytes(nar)
    blobs, directories = memory_services()
    with path.open("rb") as f:
        result = await ingest_nar(file_source(f), blobs, directories)
    assert result.nar_size == len(nar)
    assert result.nar_sha256 == hashlib.sha256(nar).digest()
    assert await blobs.read_all(Digest.of(big)) == big
    assert await render(result.node, blobs, directories) == nar
    # A file holding trailing bytes after the archive is refused like any source.
    path.write_bytes(nar + b"\0" * 8)
    with path.open("rb") as f, pytest.raises(NarError, match="data follows"):
        await ingest_nar(file_source(f), *memory_services())


# -- rendering errors -------------------------------------------------------------------

LARGE = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)  # several object-store chunks


@pytest.mark.parametrize(
    ("claimed", "message"),
    [
        (42, "holds 12 bytes, fewer than the 42"),  # CASTORE_NODE_TOO_BIG
        (2, "holds 12 bytes, more than the 2"),  # CASTORE_NODE_TOO_SMALL
        (0, "holds 12 bytes, more than the 0"),
    ],
)
async def test_file_node_size_that_lies_is_an_error(
    blob_service: BlobService, claimed: int, message: str
) -> None:
    await blob_service.put(HELLOWORLD_BLOB)
    directories = directory_service_from_addr("memory://")
    with pytest.raises(NarError, match=message):
        await render(FileNode(HELLOWORLD_DIGEST, claimed), blob_service, directories)
    # The same lie inside a directory.
    inside = Directory([(b"f", FileNode(HELLOWORLD_DIGEST, claimed))])
    await directories.put(inside)
    with pytest.raises(NarError, match=message):
        await render(inside.as_node(), blob_service, directories)


@pytest.mark.parametrize("delta", [-1, 1])
async def test_large_file_node_size_that_lies_is_an_error(
    blob_service: BlobService, delta: int
) -> None:
    digest = await blob_service.put(LARGE)
    directories = directory_service_from_addr("memory://")
    with pytest.raises(NarError, match=f"holds {len(LARGE)} bytes"):
        await calculate_nar(FileNode(digest, len(LARGE) + delta), blob_service, directories)


async def test_missing_blob_is_an_error(blob_service: BlobService) -> None:
    directories = directory_service_from_addr("memory://")
    for node in (FileNode(HELLOWORLD_DIGEST, 12), FileNode(Digest.of(LARGE), len(LARGE))):
        with pytest.raises(NarError, match=re.escape(f"blob {node.digest} not found")):
            await render(node, blob_service, directories)
        holder = Directory([(b"a", SymlinkNode(b"x")), (b"b", node)])
        await directories.put(holder)
        with pytest.raises(NarError, match="not found"):
            await render(holder.as_node(), blob_service, directories)


async def test_missing_directory_is_an_error(directory_service: DirectoryService) -> None:
    blobs = blob_service_from_addr("memory://")
    node = DIRECTORY_COMPLICATED.as_node()
    with pytest.raises(NarError, match=re.escape(f"directory {node.digest} not found")):
        await render(node, blobs, directory_service)
    # The root is there but a child directory is not: an error naming the child.
    # (The closure walk reports the hole as a StorageError, not a NarError.)
    # A daemon refuses such a hole, so it can only be made in a local store.
    if isinstance(directory_service, GrpcDirectoryService):
        with pytest.raises(ClosureError, match="does not have"):
            await directory_service.put(DIRECTORY_COMPLICATED)
        return
    await directory_service.put(DIRECTORY_COMPLICATED)
    with pytest.raises(CafsError, match=re.escape(f"directory {DIRECTORY_WITH_KEEP.digest}")):
        await render(node, blobs, directory_service)


def _corrupt(path: Path, payload: bytes) -> None:
    path.write_bytes(zstandard.ZstdCompressor().compress(payload))


async def test_corrupt_blob_is_an_error_never_bytes(tmp_path: Path) -> None:
    blobs = blob_service_from_addr(f"objectstore+file://{tmp_path}")
    directories = directory_service_from_addr("memory://")
    await blobs.put(HELLOWORLD_BLOB)
    _corrupt(tmp_path / chunk_key(HELLOWORLD_DIGEST), b"Hello World?")
    holder = Directory([(b"hello", FileNode(HELLOWORLD_DIGEST, 12))])
    await directories.put(holder)
    for node in (FileNode(HELLOWORLD_DIGEST, 12), holder.as_node()):
        with pytest.raises(IntegrityError, match="corrupt"):
            await render(node, blobs, directories)
    # A large blob streamed: what is handed out before the error is a prefix of the truth.
    digest = await blobs.put(LARGE)
    chunks = await blobs.chunks(digest)
    assert chunks is not None and len(chunks) > 4
    _corrupt(tmp_path / chunk_key(chunks[3].digest), bytes(chunks[3].size))
    expected = archive(regular(LARGE))
    out = bytearray()
    with pytest.raises(IntegrityError, match="corrupt"):
        async for piece in render_nar(FileNode(digest, len(LARGE)), blobs, directories):
            out += piece
    assert len(out) < len(expected)
    assert expected.startswith(out)


# -- ingest errors ----------------------------------------------------------------------

# A complete sub-directory at the start of the archive: a NAR that fails later
# must not leave it behind in the DirectoryService.
CANARY_DIRECTORY = Directory([(b"f", FileNode(Digest.of(b"x"), 1))])
CANARY = entry(b"a", directory([(b"f", regular(b"x"))]))
ROOT_OPEN = tokens(b"(", b"type", b"directory")


def in_root(*rest: bytes) -> bytes:
    """An archive whose root directory holds the canary, then ``rest``, then closes."""
    return nar_string(b"nix-archive-1") + ROOT_OPEN + CANARY + b"".join(rest) + tokens(b")")


def bad_padding(data: bytes) -> bytes:
    """A NAR string whose padding is not all zeros (``data`` must not be a multiple of 8)."""
    assert len(data) % 8
    return struct.pack("<Q", len(data)) + data + b"\x01" + bytes(-len(data) % 8 - 1)


def huge(length: int) -> bytes:
    return struct.pack("<Q", length) + b"\0" * 24


MALFORMED: dict[str, tuple[bytes, str]] = {
    "bad magic": (
        nar_string(b"nix-archive-2") + ROOT_OPEN + CANARY + tokens(b")"),
        r"expected 'nix-archive-1', found 'nix-archive-2'",
    ),
    "empty input": (b"", "truncated"),
    "wrong keyword for entry": (in_root(tokens(b"entri")), r"expected 'entry' or '\)'"),
    "wrong keyword for type": (
        in_root(tokens(b"entry", b"(", b"name", b"b", b"node", b"(", b"kind", b"regular")),
        r"expected 'type', found 'kind'",
    ),
    "keyword too long": (
        in_root(tokens(b"entry", b"(", b"name", b"b", b"node", b"(", b"type" * 5)),
        r"a keyword of 20 bytes, the limit is 16",
    ),
    "unknown node type": (
        in_root(entry(b"b", tokens(b"(", b"type", b"fifo", b")"))),
        r"expected 'regular' or 'symlink' or 'directory', found 'fifo'",
    ),
    "empty name": (in_root(entry(b"", regular(b"y"))), "name is empty"),
    "name with slash": (in_root(entry(b"b/c", regular(b"y"))), "contains '/'"),
    "name with NUL": (in_root(entry(b"b\0c", regular(b"y"))), "contains a NUL byte"),
    "name dot": (in_root(entry(b".", regular(b"y"))), r"name '\.' is not allowed"),
    "name dotdot": (in_root(entry(b"..", regular(b"y"))), r"name '\.\.' is not allowed"),
    "name of 256 bytes": (
        in_root(entry(b"b" * 256, regular(b"y"))),
        "an entry name in the root of 256 bytes, the limit is 255",
    ),
    "name of 257 bytes": (in_root(entry(b"b" * 257, regular(b"y"))), "of 257 bytes"),
    "entries out of order": (
        in_root(entry(b"c", regular(b"y")), entry(b"b", regular(b"y"))),
        r"entry 'b' is out of order \(after 'c'\)",
    ),
    "duplicate entry": (in_root(entry(b"a", regular(b"y"))), r"entry 'a' is duplicate"),
    "duplicate in a sub-directory": (
        in_root(entry(b"b", directory([(b"x", symlink(b"t")), (b"x", symlink(b"t"))]))),
        r"entry 'b/x' is duplicate",
    ),
    "empty symlink target": (in_root(entry(b"b", symlink(b""))), "symlink target is empty"),
    "symlink target with NUL": (
        in_root(entry(b"b", symlink(b"x\0y"))),
        "symlink target contains a NUL byte",
    ),
    "symlink target of 4096 bytes": (
        in_root(entry(b"b", symlink(b"t" * 4096))),
        "symlink target is 4096 bytes long, the limit is 4095",
    ),
    "symlink target of 4097 bytes": (
        in_root(entry(b"b", symlink(b"t" * 4097))),
        "of 4097 bytes, the limit is 4096",
    ),
    "non-zero padding of a keyword": (
        nar_string(b"nix-archive-1")[:-1] + b"\x01" + ROOT_OPEN + CANARY + tokens(b")"),
        "non-zero padding",
    ),
    "non-zero padding of a name": (
        in_root(tokens(b"entry", b"(", b"name") + bad_padding(b"b") + tokens(b"node")),
        "non-zero padding after an entry name",
    ),
    "non-zero padding of contents": (
        in_root(
            tokens(b"entry", b"(", b"name", b"b", b"node", b"(", b"type", b"regular", b"contents")
            + bad_padding(b"abc")
            + tokens(b")", b")")
        ),
        "non-zero padding after the contents of 'b'",
    ),
    "non-zero padding of a symlink target": (
        in_root(
            tokens(b"entry", b"(", b"name", b"b", b"node", b"(", b"type", b"symlink", b"target")
            + bad_padding(b"t")
            + tokens(b")", b")")
        ),
        "non-zero padding after the symlink target",
    ),
    "executable marker with a value": (
        in_root(
            entry(
                b"b",
                tokens(b"(", b"type", b"regular", b"executable", b"x", b"contents", b"", b")"),
            )
        ),
        "executable marker of 1 bytes, the limit is 0",
    ),
    "trailing bytes": (
        in_root() + b"\0" * 8,
        f"data follows the archive's end at byte {len(in_root())}$",
    ),
    "one trailing byte": (in_root() + b"\0", "data follows the archive's end"),
    "a second archive": (in_root() + in_root(), "data follows the archive's end"),
    "huge magic": (huge(2**63), "of 9223372036854775808 bytes, the limit is 16"),
    "huge name": (
        in_root(tokens(b"entry", b"(", b"name") + huge(2**63)),
        "of 9223372036854775808 bytes, the limit is 255",
    ),
    "huge symlink target": (
        in_root(
            tokens(b"entry", b"(", b"name", b"b", b"node", b"(", b"type", b"symlink", b"target")
            + huge(2**64 - 1)
        ),
        "of 18446744073709551615 bytes, the limit is 4096",
    ),
    "huge contents": (
        in_root(
            tokens(b"entry", b"(", b"name", b"b", b"node", b"(", b"type", b"regular", b"contents")
            + huge(2**63)
        ),
        "truncated: it ends inside the contents of 'b'",
    ),
}


async def test_canary_is_stored_when_the_archive_is_valid(
    directory_service: DirectoryService,
) -> None:
    blobs = blob_service_from_addr("memory://")
    result = await ingest_nar(
        bytes_source(in_root(entry(b"b", regular(b"y")))), blobs, directory_service
    )
    assert await directory_service.get(CANARY_DIRECTORY.digest) == CANARY_DIRECTORY
    assert isinstance(result.node, DirectoryNode)
    assert await directory_service.get(result.node.digest) is not None


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_nar_is_refused_and_stores_no_directory(
    case: str, directory_service: DirectoryService
) -> None:
    data, message = MALFORMED[case]
    blobs = blob_service_from_addr("memory://")
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(NarError, match=message):
            await ingest_nar(bytes_source(data), blobs, directory_service)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5  # huge length claims fail fast...
    assert peak < 32 * 1024 * 1024  # ...without allocating what they claim
    assert await directory_service.get(CANARY_DIRECTORY.digest) is None


async def test_names_and_targets_at_their_limits_are_accepted() -> None:
    blobs, directories = memory_services()
    longest = b"n" * 255
    target = b"t" * 4095
    nar = archive(directory([(longest, symlink(target))]))
    result = await ingest_nar(bytes_source(nar), blobs, directories)
    assert isinstance(result.node, DirectoryNode)
    stored = await directories.get(result.node.digest)
    assert stored is not None and stored.get(longest) == SymlinkNode(target)
    assert await render(result.node, blobs, directories) == nar


async def test_truncation_at_every_offset_is_an_error() -> None:
    blobs = blob_service_from_addr("memory://")
    directories = directory_service_from_addr("sqlite://")
    for end in range(len(COMPLICATED_NAR)):
        for source in (
            bytes_source(COMPLICATED_NAR[:end]),
            pieces_source(COMPLICATED_NAR[:end], 1),
        ):
            with pytest.raises(NarError, match="NAR is truncated: it ends inside"):
                await ingest_nar(source, blobs, directories)
    assert await directories.get(DIRECTORY_WITH_KEEP.digest) is None
    assert await directories.get(DIRECTORY_COMPLICATED.digest) is None


async def test_truncated_large_contents_store_no_blob(blob_service: BlobService) -> None:
    directories = directory_service_from_addr("memory://")
    nar = archive(directory([(b"big", regular(LARGE))]))
    contents_start = nar.index(LARGE[:64])
    for end in (contents_start, contents_start + 1, contents_start + len(LARGE) // 2):
        with pytest.raises(NarError, match="truncated: it ends inside the contents of 'big'"):
            await ingest_nar(pieces_source(nar[:end], 200_000), blob_service, directories)
    assert not await blob_service.has(Digest.of(LARGE))


# -- large, executable, deep and wide ---------------------------------------------------


def file_tree(entries: dict[bytes, tuple[bytes, bool]]) -> tuple[Directory, bytes]:
    """A directory of files, as a castore Directory and as the NAR node the encoder writes."""
    castore = Directory(
        (name, FileNode(Digest.of(data), len(data), x)) for name, (data, x) in entries.items()
    )
    node = directory([(name, regular(data, x)) for name, (data, x) in sorted(entries.items())])
    return castore, node


SIZES = {
    "64KiB-1": 64 * 1024 - 1,
    "64KiB": 64 * 1024,
    "64KiB+1": 64 * 1024 + 1,
    "3MiB": 3 * 1024 * 1024,
}


@pytest.mark.parametrize("size", SIZES.values(), ids=list(SIZES))
async def test_large_and_boundary_sized_files_round_trip(
    blob_service: BlobService, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    directories = directory_service_from_addr("memory://")
    for executable in (False, True):
        node = FileNode(Digest.of(data), size, executable)
        nar = archive(regular(data, executable))
        await blob_service.put(data)
        assert await render(node, blob_service, directories) == nar
        blobs2, directories2 = memory_services()
        result = await ingest_nar(pieces_source(nar, 65_521), blobs2, directories2)
        assert result == IngestedNar(node, len(nar), hashlib.sha256(nar).digest())
        assert await blobs2.read_all(node.digest) == data


async def test_mixed_directory_round_trips_through_both_paths(
    blob_service: BlobService, directory_service: DirectoryService
) -> None:
    rng = random.Random(4)
    files = {
        b"big": (rng.randbytes(3 * 1024 * 1024), False),
        b"big.sh": (rng.randbytes(200_000), True),
        b"edge": (rng.randbytes(64 * 1024), True),
        b"edge+1": (rng.randbytes(64 * 1024 + 1), False),
        b"empty": (b"", True),
        b"same-as-big": (b"", False),
    }
    files[b"same-as-big"] = files[b"big"]  # one blob, two entries
    for i in range(300):  # more than one batch of small blobs
        files[f"small{i:03}".encode()] = (rng.randbytes(rng.randrange(0, 3000)), i % 7 == 0)
    castore, node = file_tree(files)
    nar = archive(node)
    for data, _ in files.values():
        await blob_service.put(data)
    await directory_service.put(castore)
    assert await render(castore.as_node(), blob_service, directory_service) == nar
    blobs2, directories2 = memory_services()
    result = await ingest_nar(bytes_source(nar), blobs2, directories2)
    assert result.node == castore.as_node()
    assert await render(result.node, blobs2, directories2) == nar


async def test_ranges_of_a_nar_are_its_slices(
    blob_service: BlobService, directory_service: DirectoryService
) -> None:
    rng = random.Random(9)
    files = {
        b"a-small": (rng.randbytes(100), False),
        b"b-big": (rng.randbytes(1024 * 1024 + 3), True),
        b"c-empty": (b"", False),
        b"d-small": (rng.randbytes(5000), False),
    }
    castore, node = file_tree(files)
    nar = archive(node)
    for data, _ in files.values():
        await blob_service.put(data)
    await directory_service.put(castore)
    root = castore.as_node()
    assert await nar_size_of(root, directory_service) == len(nar)
    big_at = nar.index(files[b"b-big"][0][:64])
    cuts = [0, 1, 7, 100, big_at - 1, big_at, big_at + 1, big_at + 500_000, len(nar) - 1]
    for start in cuts:
        for end in (start + 1, start + 4096, start + 2_000_000, None):
            pieces = [
                p async for p in render_nar(root, blob_service, directory_service, start, end)
            ]
            assert b"".join(pieces) == nar[start:end], (start, end)
    # A range past the end is empty.
    assert [p async for p in render_nar(root, blob_service, directory_service, len(nar))] == []


async def test_deep_nesting_needs_no_recursion(directory_service: DirectoryService) -> None:
    blobs = blob_service_from_addr("memory://")
    await blobs.put(HELLOWORLD_BLOB)
    castore = Directory([(b"hello", FileNode(HELLOWORLD_DIGEST, 12))])
    node = directory([(b"hello", regular(HELLOWORLD_BLOB))])
    putter = directory_service.put_multiple_start()
    await putter.put(castore)
    depth = 1200  # beyond the default recursion limit of 1000
    for level in range(depth):
        name = f"d{level}".encode()
        castore = Directory([(name, castore.as_node())])
        node = directory([(name, node)])
        await putter.put(castore)
    assert await putter.close() == castore.digest
    nar = archive(node)
    assert await render(castore.as_node(), blobs, directory_service) == nar
    blobs2, directories2 = memory_services()
    result = await ingest_nar(bytes_source(nar), blobs2, directories2)
    assert result.node == castore.as_node()
    closure = [d async for d in directories2.get_recursive(result.node.digest)]
    assert len(closure) == depth + 1


async def test_directory_of_two_thousand_entries(directory_service: DirectoryService) -> None:
    blobs = blob_service_from_addr("memory://")
    castore_entries: list[tuple[bytes, Node]] = []
    nar_entries: list[tuple[bytes, bytes]] = []
    for i in range(2000):
        name = f"entry{i:04}".encode()
        if i % 3 == 2:
            castore_entries.append((name, SymlinkNode(b"../" + name)))
            nar_entries.append((name, symlink(b"../" + name)))
        else:
            data = f"contents {i}".encode() * (i % 5)
            await blobs.put(data)
            castore_entries.append((name, FileNode(Digest.of(data), len(data), i % 3 == 1)))
            nar_entries.append((name, regular(data, i % 3 == 1)))
    castore = Directory(castore_entries)
    await directory_service.put(castore)
    nar = archive(directory(nar_entries))
    assert await render(castore.as_node(), blobs, directory_service) == nar
    blobs2, directories2 = memory_services()
    result = await ingest_nar(bytes_source(nar), blobs2, directories2)
    assert result.node == DirectoryNode(castore.digest, 4000)
    assert await directories2.get(castore.digest) == castore


# -- the round-trip property ------------------------------------------------------------

NAME = st.binary(min_size=1, max_size=10).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
TARGET = st.binary(min_size=1, max_size=40).filter(lambda t: b"\0" not in t)
LEAF = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=2000), st.booleans()),
    st.tuples(st.just("link"), TARGET),
)
TREE = st.recursive(
    LEAF, lambda children: st.dictionaries(NAME, children, max_size=5), max_leaves=30
)


async def build(
    tree: object, blobs: BlobService, directories: DirectoryService
) -> tuple[Node, bytes]:
    """Store ``tree`` in castore; its root node and the NAR node the encoder writes for it."""
    if isinstance(tree, dict):
        built = {name: await build(child, blobs, directories) for name, child in tree.items()}
        castore = Directory((name, node) for name, (node, _) in built.items())
        await directories.put(castore)
        return castore.as_node(), directory([(n, built[n][1]) for n in sorted(built)])
    assert isinstance(tree, tuple)
    if tree[0] == "file":
        _, data, executable = tree
        digest = await blobs.put(data)
        return FileNode(digest, len(data), executable), regular(data, executable)
    return SymlinkNode(tree[1]), symlink(tree[1])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(tree=TREE)
async def test_render_ingest_round_trip(tree: object) -> None:
    blobs, directories = memory_services()
    node, nar_node = await build(tree, blobs, directories)
    nar = await render(node, blobs, directories)
    assert nar == archive(nar_node)
    blobs2, directories2 = memory_services()
    result = await ingest_nar(bytes_source(nar), blobs2, directories2)
    assert result == IngestedNar(node, len(nar), hashlib.sha256(nar).digest())
    assert await render(result.node, blobs2, directories2) == nar

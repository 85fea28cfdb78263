"""BlobService conformance, run against every backend, plus object-store specifics."""

from __future__ import annotations

import io
import itertools
import os
import random
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cafs.castore.blobs.base import BlobService, ChunkMeta
from cafs.castore.blobs.objectstore import (
    ObjectStoreBlobService,
    blob_key,
    chunk_key,
    index_bytes,
)
from cafs.castore.composition import blob_service_from_addr
from cafs.castore.digest import Digest
from cafs.castore.objectstore import FileObjectStorage
from cafs.errors import IntegrityError, StorageError
from cafs.gen.tvix.castore.v1 import rpc_blobstore_pb2
from tests.fixtures import BLOB_A, BLOB_B, EMPTY_DIGEST, HELLOWORLD_BLOB, HELLOWORLD_DIGEST

# Several chunks at the object store's 256 KiB average chunk size.
LARGE = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)


async def test_has_nonexistent_is_false(blob_service: BlobService) -> None:
    assert not await blob_service.has(HELLOWORLD_DIGEST)
    assert await blob_service.open_read(HELLOWORLD_DIGEST) is None
    assert await blob_service.chunks(HELLOWORLD_DIGEST) is None


@pytest.mark.parametrize("data", [b"", HELLOWORLD_BLOB, BLOB_A, BLOB_B, LARGE])
async def test_put_has_read(blob_service: BlobService, data: bytes) -> None:
    digest = await blob_service.put(data)
    assert digest == Digest.of(data)
    assert await blob_service.has(digest)
    assert await blob_service.read_all(digest) == data
    assert await blob_service.chunks(digest) is not None


async def test_put_twice_is_harmless(blob_service: BlobService) -> None:
    assert await blob_service.put(BLOB_B) == await blob_service.put(BLOB_B)
    assert await blob_service.read_all(Digest.of(BLOB_B)) == BLOB_B


async def test_writes_in_many_pieces(blob_service: BlobService) -> None:
    writer = await blob_service.open_write()
    for i in range(0, len(LARGE), 99_991):
        await writer.write(memoryview(LARGE)[i : i + 99_991])
    assert await writer.close() == Digest.of(LARGE)
    assert await blob_service.read_all(Digest.of(LARGE)) == LARGE


async def test_aborted_write_leaves_nothing(blob_service: BlobService) -> None:
    writer = await blob_service.open_write()
    await writer.write(LARGE)
    await writer.abort()
    assert not await blob_service.has(Digest.of(LARGE))


async def test_reads_of_any_range(blob_service: BlobService) -> None:
    digest = await blob_service.put(LARGE)
    rng = random.Random(1)
    reader = await blob_service.open_read(digest)
    assert reader is not None
    async with reader:
        assert reader.size == len(LARGE)
        for _ in range(60):
            offset = rng.randrange(len(LARGE))
            length = rng.choice([1, 7, 4096, 131072, 600_000, 2_000_000])
            assert await reader.seek(offset) == offset
            assert await reader.read(length) == LARGE[offset : offset + length]
            assert reader.tell() == min(len(LARGE), offset + length)


async def test_seek_rules(blob_service: BlobService) -> None:
    digest = await blob_service.put(bytes(range(16)))
    reader = await blob_service.open_read(digest)
    assert reader is not None
    async with reader:
        assert await reader.seek(0, io.SEEK_END) == 16
        assert await reader.read() == b""
        await reader.seek(-1, io.SEEK_END)
        assert await reader.read() == b"\x0f"
        await reader.seek(-3, io.SEEK_CUR)
        assert await reader.read(2) == bytes.fromhex("0d0e")
        with pytest.raises(ValueError, match="beyond"):
            await reader.seek(17)
        with pytest.raises(ValueError, match="before"):
            await reader.seek(-1)


async def test_empty_blob_reads_empty(blob_service: BlobService) -> None:
    reader = await blob_service.open_read(EMPTY_DIGEST)
    assert reader is not None
    assert await reader.read() == b""


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300_000), cuts=st.lists(st.integers(0, 300_000), max_size=5))
async def test_round_trip_any_data(blob_service: BlobService, data: bytes, cuts: list[int]) -> None:
    writer = await blob_service.open_write()
    previous = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        await writer.write(data[previous:cut])
        previous = cut
    await writer.write(data[previous:])
    digest = await writer.close()
    assert digest == Digest.of(data)
    assert await blob_service.read_all(digest) == data


# -- object store specifics ---------------------------------------------------------


@pytest.fixture
async def file_store(tmp_path: Path) -> ObjectStoreBlobService:
    service = blob_service_from_addr(f"objectstore+file://{tmp_path}")
    assert isinstance(service, ObjectStoreBlobService)
    return service


async def test_layout_matches_tvix(file_store: ObjectStoreBlobService, tmp_path: Path) -> None:
    digest = await file_store.put(b"Hello World")
    assert digest.hex() == "41f8394111eb713a22165c46c90ab8f0fd9399c92028fd6d288944b23ff5bf76"
    chunk = tmp_path / "chunks/b3/41f8" / digest.hex()
    assert zstandard.ZstdDecompressor().decompress(chunk.read_bytes()) == b"Hello World"
    # A one-chunk blob is found through its chunk; its empty index is not written.
    assert not (tmp_path / "blobs/b3/41f8" / digest.hex()).exists()
    assert await file_store.chunks(digest) == []
    # The empty blob has no chunk: its index (an empty StatBlobResponse) marks it present.
    empty = await file_store.put(b"")
    assert (tmp_path / blob_key(empty)).read_bytes() == b""
    assert await file_store.has(empty)
    assert blob_key(digest) == f"blobs/b3/41f8/{digest.hex()}"
    assert chunk_key(digest) == f"chunks/b3/41f8/{digest.hex()}"


async def test_large_blob_is_chunked(file_store: ObjectStoreBlobService, tmp_path: Path) -> None:
    digest = await file_store.put(LARGE)
    chunks = await file_store.chunks(digest)
    assert chunks is not None
    assert len(chunks) >= 6
    assert sum(c.size for c in chunks) == len(LARGE)
    assert all(128 * 1024 <= c.size <= 512 * 1024 for c in chunks[:-1])
    index = rpc_blobstore_pb2.StatBlobResponse.FromString(
        (tmp_path / blob_key(digest)).read_bytes()
    )
    assert [(c.digest, c.size) for c in index.chunks] == [(c.digest, c.size) for c in chunks]
    for chunk in chunks:  # every chunk is a blob too
        assert await file_store.has(chunk.digest)
        assert await file_store.chunks(chunk.digest) == []
    assert not list((tmp_path / "tmp").iterdir())  # nothing staged is left behind


async def test_equal_data_gives_equal_chunks(file_store: ObjectStoreBlobService) -> None:
    # Content-defined boundaries: a prefix shift changes only the first chunks.
    a = await file_store.chunks(await file_store.put(LARGE))
    b = await file_store.chunks(await file_store.put(b"prefix" + LARGE))
    assert a is not None and b is not None
    assert len({c.digest for c in a} & {c.digest for c in b}) >= len(a) - 2


def _corrupt(path: Path, payload: bytes) -> None:
    path.write_bytes(zstandard.ZstdCompressor().compress(payload))


async def test_corrupted_chunk_is_an_error_not_data(
    file_store: ObjectStoreBlobService, tmp_path: Path
) -> None:
    digest = await file_store.put(HELLOWORLD_BLOB)
    _corrupt(tmp_path / chunk_key(digest), b"Hello World?")
    with pytest.raises(IntegrityError, match="corrupt"):
        await file_store.open_read(digest)


async def test_garbage_chunk_is_an_error(
    file_store: ObjectStoreBlobService, tmp_path: Path
) -> None:
    digest = await file_store.put(HELLOWORLD_BLOB)
    (tmp_path / chunk_key(digest)).write_bytes(b"not zstd at all")
    with pytest.raises(IntegrityError, match="zstd"):
        await file_store.open_read(digest)


async def test_corrupted_chunk_of_large_blob(
    file_store: ObjectStoreBlobService, tmp_path: Path
) -> None:
    digest = await file_store.put(LARGE)
    chunks = await file_store.chunks(digest)
    assert chunks
    bad = chunks[3]
    _corrupt(tmp_path / chunk_key(bad.digest), bytes(bad.size))
    reader = await file_store.open_read(digest)
    assert reader is not None
    start = sum(c.size for c in chunks[:3])
    assert await reader.read(start) == LARGE[:start]  # chunks before are fine
    with pytest.raises(IntegrityError, match="corrupt"):
        await reader.read(10)


async def test_missing_chunk_is_an_error(
    file_store: ObjectStoreBlobService, tmp_path: Path
) -> None:
    digest = await file_store.put(LARGE)
    chunks = await file_store.chunks(digest)
    assert chunks
    os.unlink(tmp_path / chunk_key(chunks[-1].digest))
    reader = await file_store.open_read(digest)
    assert reader is not None
    await reader.seek(len(LARGE) - 1)
    with pytest.raises(StorageError, match="not found"):
        await reader.read(1)


async def test_index_that_lies_is_caught_on_a_full_read(
    file_store: ObjectStoreBlobService, tmp_path: Path
) -> None:
    # An index listing valid chunks of *other* data: each chunk verifies, the blob does not.
    digest = await file_store.put(LARGE)
    other = random.Random(8).randbytes(len(LARGE))
    other_chunks = await file_store.chunks(await file_store.put(other))
    assert other_chunks
    (tmp_path / blob_key(digest)).write_bytes(index_bytes(other_chunks))
    reader = await file_store.open_read(digest)
    assert reader is not None
    with pytest.raises(IntegrityError, match="blob index is corrupt"):
        await reader.read()


async def test_second_process_sees_committed_blobs(tmp_path: Path) -> None:
    one = blob_service_from_addr(f"objectstore+file://{tmp_path}")
    digest = await one.put(LARGE)
    two = blob_service_from_addr(f"objectstore+file://{tmp_path}")
    assert await two.read_all(digest) == LARGE
    assert await two.chunks(digest) == await one.chunks(digest)


async def test_dead_writers_temp_files_are_swept(tmp_path: Path) -> None:
    await FileObjectStorage(tmp_path).connect()
    stale = tmp_path / "tmp" / "999999999-deadbeef"
    stale.write_bytes(b"partial")
    await FileObjectStorage(tmp_path).connect()
    assert not stale.exists()


def test_chunk_meta_is_a_value() -> None:
    assert ChunkMeta(HELLOWORLD_DIGEST, 12) == ChunkMeta(HELLOWORLD_DIGEST, 12)


async def test_reads_a_store_written_by_another_implementation(tmp_path: Path) -> None:
    """Objects as a streaming writer lays them out: zstd frames with no content size,
    chunk boundaries of its own choosing, the index as a raw StatBlobResponse."""
    data = random.Random(9).randbytes(700_000)
    cuts = [0, 200_000, 450_001, len(data)]
    index = rpc_blobstore_pb2.StatBlobResponse()
    for start, end in itertools.pairwise(cuts):
        piece = data[start:end]
        digest = Digest.of(piece)
        stream = io.BytesIO()
        with zstandard.ZstdCompressor(level=3).stream_writer(stream, closefd=False) as writer:
            writer.write(piece)  # streamed: the frame header carries no content size
        assert zstandard.frame_content_size(stream.getvalue()) == -1
        path = tmp_path / chunk_key(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(stream.getvalue())
        index.chunks.add(digest=digest, size=len(piece))
    blob = Digest.of(data)
    (tmp_path / blob_key(blob)).parent.mkdir(parents=True)
    (tmp_path / blob_key(blob)).write_bytes(index.SerializeToString())

    service = blob_service_from_addr(f"objectstore+file://{tmp_path}")
    assert await service.has(blob)
    assert await service.chunks(blob) == [ChunkMeta(Digest(c.digest), c.size) for c in index.chunks]
    assert await service.read_all(blob) == data

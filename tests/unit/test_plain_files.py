"""Plain copies of verified blobs: made whole or not at all, bounded, read back as they were."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from cafs.castore.blobs.base import BlobReader, BlobService, BlobWriter, BytesBlobReader
from cafs.castore.blobs.objectstore import ObjectStoreBlobService
from cafs.castore.blobs.plain import (
    TEMPORARY_PREFIX,
    PlainFileBlobService,
    PlainFileReader,
    PlainFiles,
)
from cafs.castore.composition import blob_service_from_addr
from cafs.castore.digest import Digest

MIB = 1024 * 1024


def blob(seed: int, size: int = 3 * MIB) -> bytes:
    return random.Random(seed).randbytes(size)


def store(tmp_path: Path) -> ObjectStoreBlobService:
    service = blob_service_from_addr(f"objectstore+file://{tmp_path / 'objects'}")
    assert isinstance(service, ObjectStoreBlobService)
    return service


async def read_through(service: BlobService, digest: Digest) -> bytes:
    reader = await service.open_read(digest)
    assert reader is not None
    async with reader:
        return await reader.read()


async def test_a_blob_read_once_is_read_from_its_plain_copy_after(tmp_path: Path) -> None:
    inner = store(tmp_path)
    data = blob(1)
    digest = await inner.put(data)
    plain = PlainFiles(tmp_path / "plain", 64 * MIB)
    service = PlainFileBlobService(inner, plain)
    await service.connect()
    try:
        assert service.plain_file(digest) is None
        assert await read_through(service, digest) == data
        await plain.wait()
        path = service.plain_file(digest)
        assert path == str(tmp_path / "plain" / digest.hex())
        assert Path(path).read_bytes() == data
        assert os.stat(path).st_mode & 0o777 == 0o444
        reader = await service.open_read(digest)
        assert isinstance(reader, PlainFileReader)
        async with reader:
            await reader.seek(MIB + 7)
            assert await reader.read(1000) == data[MIB + 7 : MIB + 1007]
            assert await reader.read() == data[MIB + 1007 :]
    finally:
        await service.close()
    # Nothing but the copy itself is left in the directory (no temporary names).
    assert os.listdir(tmp_path / "plain") == [digest.hex()]


async def test_small_blobs_and_fills_turned_off_make_no_copy(tmp_path: Path) -> None:
    inner = store(tmp_path)
    small = await inner.put(blob(2, 100 * 1024))
    large = await inner.put(blob(3))
    plain = PlainFiles(tmp_path / "plain", 64 * MIB)
    service = PlainFileBlobService(inner, plain)
    await service.connect()
    await read_through(service, small)
    await plain.wait()
    assert service.plain_file(small) is None
    readonly = PlainFileBlobService(inner, plain, fill=False)
    await read_through(readonly, large)
    await plain.wait()
    assert readonly.plain_file(large) is None
    await service.close()


class _Lying(BlobService):
    """A backend whose reader hands out other bytes than the digest asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def has(self, digest: Digest) -> bool:
        return True

    async def open_read(self, digest: Digest) -> BlobReader | None:
        return BytesBlobReader(self.data)

    async def open_write(self) -> BlobWriter:
        raise NotImplementedError


async def test_bytes_that_do_not_hash_to_the_digest_never_become_a_copy(tmp_path: Path) -> None:
    data = blob(4)
    wrong = bytearray(data)
    wrong[MIB] ^= 1
    plain = PlainFiles(tmp_path / "plain", 64 * MIB)
    await plain.load()
    digest = Digest.of(data)
    plain.want(digest, len(data), _Lying(bytes(wrong)))
    await plain.wait()
    assert plain.lookup(digest) is None
    assert os.listdir(tmp_path / "plain") == []


async def test_the_bound_removes_the_least_recently_used_first(tmp_path: Path) -> None:
    inner = store(tmp_path)
    blobs = [blob(10 + i) for i in range(3)]
    digests = [await inner.put(data) for data in blobs]
    plain = PlainFiles(tmp_path / "plain", 7 * MIB)  # room for two of the three
    service = PlainFileBlobService(inner, plain)
    await service.connect()
    for digest in digests[:2]:
        await read_through(service, digest)
        await plain.wait()
    assert service.plain_file(digests[0]) is not None  # used now: the second is older
    await read_through(service, digests[2])
    await plain.wait()
    assert service.plain_file(digests[1]) is None
    assert sorted(os.listdir(tmp_path / "plain")) == sorted(d.hex() for d in digests[::2])
    await service.close()


async def test_a_new_process_finds_the_copies_in_their_order_of_use(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    datas = [blob(20 + i, MIB) for i in range(3)]
    now = time.time()
    for age, data in zip((30, 10, 20), datas, strict=True):
        path = root / Digest.of(data).hex()
        path.write_bytes(data)
        os.utime(path, (now - age, now - age))
    (root / "not-a-digest").write_bytes(b"left alone")
    stale = root / f"{TEMPORARY_PREFIX}123-456"
    stale.write_bytes(b"half a copy")
    os.utime(stale, (now - 7200, now - 7200))
    fresh = root / f"{TEMPORARY_PREFIX}123-789"
    fresh.write_bytes(b"being written")
    plain = PlainFiles(root, 2 * MIB + 1)
    await plain.load()
    # The oldest by modification time went first; the stale temporary file is swept.
    assert plain.lookup(Digest.of(datas[0])) is None
    assert plain.lookup(Digest.of(datas[1])) is not None
    assert plain.lookup(Digest.of(datas[2])) is not None
    assert sorted(os.listdir(root)) == sorted(
        [Digest.of(datas[1]).hex(), Digest.of(datas[2]).hex(), "not-a-digest", fresh.name]
    )


async def test_a_copy_removed_by_another_process_falls_back_to_the_store(tmp_path: Path) -> None:
    inner = store(tmp_path)
    data = blob(5)
    digest = await inner.put(data)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / digest.hex()).write_bytes(data)
    plain = PlainFiles(tmp_path / "plain", 64 * MIB)
    service = PlainFileBlobService(inner, plain, fill=False)
    await service.connect()
    assert service.plain_file(digest) is not None
    os.unlink(tmp_path / "plain" / digest.hex())
    assert await read_through(service, digest) == data
    assert service.plain_file(digest) is None
    await service.close()

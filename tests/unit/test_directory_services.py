"""DirectoryService conformance on every backend, closure validation, sqlite specifics."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cafs.castore.closure import RootToLeavesValidator
from cafs.castore.composition import directory_service_from_addr
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode
from cafs.errors import ClosureError, IntegrityError
from tests.fixtures import (
    DIRECTORY_A,
    DIRECTORY_B,
    DIRECTORY_C,
    DIRECTORY_COMPLICATED,
    DIRECTORY_D,
    DIRECTORY_WITH_KEEP,
)


async def test_get_missing_is_none(directory_service: DirectoryService) -> None:
    assert await directory_service.get(DIRECTORY_A.digest) is None
    assert [d async for d in directory_service.get_recursive(DIRECTORY_D.digest)] == []


async def test_put_get(directory_service: DirectoryService) -> None:
    for directory in (DIRECTORY_A, DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED):
        assert await directory_service.put(directory) == directory.digest
        got = await directory_service.get(directory.digest)
        assert got == directory
        assert got is not None and got.digest == directory.digest


async def test_get_recursive_root_first_each_once(directory_service: DirectoryService) -> None:
    putter = directory_service.put_multiple_start()
    for directory in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_D):
        await putter.put(directory)
    assert await putter.close() == DIRECTORY_D.digest
    got = [d async for d in directory_service.get_recursive(DIRECTORY_D.digest)]
    assert got[0] == DIRECTORY_D
    assert sorted(d.digest for d in got) == sorted(
        d.digest for d in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_D)
    )
    # The order is one a root-to-leaves validator accepts.
    validator = RootToLeavesValidator(DIRECTORY_D.digest)
    for directory in got:
        validator.add(directory)
    assert not validator.missing()


# Upload matrix of the survey (§1.10): A=empty, B→A, C→A,A, D→A,B.
OK_UPLOADS = [
    [DIRECTORY_A],
    [DIRECTORY_A, DIRECTORY_B],
    [DIRECTORY_A, DIRECTORY_A, DIRECTORY_C],
    [DIRECTORY_A, DIRECTORY_C],
    [DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED],
]


@pytest.mark.parametrize("batch", OK_UPLOADS)
async def test_putter_accepts_closures(
    directory_service: DirectoryService, batch: list[Directory]
) -> None:
    putter = directory_service.put_multiple_start()
    for directory in batch:
        await putter.put(directory)
    assert await putter.close() == batch[-1].digest
    for directory in batch:
        assert await directory_service.get(directory.digest) == directory


async def test_putter_refuses_disconnected_roots(directory_service: DirectoryService) -> None:
    putter = directory_service.put_multiple_start()
    for directory in (DIRECTORY_A, DIRECTORY_C, DIRECTORY_B):
        await putter.put(directory)
    with pytest.raises(ClosureError, match="disconnected roots"):
        await putter.close()
    assert await directory_service.get(DIRECTORY_A.digest) is None  # nothing half-stored


async def test_putter_refuses_unknown_child(directory_service: DirectoryService) -> None:
    putter = directory_service.put_multiple_start()
    with pytest.raises(ClosureError, match="not sent before"):
        await putter.put(DIRECTORY_B)


async def test_putter_refuses_wrong_child_size(directory_service: DirectoryService) -> None:
    liar = Directory([(b"a", DirectoryNode(DIRECTORY_B.digest, DIRECTORY_B.size + 42))])
    putter = directory_service.put_multiple_start()
    await putter.put(DIRECTORY_A)
    await putter.put(DIRECTORY_B)
    with pytest.raises(ClosureError, match="wrong size"):
        await putter.put(liar)


async def test_putter_refuses_empty_batch(directory_service: DirectoryService) -> None:
    with pytest.raises(ClosureError, match="got no directories"):
        await directory_service.put_multiple_start().close()


# Download matrix of the survey (§1.10).
@pytest.mark.parametrize(
    ("root", "stream", "ok"),
    [
        (DIRECTORY_B, [DIRECTORY_B, DIRECTORY_A], True),
        (DIRECTORY_C, [DIRECTORY_C, DIRECTORY_A], True),
        (DIRECTORY_C, [DIRECTORY_C, DIRECTORY_B], False),
        (DIRECTORY_B, [DIRECTORY_A], False),
        (DIRECTORY_D, [DIRECTORY_D, DIRECTORY_B, DIRECTORY_A], True),
        (DIRECTORY_D, [DIRECTORY_D, DIRECTORY_A, DIRECTORY_B], True),
        (DIRECTORY_B, [DIRECTORY_B, DIRECTORY_A, DIRECTORY_A], False),
    ],
)
def test_root_to_leaves_validation(root: Directory, stream: list[Directory], ok: bool) -> None:
    validator = RootToLeavesValidator(root.digest)
    if ok:
        for directory in stream:
            validator.add(directory)
        assert not validator.missing()
    else:
        with pytest.raises(ClosureError):
            for directory in stream:
                validator.add(directory)


async def test_sqlite_corrupted_row_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    service = directory_service_from_addr(f"sqlite://{path}")
    await service.put(DIRECTORY_WITH_KEEP)
    await service.close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE directories SET data = ? WHERE digest = ?",
            (DIRECTORY_A.canonical_bytes(), bytes(DIRECTORY_WITH_KEEP.digest)),
        )
    service = directory_service_from_addr(f"sqlite://{path}")
    try:
        with pytest.raises(IntegrityError, match="corrupt"):
            await service.get(DIRECTORY_WITH_KEEP.digest)
    finally:
        await service.close()


async def test_sqlite_invalid_row_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    service = directory_service_from_addr(f"sqlite://{path}")
    await service.put(DIRECTORY_WITH_KEEP)
    await service.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE directories SET data = ?", (b"\xff\xff\xff",))
    service = directory_service_from_addr(f"sqlite://{path}")
    try:
        with pytest.raises(Exception, match="invalid directory"):
            await service.get(DIRECTORY_WITH_KEEP.digest)
    finally:
        await service.close()


WRITER = """
import asyncio, sys
from cafs.castore.composition import directory_service_from_addr
from tests.fixtures import DIRECTORY_A, DIRECTORY_B, DIRECTORY_D
async def main():
    service = directory_service_from_addr(sys.argv[1])
    putter = service.put_multiple_start()
    for d in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_D):
        await putter.put(d)
    await putter.close()
    await service.close()
asyncio.run(main())
"""


async def test_sqlite_second_process_writes_first_reads(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'shared.sqlite'}"
    reader = directory_service_from_addr(url)
    try:
        assert await reader.get(DIRECTORY_D.digest) is None  # open before the writer runs
        subprocess.run(
            [sys.executable, "-c", WRITER, url],
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert await reader.get(DIRECTORY_D.digest) == DIRECTORY_D
        assert len([d async for d in reader.get_recursive(DIRECTORY_D.digest)]) == 3
    finally:
        await reader.close()


# -- the object-store layout, shared with tvix -----------------------------------------


def tvix_frames(directories: list[Directory]) -> bytes:
    """A closure object as tvix writes one, built here from its description:
    zstd over frames of a big-endian u32 length and a Directory, root first."""
    import struct

    import zstandard

    raw = b"".join(
        struct.pack(">I", len(d.canonical_bytes())) + d.canonical_bytes() for d in directories
    )
    return zstandard.ZstdCompressor().compress(raw)


def read_frames(data: bytes) -> list[bytes]:
    import struct

    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(data).read()
    frames, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from(">I", raw, offset)
        frames.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return frames


async def test_objectstore_reads_a_closure_written_by_tvix(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    digest = DIRECTORY_D.digest.hex()
    obj = root / "dirs" / "b3" / digest[:4] / digest
    obj.parent.mkdir(parents=True)
    obj.write_bytes(tvix_frames([DIRECTORY_D, DIRECTORY_B, DIRECTORY_A]))
    service = directory_service_from_addr(f"objectstore+file://{root}")
    try:
        assert await service.get(DIRECTORY_D.digest) == DIRECTORY_D
        got = [d async for d in service.get_recursive(DIRECTORY_D.digest)]
        assert got == [DIRECTORY_D, DIRECTORY_B, DIRECTORY_A]
        # tvix keeps no object per child: only the closure's root can be asked for.
        assert await service.get(DIRECTORY_B.digest) is None
    finally:
        await service.close()


async def test_objectstore_writes_closures_tvix_can_read(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    service = directory_service_from_addr(f"objectstore+file://{root}")
    try:
        putter = service.put_multiple_start()
        for directory in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_D):
            await putter.put(directory)
        assert await putter.close() == DIRECTORY_D.digest
        # Any directory of the closure can be fetched on its own (a mount's lookups).
        assert await service.get(DIRECTORY_B.digest) == DIRECTORY_B
    finally:
        await service.close()
    digest = DIRECTORY_D.digest.hex()
    frames = read_frames((root / "dirs" / "b3" / digest[:4] / digest).read_bytes())
    assert frames[0] == DIRECTORY_D.canonical_bytes()
    validator = RootToLeavesValidator(DIRECTORY_D.digest)
    for frame in frames:
        validator.add(Directory.from_bytes(frame))
    assert not validator.missing() and len(frames) == 3


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[:-3], "cut off inside a zstd frame"),
        (lambda d: b"junk" + d, "not valid zstd"),
        (lambda d: tvix_frames([DIRECTORY_D, DIRECTORY_B]), "lacks 1 directories"),
        (lambda d: tvix_frames([DIRECTORY_D, DIRECTORY_C]), "unexpected directory"),
        (lambda d: tvix_frames([DIRECTORY_B, DIRECTORY_A]), "unexpected directory"),
    ],
)
async def test_objectstore_refuses_a_damaged_closure(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    root = tmp_path / "bucket"
    digest = DIRECTORY_D.digest.hex()
    obj = root / "dirs" / "b3" / digest[:4] / digest
    obj.parent.mkdir(parents=True)
    obj.write_bytes(damage(tvix_frames([DIRECTORY_D, DIRECTORY_B, DIRECTORY_A])))
    service = directory_service_from_addr(f"objectstore+file://{root}")
    try:
        with pytest.raises(IntegrityError, match=reason):
            [d async for d in service.get_recursive(DIRECTORY_D.digest)]
    finally:
        await service.close()

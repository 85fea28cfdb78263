"""Rendering a castore node as a NAR, streamed, with blob fetches running ahead.

The tree's directories are loaded first (one closure fetch); the NAR is then
written in order while the blobs it needs next are already being fetched:
small blobs in batches (one backend call for many files), large ones opened
ahead and streamed. Memory stays bounded by the fetch window, whatever the
size of the NAR, and every blob is checked against the size its node claims.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from cafs.castore.blobs.base import BlobReader, BlobService
from cafs.castore.digest import EMPTY_DIGEST, Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from cafs.errors import NarError
from cafs.store.nar import format as nar

# Blobs up to this size are fetched in batches and held whole.
SMALL_BLOB = 64 * 1024
BATCH_FILES = 256
BATCH_BYTES = 4 * 1024 * 1024
# How far ahead of the writer fetches may run: bytes of small-blob batches
# held, and units (batches or opened large blobs) in flight.
WINDOW_BYTES = 32 * 1024 * 1024
WINDOW_UNITS = 8
# The size of the pieces the NAR is handed out in.
OUTPUT_BLOCK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileRange:
    """A part of the NAR that is ``length`` bytes of a plain file from ``offset``.

    The file holds a blob's verified bytes (``BlobService.plain_file``): a
    writer may copy it with ``sendfile`` instead of reading it through cafs.
    """

    path: str
    offset: int
    length: int
    node: FileNode
    """The file's node: a plain file of another size than it claims is an error."""

    def open(self) -> BinaryIO:
        """The plain file, open for reading, once its size is the node's (blocking)."""
        source = open(self.path, "rb")  # noqa: SIM115 - handed to the caller
        actual = os.fstat(source.fileno()).st_size
        if actual != self.node.size:
            source.close()
            raise _size_problem(self.node, actual)
        return source


@dataclass
class _Unit:
    """One fetch: a batch of small blobs, or one large blob to stream."""

    files: list[FileNode] = field(default_factory=list)
    size: int = 0
    large: bool = False


@dataclass(frozen=True, slots=True)
class _Contents:
    """A file's contents in the NAR, to be filled from fetch unit ``unit``."""

    node: FileNode
    unit: int


class _Plan:
    """The NAR as structure bytes and file-content slots, plus the fetches to fill them."""

    def __init__(self) -> None:
        self.pieces: list[bytes | _Contents] = []
        self.units: list[_Unit] = []
        self._bytes = bytearray()
        self._batch: _Unit | None = None

    def emit(self, data: bytes) -> None:
        self._bytes += data

    def contents(self, node: FileNode) -> None:
        self._flush_bytes()
        if node.size == 0 and node.digest == EMPTY_DIGEST:
            return
        if node.size > SMALL_BLOB:
            self._batch = None
            self.units.append(_Unit([node], node.size, large=True))
        else:
            batch = self._batch
            if (
                batch is None
                or len(batch.files) >= BATCH_FILES
                or (batch.size + node.size > BATCH_BYTES)
            ):
                batch = self._batch = _Unit()
                self.units.append(batch)
            batch.files.append(node)
            batch.size += node.size
        self.pieces.append(_Contents(node, len(self.units) - 1))

    def finish(self) -> None:
        self._flush_bytes()

    def _flush_bytes(self) -> None:
        if self._bytes:
            self.pieces.append(bytes(self._bytes))
            self._bytes.clear()


def _node_body(plan: _Plan, node: FileNode | SymlinkNode) -> None:
    plan.emit(nar.NODE_OPEN)
    if isinstance(node, SymlinkNode):
        plan.emit(nar.SYMLINK_TARGET + nar.string(node.target) + nar.CLOSE)
        return
    plan.emit(nar.REGULAR)
    if node.executable:
        plan.emit(nar.EXECUTABLE)
    plan.emit(nar.CONTENTS + nar.u64(node.size))
    plan.contents(node)
    plan.emit(b"\0" * nar.padding(node.size) + nar.CLOSE)


def _make_plan(root: Node, closure: dict[Digest, Directory]) -> _Plan:
    plan = _Plan()
    plan.emit(nar.ARCHIVE_START)
    # An explicit stack, so deep trees cannot exhaust Python's recursion limit.
    # Each frame is a directory's remaining entries.
    stack: list[tuple[Directory, list[tuple[bytes, Node]]]] = []

    def enter(node: Node) -> None:
        if isinstance(node, DirectoryNode):
            directory = closure.get(node.digest)
            if directory is None:
                raise NarError(f"cannot render NAR: directory {node.digest} is missing")
            plan.emit(nar.NODE_OPEN + nar.DIRECTORY)
            stack.append((directory, list(directory)[::-1]))
        else:
            _node_body(plan, node)

    enter(root)
    while stack:
        _, remaining = stack[-1]
        if not remaining:
            stack.pop()
            plan.emit(nar.CLOSE)  # the directory node
            if stack:
                plan.emit(nar.CLOSE)  # the entry holding it
            continue
        name, child = remaining.pop()
        plan.emit(nar.ENTRY_NAME + nar.string(name) + nar.ENTRY_NODE)
        enter(child)
        if not isinstance(child, DirectoryNode):
            plan.emit(nar.CLOSE)
    plan.finish()
    return plan


async def _load_closure(root: Node, directories: DirectoryService) -> dict[Digest, Directory]:
    if not isinstance(root, DirectoryNode):
        return {}
    closure = {d.digest: d async for d in directories.get_recursive(root.digest)}
    if root.digest not in closure:
        raise NarError(f"cannot render NAR: directory {root.digest} not found")
    return closure


def _size_problem(node: FileNode, actual: int) -> NarError:
    relation = "more" if actual > node.size else "fewer"
    return NarError(
        f"cannot render NAR: blob {node.digest} holds {actual} bytes, {relation} "
        f"than the {node.size} its file node claims"
    )


async def _fetch_batch(blobs: BlobService, unit: _Unit) -> dict[Digest, bytes]:
    wanted = list(dict.fromkeys(f.digest for f in unit.files))
    found = await blobs.read_many(wanted)
    for digest in wanted:
        if digest not in found:
            # Ask once more on its own, so a corrupt blob raises its own error.
            data = await blobs.read_all(digest)
            if data is None:
                raise NarError(f"cannot render NAR: blob {digest} not found")
            found[digest] = data
    return found


async def _open_large(blobs: BlobService, node: FileNode) -> BlobReader:
    reader = await blobs.open_read(node.digest)
    if reader is None:
        raise NarError(f"cannot render NAR: blob {node.digest} not found")
    if reader.size != node.size:
        await reader.close()
        raise _size_problem(node, reader.size)
    return reader


_Fetched = dict[Digest, bytes] | BlobReader | str
"""A batch of small blobs, an opened large one, or the path of a large one's plain copy."""


async def _at_hand(path: str) -> str:
    return path


class _Fetcher:
    """Runs the plan's fetches ahead of the writer, within the window."""

    def __init__(
        self, blobs: BlobService, units: list[_Unit], first: int = 0, file_ranges: bool = False
    ) -> None:
        self._blobs = blobs
        self._file_ranges = file_ranges
        self._units = units
        self._next = first
        self._tasks: deque[tuple[int, asyncio.Task[_Fetched]]] = deque()
        self._held = 0

    def _top_up(self) -> None:
        while self._next < len(self._units) and (
            not self._tasks or (len(self._tasks) < WINDOW_UNITS and self._held < WINDOW_BYTES)
        ):
            unit = self._units[self._next]
            job: Awaitable[_Fetched]
            plain = None
            if self._file_ranges and unit.large:
                plain = self._blobs.plain_file(unit.files[0].digest)
            if plain is not None:
                job = _at_hand(plain)
            elif unit.large:
                job = _open_large(self._blobs, unit.files[0])
            else:
                job = _fetch_batch(self._blobs, unit)
                self._held += unit.size
            self._tasks.append((self._next, asyncio.ensure_future(job)))
            self._next += 1

    async def take(self, index: int) -> _Fetched:
        """The result of unit ``index``; units must be taken in order."""
        self._top_up()
        taken, task = self._tasks.popleft()
        assert taken == index
        result = await task
        if not self._units[index].large:
            self._held -= self._units[index].size
        self._top_up()
        return result

    async def close(self) -> None:
        for _, task in self._tasks:
            task.cancel()
        for _, task in self._tasks:
            try:
                result = await task
            except BaseException:
                continue  # cancelled or failed: nothing to release
            if isinstance(result, BlobReader):
                await result.close()
        self._tasks.clear()


def _piece_size(piece: bytes | _Contents) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.node.size


async def render_nar(
    root: Node,
    blobs: BlobService,
    directories: DirectoryService,
    start: int = 0,
    end: int | None = None,
    expected_size: int | None = None,
) -> AsyncGenerator[bytes, None]:
    """The NAR of ``root`` (bytes ``start`` to ``end``), in pieces of about ``OUTPUT_BLOCK``.

    A range skips what lies before it without fetching it: the NAR's layout
    is known from the directories alone, and a large file is entered at the
    offset the range starts at. With ``expected_size``, a NAR of another size
    is a NarError before its first byte.
    """
    async for piece in render_nar_pieces(root, blobs, directories, start, end, expected_size):
        assert isinstance(piece, bytes)
        yield piece


async def render_nar_pieces(
    root: Node,
    blobs: BlobService,
    directories: DirectoryService,
    start: int = 0,
    end: int | None = None,
    expected_size: int | None = None,
    *,
    file_ranges: bool = False,
) -> AsyncGenerator[bytes | FileRange, None]:
    """``render_nar``, with ``file_ranges``: large files that have a plain copy as FileRanges."""
    plan = _make_plan(root, await _load_closure(root, directories))
    total = sum(_piece_size(piece) for piece in plan.pieces)
    if expected_size is not None and total != expected_size:
        raise NarError(f"the NAR is {total} bytes, not {expected_size}")
    end = total if end is None else min(end, total)
    # Find the first piece the range touches, and the first fetch it needs.
    position = 0
    first_piece = 0
    while first_piece < len(plan.pieces):
        size = _piece_size(plan.pieces[first_piece])
        if position + size > start:
            break
        position += size
        first_piece += 1
    first_unit = next(
        (p.unit for p in plan.pieces[first_piece:] if isinstance(p, _Contents)), len(plan.units)
    )
    fetcher = _Fetcher(blobs, plan.units, first_unit, file_ranges)
    out = bytearray()
    batch: dict[Digest, bytes] = {}
    batch_index = -1
    try:
        for piece in plan.pieces[first_piece:]:
            if position >= end:
                break
            size = _piece_size(piece)
            lo = max(start - position, 0)  # the part of this piece in the range
            hi = min(end - position, size)
            position += size
            if isinstance(piece, bytes):
                out += piece[lo:hi]
            elif plan.units[piece.unit].large:
                reader = await fetcher.take(piece.unit)
                if out:
                    yield bytes(out)
                    out.clear()
                if isinstance(reader, str):
                    yield FileRange(reader, lo, hi - lo, piece.node)
                    continue
                assert isinstance(reader, BlobReader)
                # Large contents pass through as read, without another copy.
                async with reader:
                    if lo:
                        await reader.seek(lo)
                    remaining = hi - lo
                    while remaining:
                        data = await reader.read_some(min(remaining, OUTPUT_BLOCK))
                        if not data:
                            raise _size_problem(piece.node, hi - remaining)
                        remaining -= len(data)
                        yield data
            else:
                if piece.unit != batch_index:
                    result = await fetcher.take(piece.unit)
                    assert isinstance(result, dict)
                    batch, batch_index = result, piece.unit
                data = batch[piece.node.digest]
                if len(data) != piece.node.size:
                    raise _size_problem(piece.node, len(data))
                out += data[lo:hi] if (lo, hi) != (0, size) else data
            if len(out) >= OUTPUT_BLOCK:
                yield bytes(out)
                out.clear()
        if out:
            yield bytes(out)
    finally:
        await fetcher.close()


async def nar_size_of(root: Node, directories: DirectoryService) -> int:
    """The size ``root``'s NAR will have, from its directories alone (no blob is read)."""
    plan = _make_plan(root, await _load_closure(root, directories))
    return sum(_piece_size(piece) for piece in plan.pieces)


async def calculate_nar(
    root: Node,
    blobs: BlobService,
    directories: DirectoryService,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, bytes]:
    """The size and SHA-256 of ``root``'s NAR, computed without holding the NAR."""
    hasher = hashlib.sha256()
    size = 0
    async for piece in render_nar(root, blobs, directories):
        hasher.update(piece)
        size += len(piece)
        if progress is not None:
            progress(len(piece))
    return size, hasher.digest()

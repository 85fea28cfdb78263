"""Ingesting a NAR into castore, streamed, checking every rule of the format.

The archive is parsed as it arrives: small files are hashed here and stored
in batches in the background, large ones streamed into a blob writer, and
directories built bottom-up. Directories are stored only once the whole
archive parsed cleanly, so a malformed or truncated NAR leaves no directory
(and no path) behind; the blobs it stored are plain content, visible under no
name.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from cafs.castore.blobs.base import BlobService
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directory import Directory
from cafs.castore.nodes import (
    MAX_NAME_LENGTH,
    FileNode,
    Node,
    SymlinkNode,
    display_name,
    name_problem,
    symlink_target_problem,
)
from cafs.errors import DirectoryValidationError, NarError
from cafs.store.nar import format as nar

# Reads from the source are this large; a parse never holds more of it.
READ_BLOCK = 1024 * 1024
# Files up to this size are held whole and stored in batches.
SMALL_FILE = 64 * 1024
BATCH_FILES = 256
BATCH_BYTES = 4 * 1024 * 1024
BATCHES_IN_FLIGHT = 2

# Reads up to ``n`` bytes; an empty result is the end of the stream.
ByteSource = Callable[[int], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class IngestedNar:
    """What a NAR turned into: its root node, and the size and SHA-256 of the NAR read."""

    node: Node
    nar_size: int
    nar_sha256: bytes


LOOKAHEAD = SMALL_FILE + 16 * 1024
"""Bytes buffered before an entry is parsed: its longest stretch without large contents
(keywords, a name of at most 255 bytes, a symlink target of at most 4,096, small contents)."""


class _Input:
    """Buffered reads from the source, hashing and counting every byte.

    The archive's structure is parsed synchronously from the buffer (an
    ``await`` per token would cost more than the parse itself): ``fill``
    buffers ``LOOKAHEAD`` bytes before each entry, so a token that is not in
    the buffer is past the end of the stream. SHA-256 runs on a thread of its
    own, beside the parse.
    """

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._buffer = bytearray()
        self._position = 0  # of the first unread byte in the buffer
        self._hasher = hashlib.sha256()
        self._hashing = ThreadPoolExecutor(1, thread_name_prefix="nar-sha256")
        self._hashed: asyncio.Future[None] | None = None
        self._ended = False
        self.consumed = 0

    @property
    def _available(self) -> int:
        return len(self._buffer) - self._position

    async def _read(self) -> bool:
        block = await self._block()
        if not block:
            return False
        if self._position:
            del self._buffer[: self._position]
            self._position = 0
        self._buffer += block
        return True

    async def fill(self, n: int = LOOKAHEAD) -> None:
        """Buffer at least ``n`` bytes, or all that is left of the stream."""
        while self._available < n and await self._read():
            pass

    def _slice(self, n: int) -> bytes:
        data = bytes(self._buffer[self._position : self._position + n])
        self._position += len(data)
        self.consumed += len(data)
        return data

    def take(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes of what ``fill`` buffered."""
        if self._available < n:
            if self._ended:
                raise NarError(f"NAR is truncated: it ends inside {what}")
            raise NarError(f"NAR is malformed: {what} is longer than the format allows")
        return self._slice(n)

    async def piece(self, n: int, what: str) -> bytes:
        """Up to ``n`` bytes, at least one: what is at hand (for streaming large contents).

        Once the buffer is used up, blocks of the source are handed on as they
        came, not copied through the buffer.
        """
        if self._available:
            return self._slice(min(n, self._available))
        block = await self._block()
        if not block:
            raise NarError(f"NAR is truncated: it ends inside {what}")
        if len(block) > n:
            self._buffer[:] = block[n:]
            self._position = 0
            block = block[:n]
        self.consumed += len(block)
        return block

    async def _block(self) -> bytes:
        """The source's next block, hashed; empty at the end."""
        if self._ended:
            return b""
        block = await self._source(READ_BLOCK)
        if not block:
            self._ended = True
            return b""
        # One hashing worker: the updates run in the order of the blocks.
        loop = asyncio.get_running_loop()
        self._hashed = loop.run_in_executor(self._hashing, self._hasher.update, block)
        return block

    async def at_end(self) -> bool:
        return not self._available and not await self._read()

    async def sha256(self) -> bytes:
        if self._hashed is not None:
            await self._hashed
        return self._hasher.digest()

    def close(self) -> None:
        self._hashing.shutdown(wait=False)

    # -- NAR strings ----------------------------------------------------------

    def length(self, what: str) -> int:
        return nar.decode_u64(self.take(8, what))

    def padding(self, length: int, what: str) -> None:
        pad = nar.padding(length)
        if pad and self.take(pad, what) != b"\0" * pad:
            raise NarError(f"NAR is malformed: non-zero padding after {what}")

    def string(self, limit: int, what: str) -> bytes:
        """A NAR string of at most ``limit`` bytes (checked before reading it)."""
        at = self.consumed
        length = self.length(what)
        if length > limit:
            raise NarError(
                f"NAR is malformed at byte {at}: {what} of {length} bytes, the limit is {limit}"
            )
        value = self.take(length, what)
        self.padding(length, what)
        return value

    def keyword(self, *expected: str) -> str:
        at = self.consumed
        word = self.string(nar.MAX_KEYWORD_LENGTH, "a keyword")
        text = word.decode(errors="backslashreplace")
        if text not in expected:
            wanted = " or ".join(repr(e) for e in expected)
            raise NarError(f"NAR is malformed at byte {at}: expected {wanted}, found {text!r}")
        return text


class _Blobs:
    """Stores file contents: small ones in background batches, large ones streamed."""

    def __init__(self, blobs: BlobService) -> None:
        self._blobs = blobs
        self._batch: list[bytes] = []
        self._digests: list[Digest] = []
        self._batch_bytes = 0
        self._in_flight: set[asyncio.Task[None]] = set()

    def small(self, data: bytes) -> Digest:
        """Queue a small file for the next batch (stored by ``flush`` once ``due``)."""
        digest = Digest.of(data)
        self._batch.append(data)
        self._digests.append(digest)
        self._batch_bytes += len(data)
        return digest

    def due(self) -> bool:
        """Whether the queued small files make a batch to store now (``flush``)."""
        return len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES

    async def flush(self) -> None:
        if not self._batch:
            return
        while len(self._in_flight) >= BATCHES_IN_FLIGHT:
            done, _ = await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self._in_flight.discard(task)
                task.result()
        batch, digests = self._batch, self._digests
        self._batch, self._digests, self._batch_bytes = [], [], 0
        self._in_flight.add(asyncio.ensure_future(self._store(batch, digests)))

    async def _store(self, batch: list[bytes], digests: list[Digest]) -> None:
        stored = await self._blobs.put_many(batch)
        if stored != digests:
            raise NarError("blob service stored a file under a different digest")

    async def large(self, source: _Input, size: int, what: str) -> Digest:
        writer = await self._blobs.open_write()
        try:
            remaining = size
            while remaining:
                part = await source.piece(remaining, what)
                await writer.write(part)
                remaining -= len(part)
        except BaseException:
            await writer.abort()
            raise
        return await writer.close()

    async def finish(self) -> None:
        await self.flush()
        while self._in_flight:
            task = self._in_flight.pop()
            await task

    async def cancel(self) -> None:
        for task in self._in_flight:
            task.cancel()
        for task in self._in_flight:
            try:
                await task
            except BaseException:
                continue  # cancelled or failed: the parse error is what counts
        self._in_flight.clear()


@dataclass
class _Frame:
    """A directory being read: its entries so far and the last name seen."""

    path: str
    entries: list[tuple[bytes, Node]]
    last_name: bytes | None = None
    pending_name: bytes | None = None


def _join(path: str, name: bytes) -> str:
    return f"{path}/{display_name(name)}" if path else display_name(name)


@dataclass(frozen=True, slots=True)
class _Large:
    """A file whose contents are to be streamed from the source into a blob."""

    size: int
    executable: bool
    what: str


def _node_body(source: _Input, blobs: _Blobs, path: str) -> Node | _Frame | _Large:
    """A node's body after ``(`` ``type``: a leaf, a new directory frame, or large contents
    to stream (the source stands at their first byte)."""
    where = repr(path) if path else "the root"
    kind = source.keyword("regular", "symlink", "directory")
    if kind == "directory":
        return _Frame(path, [])
    if kind == "symlink":
        source.keyword("target")
        target = source.string(4096, f"the symlink target of {where}")
        problem = symlink_target_problem(target)
        if problem is not None:
            raise NarError(f"NAR is malformed: {where}: {problem}")
        source.keyword(")")
        return SymlinkNode(target)
    executable = source.keyword("executable", "contents") == "executable"
    if executable:
        source.string(0, "the executable marker")  # a limit of 0: it must be empty
        source.keyword("contents")
    what = f"the contents of {where}"
    size = source.length(what)
    if size > SMALL_FILE:
        return _Large(size, executable, what)
    digest = blobs.small(source.take(size, what))
    source.padding(size, what)
    source.keyword(")")
    return FileNode(digest, size, executable)


async def _stream_large(source: _Input, blobs: _Blobs, large: _Large) -> FileNode:
    digest = await blobs.large(source, large.size, large.what)
    await source.fill()
    source.padding(large.size, large.what)
    source.keyword(")")
    return FileNode(digest, large.size, large.executable)


async def _parse(source: _Input, blobs: _Blobs) -> tuple[Node, list[Directory]]:
    await source.fill()
    source.keyword(nar.MAGIC)
    source.keyword("(")
    source.keyword("type")
    body = _node_body(source, blobs, "")
    if isinstance(body, _Large):
        body = await _stream_large(source, blobs, body)
    if not isinstance(body, _Frame):
        return body, []
    directories: list[Directory] = []
    seen: set[Digest] = set()
    stack = [body]
    while True:
        # One wait per entry: for input, and for a batch of small files to be taken.
        await source.fill()
        if blobs.due():
            await blobs.flush()
        top = stack[-1]
        word = source.keyword("entry", ")")
        if word == ")":
            # The directory is complete.
            stack.pop()
            try:
                directory = Directory(top.entries)
            except DirectoryValidationError as exc:
                raise NarError(f"NAR is malformed: {top.path or 'the root'}: {exc}") from exc
            if directory.digest not in seen:
                seen.add(directory.digest)
                directories.append(directory)
            if not stack:
                return directory.as_node(), directories
            parent = stack[-1]
            assert parent.pending_name is not None
            parent.entries.append((parent.pending_name, directory.as_node()))
            parent.pending_name = None
            source.keyword(")")  # closes the entry
            continue
        source.keyword("(")
        source.keyword("name")
        name = source.string(MAX_NAME_LENGTH, f"an entry name in {top.path or 'the root'}")
        problem = name_problem(name)
        if problem is not None:
            raise NarError(f"NAR is malformed: in {top.path or 'the root'}: {problem}")
        if top.last_name is not None and name <= top.last_name:
            order = "duplicate" if name == top.last_name else "out of order"
            raise NarError(
                f"NAR is malformed: entry {_join(top.path, name)!r} is {order} "
                f"(after {display_name(top.last_name)!r})"
            )
        top.last_name = name
        source.keyword("node")
        source.keyword("(")
        source.keyword("type")
        body = _node_body(source, blobs, _join(top.path, name))
        if isinstance(body, _Frame):
            top.pending_name = name
            stack.append(body)
            continue
        if isinstance(body, _Large):
            body = await _stream_large(source, blobs, body)
        top.entries.append((name, body))
        source.keyword(")")  # closes the entry


async def ingest_nar(
    source: ByteSource,
    blobs: BlobService,
    directories: DirectoryService,
) -> IngestedNar:
    """Read one NAR from ``source`` into the services; trailing bytes are an error."""
    stream = _Input(source)
    store = _Blobs(blobs)
    try:
        try:
            node, closure = await _parse(stream, store)
            if not await stream.at_end():
                raise NarError(
                    f"NAR is malformed: data follows the archive's end at byte {stream.consumed}"
                )
            await store.finish()
        except BaseException:
            await store.cancel()
            raise
        if closure:
            await directories.put_many(closure)
        return IngestedNar(node, stream.consumed, await stream.sha256())
    finally:
        stream.close()


def bytes_source(data: bytes) -> ByteSource:
    """A source over bytes in memory."""
    view = memoryview(data)
    position = 0

    async def read(n: int) -> bytes:
        nonlocal position
        piece = bytes(view[position : position + n])
        position += len(piece)
        return piece

    return read


def file_source(file: BinaryIO) -> ByteSource:
    """A source over a binary file object, read on a worker thread."""
    read_sync = file.read

    async def read(n: int) -> bytes:
        data: bytes = await asyncio.to_thread(read_sync, n)
        return data

    return read

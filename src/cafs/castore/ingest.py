"""Importing a file, a symlink or a directory tree into castore.

The tree is scanned first (one worker thread), so an unsupported file
anywhere is reported before anything is written. File contents are then
uploaded many at a time (hashing, compressing and disk writes release the
GIL, so both cores stay busy), and directories are sent leaves first through
a validating putter. The result is the root node.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cafs.castore.blobs.base import BlobService
from cafs.castore.directories.base import DirectoryService
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from cafs.errors import CafsError, IngestError

READ_BLOCK = 8 * 1024 * 1024
# Files at most this large are read whole and stored in batches: one worker
# thread call and one durability flush serve a whole batch.
SMALL_FILE = 1024 * 1024
BATCH_FILES = 128
BATCH_BYTES = 8 * 1024 * 1024
SMALL_BATCHES_IN_FLIGHT = 4
LARGE_FILES_IN_FLIGHT = 2


class IngestProgress(Protocol):
    """Receives progress reports; the CLI draws a bar from them."""

    def started(self, files: int, size: int) -> None: ...

    def advanced(self, files: int, size: int) -> None: ...


@dataclass(slots=True)
class _File:
    path: str
    size: int
    executable: bool
    node: FileNode | None = None


@dataclass(slots=True)
class _Dir:
    path: str
    # (name, entry): a _File, a SymlinkNode, or a _Dir (already planned, leaves first)
    entries: list[tuple[bytes, _File | SymlinkNode | _Dir]] = field(default_factory=list)
    node: DirectoryNode | None = None


@dataclass(slots=True)
class _Plan:
    root: _File | SymlinkNode | _Dir
    files: list[_File]
    dirs_leaves_first: list[_Dir]
    total_size: int


def _kind_name(mode: int) -> str:
    for test, name in (
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"an unsupported file type (mode {mode:o})"


def _plan(root_path: str) -> _Plan:
    """Scan the tree, leaves first; blocking, run in a thread."""
    files: list[_File] = []
    dirs: list[_Dir] = []

    def leaf(path: str, st: os.stat_result) -> _File | SymlinkNode | None:
        if stat.S_ISREG(st.st_mode):
            f = _File(path, st.st_size, bool(st.st_mode & stat.S_IXUSR))
            files.append(f)
            return f
        if stat.S_ISLNK(st.st_mode):
            return SymlinkNode(os.readlink(os.fsencode(path)))
        if stat.S_ISDIR(st.st_mode):
            return None
        raise IngestError(f"{path}: cannot import {_kind_name(st.st_mode)}")

    try:
        st = os.lstat(root_path)
        root = leaf(root_path, st)
        if root is not None:
            return _Plan(root, files, dirs, sum(f.size for f in files))
        top = _Dir(root_path)
        # Iterative depth-first walk; a directory is appended after its children.
        stack: list[tuple[_Dir, list[os.DirEntry[str]] | None]] = [(top, None)]
        while stack:
            current, pending = stack[-1]
            if pending is None:
                with os.scandir(current.path) as it:
                    pending = sorted(it, key=lambda e: e.name, reverse=True)
                stack[-1] = (current, pending)
            descended = False
            while pending:
                entry = pending.pop()
                name = os.fsencode(entry.name)
                entry_st = entry.stat(follow_symlinks=False)
                item = leaf(entry.path, entry_st)
                if item is None:
                    child = _Dir(entry.path)
                    current.entries.append((name, child))
                    stack.append((child, None))
                    descended = True
                    break
                current.entries.append((name, item))
            if not descended:
                stack.pop()
                dirs.append(current)
        return _Plan(top, files, dirs, sum(f.size for f in files))
    except OSError as exc:
        where = exc.filename if exc.filename is not None else root_path
        raise IngestError(f"{os.fsdecode(where)}: {exc.strerror}") from exc


async def _upload(blobs: BlobService, f: _File, report: Callable[[int, int], None]) -> FileNode:
    writer = await blobs.open_write()
    total = 0
    try:
        handle = await asyncio.to_thread(open, f.path, "rb")
        try:
            while True:
                block = await asyncio.to_thread(handle.read, READ_BLOCK)
                if not block:
                    break
                total += len(block)
                await writer.write(block)
                report(0, len(block))
        finally:
            handle.close()
    except OSError as exc:
        await writer.abort()
        raise IngestError(f"{f.path}: {exc.strerror}") from exc
    except BaseException:
        await writer.abort()
        raise
    digest = await writer.close()
    report(1, 0)
    return FileNode(digest, total, f.executable)


async def ingest_path(
    path: str | os.PathLike[str],
    blobs: BlobService,
    directories: DirectoryService,
    progress: IngestProgress | None = None,
) -> Node:
    """Import ``path`` (not following a symlink at the top) and return its root node."""
    root_path = os.fspath(Path(path))
    plan = await asyncio.to_thread(_plan, root_path)
    if progress is not None:
        progress.started(len(plan.files), plan.total_size)

    def report(files: int, size: int) -> None:
        if progress is not None:
            progress.advanced(files, size)

    small = [f for f in plan.files if f.size <= SMALL_FILE]
    large = iter([f for f in plan.files if f.size > SMALL_FILE])
    batches = iter(_batches(small))

    async def small_worker() -> None:
        for batch in batches:
            try:
                results = await blobs.put_files([f.path for f in batch])
            except OSError as exc:
                where = exc.filename if exc.filename is not None else batch[0].path
                raise IngestError(f"{os.fsdecode(where)}: {exc.strerror}") from exc
            for f, (digest, size) in zip(batch, results, strict=True):
                f.node = FileNode(digest, size, f.executable)
            report(len(batch), sum(size for _, size in results))

    async def large_worker() -> None:
        for f in large:
            f.node = await _upload(blobs, f, report)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(SMALL_BATCHES_IN_FLIGHT):
                group.create_task(small_worker())
            for _ in range(LARGE_FILES_IN_FLIGHT):
                group.create_task(large_worker())
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None

    if isinstance(plan.root, SymlinkNode):
        return plan.root
    if isinstance(plan.root, _File):
        assert plan.root.node is not None
        return plan.root.node

    putter = directories.put_multiple_start()
    for d in plan.dirs_leaves_first:
        entries: list[tuple[bytes, Node]] = []
        for name, item in d.entries:
            node = item if isinstance(item, SymlinkNode) else item.node
            assert node is not None
            entries.append((name, node))
        try:
            directory = Directory(entries)
        except CafsError as exc:
            raise IngestError(f"{d.path}: {exc}") from exc
        d.node = directory.as_node()
        await putter.put(directory)
    await putter.close()
    assert plan.root.node is not None
    return plan.root.node


def _batches(files: list[_File]) -> Iterator[list[_File]]:
    batch: list[_File] = []
    size = 0
    for f in files:
        if batch and (len(batch) >= BATCH_FILES or size + f.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += f.size
    if batch:
        yield batch


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed group: a cafs error if there is one."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    for exc in leaves:
        if isinstance(exc, CafsError):
            return exc
    return leaves[0]

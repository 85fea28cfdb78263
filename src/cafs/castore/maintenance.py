"""What garbage collection and verification ask of a backend that stores objects itself.

A backend that keeps its own objects (object storage, SQLite) implements
``Maintained``; remote backends (gRPC) do not, and gc or verify must then run
where the store lives. ``Found`` is one stored object as a sweep or a check
sees it; ``Problem`` is one thing verify found wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.nodes import DirectoryNode, FileNode, Node
from cafs.errors import CafsError, StorageError

DEFAULT_GRACE = 3600.0
"""Seconds an object is kept after it was written, whatever refers to it."""


class NotMaintainableError(CafsError):
    """A backend that gc or verify cannot reach directly (a remote one, or memory)."""


@dataclass(frozen=True, slots=True)
class Found:
    """One stored object: its kind (``chunk``, ``blob index``, ``directory``…), key and size."""

    kind: str
    key: str
    size: int


@dataclass(frozen=True, slots=True)
class Problem:
    """One object that is wrong, and why."""

    kind: str
    key: str
    reason: str


@dataclass
class Live:
    """What the roots reach: directories and blobs by digest."""

    directories: set[Digest] = field(default_factory=set)
    blobs: set[Digest] = field(default_factory=set)


@dataclass
class Cutoff:
    """Objects written at or before ``at`` may go; younger ones are kept."""

    at: float

    @classmethod
    def grace(cls, seconds: float) -> Cutoff:
        return cls(time.time() - seconds)


Report = Callable[[Problem], None]
Progress = Callable[[int], None]


@runtime_checkable
class Maintained(Protocol):
    async def collect(self, live: Live, cutoff: Cutoff, dry_run: bool) -> list[Found]:
        """Delete (or with ``dry_run`` only list) what ``live`` does not reach and is older
        than ``cutoff``; returns what was (or would be) freed."""
        ...

    async def verify(self, report: Report, progress: Progress) -> int:
        """Check every stored object, reporting each wrong one; returns how many were checked."""
        ...

    async def remove(self, problems: Sequence[Problem]) -> int:
        """Delete the objects ``problems`` name (a near cache's repair); returns how many."""
        ...


def maintained(service: object, what: str) -> Maintained:
    """``service`` as gc and verify see it, or a clear refusal."""
    if isinstance(service, Maintained):
        return service
    raise NotMaintainableError(
        f"the {what} ({type(service).__name__}) does not keep its own objects here: "
        "run gc and verify where the store lives, on its object storage or SQLite URLs"
    )


def digest_of_key(key: str) -> Digest | None:
    """The digest a ``…/b3/<shard>/<hex>`` object is named by; None for other names."""
    name = key.rsplit("/", 1)[-1]
    if len(name) != 64:
        return None
    try:
        return Digest(bytes.fromhex(name))
    except ValueError:
        return None


async def mark(roots: Iterable[Node], directories: DirectoryService, live: Live) -> None:
    """Add to ``live`` everything the root nodes reach.

    A missing directory is an error: sweeping with a hole in the mark could
    free what the hole would have reached. Run ``verify`` to find it.
    """
    for node in roots:
        if isinstance(node, FileNode):
            live.blobs.add(node.digest)
        elif isinstance(node, DirectoryNode) and node.digest not in live.directories:
            async for directory in directories.get_recursive(node.digest):
                live.directories.add(directory.digest)
                for _, child in directory:
                    if isinstance(child, FileNode):
                        live.blobs.add(child.digest)
            if node.digest not in live.directories:
                raise StorageError(f"directory {node.digest} is missing: run cafs verify")


async def pinned_roots(directories: DirectoryService) -> list[Node]:
    """The pinned digests as root nodes: a directory where one is stored, else a blob."""
    roots: list[Node] = []
    for digest in await directories.pins():
        found = await directories.get(digest)
        if found is not None:
            roots.append(DirectoryNode(digest, found.size))
        else:
            roots.append(FileNode(digest, 0))
    return roots

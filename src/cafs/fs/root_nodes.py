"""Where the names at the top of the mount come from.

The root of a mount is not a stored Directory in general: in the store mode
its names are store path basenames answered by the PathInfoService, one at a
time. A ``RootNodes`` provider answers a lookup by name and, where listing is
allowed, streams every (name, node) pair.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, Node


class RootNodes(Protocol):
    async def get_by_basename(self, name: bytes) -> Node | None:
        """The node called exactly ``name``, or None."""
        ...

    def list(self) -> AsyncIterator[tuple[bytes, Node]]:
        """Every root entry, each name once."""
        ...

    @property
    def root_digest(self) -> Digest | None:
        """The digest of the root, where the root is one stored Directory."""
        ...

    @property
    def subdirectories(self) -> int | None:
        """How many root entries are directories, where cheaply known."""
        ...

    @property
    def fixed(self) -> bool:
        """Whether the root's names never change, so the kernel may cache their absence."""
        ...


class DirectoryRootNodes:
    """The castore mode: the root is one Directory, known by digest."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self._digest = directory.digest

    async def get_by_basename(self, name: bytes) -> Node | None:
        return self._directory.get(name)

    async def list(self) -> AsyncIterator[tuple[bytes, Node]]:
        for entry in self._directory:
            yield entry

    @property
    def root_digest(self) -> Digest | None:
        return self._digest

    @property
    def fixed(self) -> bool:
        return True

    @property
    def subdirectories(self) -> int | None:
        return sum(1 for _, node in self._directory if isinstance(node, DirectoryNode))

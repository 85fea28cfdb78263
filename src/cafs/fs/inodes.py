"""What an inode stands for, and the table that hands inode numbers out.

Inodes are keyed by content, not by path: every file with the same blob and
executable bit, every symlink with the same target and every directory with
the same digest share one inode, wherever they appear. The Merkle structure is
a DAG, so numbers cannot be reserved per directory; they are handed out in the
order nodes are first met. Inodes are never freed: the content behind them is
immutable, and the kernel may ask about any number it was once given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode

ROOT_INO = 1
"""The mount root (FUSE's fixed root id); never stored in the tracker."""


@dataclass(frozen=True, slots=True)
class RegularInode:
    digest: Digest
    size: int
    executable: bool


@dataclass(frozen=True, slots=True)
class SymlinkInode:
    target: bytes


@dataclass(slots=True, eq=False)
class DirectoryInode:
    """A directory, sparse (digest and size only) until its Directory is loaded.

    Once populated, ``entries`` lists (name, inode) in name order and
    ``index`` finds an entry by name; both never change again.
    """

    digest: Digest
    size: int
    entries: list[tuple[bytes, int]] | None = None
    index: dict[bytes, int] = field(default_factory=dict)
    subdirectories: int = 0

    @property
    def populated(self) -> bool:
        return self.entries is not None


InodeData = RegularInode | SymlinkInode | DirectoryInode


def inode_data_for(node: Node) -> InodeData:
    if isinstance(node, FileNode):
        return RegularInode(node.digest, node.size, node.executable)
    if isinstance(node, SymlinkNode):
        return SymlinkInode(node.target)
    assert isinstance(node, DirectoryNode)
    return DirectoryInode(node.digest, node.size)


def _content_key(node: Node) -> tuple[object, ...]:
    if isinstance(node, FileNode):
        # The executable bit is part of the key: content-equal files that
        # differ in mode must not share one inode (and so one mode).
        return ("f", node.digest, node.executable)
    if isinstance(node, SymlinkNode):
        return ("l", node.target)
    return ("d", node.digest)


class InodeTracker:
    """Inode numbers ↔ inode data, with content-equal nodes sharing a number."""

    def __init__(self) -> None:
        self._next = ROOT_INO + 1
        self._data: dict[int, InodeData] = {}
        self._by_key: dict[tuple[object, ...], int] = {}

    def __len__(self) -> int:
        return len(self._data)

    def get(self, ino: int) -> InodeData | None:
        return self._data.get(ino)

    def put(self, node: Node) -> int:
        """The inode of ``node``'s content, allocated on first sight."""
        key = _content_key(node)
        ino = self._by_key.get(key)
        if ino is None:
            ino = self._next
            self._next += 1
            self._by_key[key] = ino
            self._data[ino] = inode_data_for(node)
        return ino

    def populate(self, ino: int, directory: Directory) -> DirectoryInode:
        """Turn a sparse directory inode into a populated one (once).

        Allocates inodes for every child; a second call for the same inode
        returns the data populated by the first.
        """
        data = self._data.get(ino)
        if not isinstance(data, DirectoryInode):
            raise KeyError(f"inode {ino} is not a directory")
        if data.entries is not None:
            return data
        entries = [(name, self.put(child)) for name, child in directory]
        data.index = dict(entries)
        data.subdirectories = sum(1 for _ in directory.directories())
        data.entries = entries
        return data

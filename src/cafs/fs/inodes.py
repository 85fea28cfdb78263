"""What an inode stands for, and the table that hands inode numbers out and takes them back.

Inodes are keyed by content, not by path: every file with the same blob and
executable bit, every symlink with the same target and every directory with
the same digest share one inode, wherever they appear. The Merkle structure is
a DAG, so numbers cannot be reserved per directory; they are handed out in the
order nodes are first met, and never reused.

An inode lives while the kernel holds it: each entry given to the kernel (a
lookup, a readdirplus entry) counts one, FORGET takes counts back, and an open
handle keeps it too. When both reach zero the inode and its data are freed.
Numbers that were handed out without a count (the ``d_ino`` of a plain
listing, a subdirectory loaded for its parent's link counts) are kept in a
bounded pool, oldest first out, so a walk that never looks anything up does
not grow the table either.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode

ROOT_INO = 1
"""The mount root (FUSE's fixed root id); never stored in the tracker."""

PINNED = 1 << 62
"""A lookup count no FORGET brings to zero (inodes taken over from a predecessor)."""

UNCOUNTED_MAX = 65536
"""Inodes kept that the kernel holds no count on (see the module's docstring)."""


@dataclass(frozen=True, slots=True)
class RegularInode:
    digest: Digest
    size: int
    executable: bool


@dataclass(frozen=True, slots=True)
class SymlinkInode:
    target: bytes


class Entries(Sequence[tuple[bytes, Node]]):
    """A loaded directory's (name, node) pairs in name order, by position.

    Only the names are kept in a list (the nodes stay in the Directory's own
    mapping): a pair per entry would cost a tuple each, for every entry of
    every directory the kernel holds.
    """

    __slots__ = ("_directory", "_names")

    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self._names = directory.names()

    def __len__(self) -> int:
        return len(self._names)

    @overload
    def __getitem__(self, index: int) -> tuple[bytes, Node]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[bytes, Node]]: ...

    def __getitem__(self, index: int | slice) -> tuple[bytes, Node] | list[tuple[bytes, Node]]:
        get = self._directory.get
        if isinstance(index, slice):
            return [(name, _node(get(name))) for name in self._names[index]]
        name = self._names[index]
        return name, _node(get(name))


def _node(node: Node | None) -> Node:
    assert node is not None
    return node


@dataclass(slots=True, eq=False)
class DirectoryInode:
    """A directory, sparse (digest and size only) until its Directory is loaded.

    Once populated, ``entries`` lists (name, node) in name order; it never
    changes again. Children are kept as nodes, not inode numbers: a child's
    inode may be forgotten and allocated anew while its parent lives.
    """

    digest: Digest
    size: int
    entries: Entries | None = None
    directory: Directory | None = None
    subdirectories: int = 0

    @property
    def populated(self) -> bool:
        return self.entries is not None

    def child(self, name: bytes) -> Node | None:
        assert self.directory is not None
        return self.directory.get(name)

    def populate(self, directory: Directory) -> None:
        """Fill in the loaded Directory (once; a later call changes nothing)."""
        if self.entries is None:
            self.directory = directory
            self.subdirectories = sum(1 for _ in directory.directories())
            self.entries = Entries(directory)


InodeData = RegularInode | SymlinkInode | DirectoryInode


def inode_data_for(node: Node) -> InodeData:
    if isinstance(node, FileNode):
        return RegularInode(node.digest, node.size, node.executable)
    if isinstance(node, SymlinkNode):
        return SymlinkInode(node.target)
    assert isinstance(node, DirectoryNode)
    return DirectoryInode(node.digest, node.size)


def node_for(data: InodeData) -> Node:
    """The node an inode's data was made from."""
    if isinstance(data, RegularInode):
        return FileNode(data.digest, data.size, data.executable)
    if isinstance(data, SymlinkInode):
        return SymlinkNode(data.target)
    return DirectoryNode(data.digest, data.size)


def _data_key(data: InodeData) -> tuple[object, ...]:
    """``_content_key`` of the node ``data`` was made from (kept once, in the data)."""
    if isinstance(data, RegularInode):
        return ("f", data.digest, data.executable)
    if isinstance(data, SymlinkInode):
        return ("l", data.target)
    return ("d", data.digest)


def _content_key(node: Node) -> tuple[object, ...]:
    if isinstance(node, FileNode):
        # The executable bit is part of the key: content-equal files that
        # differ in mode must not share one inode (and so one mode).
        return ("f", node.digest, node.executable)
    if isinstance(node, SymlinkNode):
        return ("l", node.target)
    return ("d", node.digest)


class InodeTracker:
    """Inode numbers ↔ inode data, content-equal nodes sharing a number while it lives."""

    def __init__(self, uncounted_max: int = UNCOUNTED_MAX) -> None:
        self._next = ROOT_INO + 1
        self._data: dict[int, InodeData] = {}
        self._by_key: dict[tuple[object, ...], int] = {}
        self._lookups: dict[int, int] = {}
        self._opens: dict[int, int] = {}
        self._uncounted: OrderedDict[int, None] = OrderedDict()
        self._uncounted_max = uncounted_max
        self.on_allocate: Callable[[int, Node], None] | None = None
        """Told of each new inode number before it can reach the kernel (a handover journal)."""

    def __len__(self) -> int:
        return len(self._data)

    @property
    def held(self) -> int:
        """Inodes the kernel holds a count on or has open."""
        return len(self._data) - len(self._uncounted)

    def get(self, ino: int) -> InodeData | None:
        return self._data.get(ino)

    def put(self, node: Node) -> int:
        """The inode of ``node``'s content, allocated on first sight (uncounted)."""
        key = _content_key(node)
        ino = self._by_key.get(key)
        if ino is None:
            ino = self._next
            self._next += 1
            self._by_key[key] = ino
            self._data[ino] = inode_data_for(node)
            if self.on_allocate is not None:
                self.on_allocate(ino, node)
            self._uncounted[ino] = None
            if len(self._uncounted) > self._uncounted_max:
                oldest, _ = self._uncounted.popitem(last=False)
                self._free(oldest)
        return ino

    def live(self) -> Iterator[tuple[int, Node]]:
        """Every inode still known, with the node it stands for (a compacted journal)."""
        for ino, data in list(self._data.items()):
            yield ino, node_for(data)

    def restore(self, ino: int, node: Node) -> None:
        """Take over ``ino`` from a predecessor that handed it to the kernel.

        How many references the kernel holds is not known, so the inode is
        kept for the life of this process: it is never freed.
        """
        self._data[ino] = inode_data_for(node)
        self._by_key.setdefault(_content_key(node), ino)
        self._lookups[ino] = PINNED
        self._next = max(self._next, ino + 1)

    def lookup_count(self, ino: int) -> int:
        return self._lookups.get(ino, 0)

    def remember(self, ino: int, count: int = 1) -> None:
        """The kernel was given ``ino`` ``count`` more times."""
        if ino not in self._data:
            return
        self._lookups[ino] = self._lookups.get(ino, 0) + count
        self._uncounted.pop(ino, None)

    def forget(self, ino: int, count: int) -> bool:
        """The kernel dropped ``count`` of its references; True if the inode was freed."""
        return self._drop(self._lookups, self._opens, ino, count)

    def opened(self, ino: int) -> None:
        self._opens[ino] = self._opens.get(ino, 0) + 1
        self._uncounted.pop(ino, None)

    def closed(self, ino: int) -> bool:
        """A handle on ``ino`` was released; True if that freed the inode."""
        return self._drop(self._opens, self._lookups, ino, 1)

    def _drop(self, counts: dict[int, int], others: dict[int, int], ino: int, n: int) -> bool:
        """Take ``n`` from one of an inode's counts; free it when neither is left."""
        left = counts.get(ino, 0) - n
        if left > 0:
            counts[ino] = left
            return False
        counts.pop(ino, None)
        if others.get(ino) or ino not in self._data:
            return False
        self._free(ino)
        return True

    def _free(self, ino: int) -> None:
        data = self._data.pop(ino, None)
        self._uncounted.pop(ino, None)
        if data is not None:
            key = _data_key(data)
            if self._by_key.get(key) == ino:
                del self._by_key[key]

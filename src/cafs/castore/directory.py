"""Directory: a validated, immutable listing of named nodes, addressed by digest.

The canonical encoding is the ``tvix.castore.v1.Directory`` protobuf message
with each of its three lists sorted by name and default values left out; the
digest is BLAKE3 of those bytes. Data from outside (the wire, the disk) is
always re-validated and re-encoded before it is trusted or hashed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cafs.castore.digest import Digest
from cafs.castore.nodes import (
    U64_MAX,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
    display_name,
    name_problem,
    node_from_proto_parts,
    symlink_target_problem,
)
from cafs.errors import DirectoryValidationError
from cafs.gen.tvix.castore.v1 import castore_pb2


def _fail(name: bytes, problem: str) -> DirectoryValidationError:
    return DirectoryValidationError(f"invalid directory: entry {display_name(name)!r}: {problem}")


class Directory:
    """An immutable mapping from entry name (bytes) to Node, sorted by name.

    Construction validates every rule of the data model: entry names, digest
    lengths, symlink targets, unique names and the u64 bound on ``size``.
    """

    __slots__ = ("_digest", "_entries", "_size")

    _entries: dict[bytes, Node]
    _size: int
    _digest: Digest | None

    def __init__(self, entries: Iterable[tuple[bytes, Node]] = ()) -> None:
        collected: dict[bytes, Node] = {}
        for name, node in entries:
            problem = name_problem(name)
            if problem is not None:
                raise _fail(name, problem)
            if name in collected:
                raise _fail(name, "duplicate name")
            if isinstance(node, SymlinkNode):
                problem = symlink_target_problem(node.target)
                if problem is not None:
                    raise _fail(name, problem)
            elif not isinstance(node.digest, Digest):
                raise _fail(name, "digest is not a Digest")
            collected[name] = node
        self._entries = dict(sorted(collected.items()))
        self._size = _checked_size(self._entries)
        self._digest = None

    @classmethod
    def _trusted(cls, entries: dict[bytes, Node], size: int) -> Directory:
        self = cls.__new__(cls)
        self._entries = entries
        self._size = size
        self._digest = None
        return self

    # -- mapping ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[bytes, Node]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: bytes) -> Node | None:
        return self._entries.get(name)

    def names(self) -> list[bytes]:
        return list(self._entries)

    def directories(self) -> Iterator[tuple[bytes, DirectoryNode]]:
        for name, node in self._entries.items():
            if isinstance(node, DirectoryNode):
                yield name, node

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Directory) and self._entries == other._entries

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Directory({self.digest}, {len(self)} entries)"

    # -- identity ----------------------------------------------------------------

    @property
    def size(self) -> int:
        """The ``size`` a DirectoryNode pointing here must carry.

        Counted as tvix and snix compute and enforce it (and so as their
        digests depend on it): 2 per entry, plus the size of each child
        directory. The protobuf comment describes 1 per entry; real servers
        reject closures built that way.
        """
        return self._size

    @property
    def digest(self) -> Digest:
        if self._digest is None:
            self._digest = Digest.of(self.canonical_bytes())
        return self._digest

    def as_node(self) -> DirectoryNode:
        return DirectoryNode(self.digest, self.size)

    # -- encoding ----------------------------------------------------------------

    def to_proto(self) -> castore_pb2.Directory:
        msg = castore_pb2.Directory()
        for name, node in self._entries.items():
            if isinstance(node, DirectoryNode):
                msg.directories.add(name=name, digest=node.digest, size=node.size)
            elif isinstance(node, FileNode):
                msg.files.add(
                    name=name, digest=node.digest, size=node.size, executable=node.executable
                )
            else:
                msg.symlinks.add(name=name, target=node.target)
        return msg

    def canonical_bytes(self) -> bytes:
        return self.to_proto().SerializeToString(deterministic=True)

    @classmethod
    def from_proto(cls, msg: castore_pb2.Directory) -> Directory:
        """Validate a Directory message; unknown fields are dropped (never hashed)."""
        entries: dict[bytes, Node] = {}
        lists: tuple[
            Iterable[castore_pb2.DirectoryNode | castore_pb2.FileNode | castore_pb2.SymlinkNode],
            ...,
        ] = (msg.directories, msg.files, msg.symlinks)
        for entry_list in lists:
            previous: bytes | None = None
            for part in entry_list:
                name = part.name
                problem = name_problem(name)
                if problem is not None:
                    raise _fail(name, problem)
                if previous is not None:
                    if name == previous:
                        raise _fail(name, "duplicate name")
                    if name < previous:
                        raise _fail(name, f"not sorted (comes after {display_name(previous)!r})")
                previous = name
                if name in entries:
                    raise _fail(name, "duplicate name (in another list)")
                entries[name] = node_from_proto_parts(part)
        ordered = dict(sorted(entries.items()))
        return cls._trusted(ordered, _checked_size(ordered))

    @classmethod
    def from_bytes(cls, data: bytes) -> Directory:
        msg = castore_pb2.Directory()
        try:
            msg.ParseFromString(data)
        except Exception as exc:  # protobuf raises its own DecodeError
            raise DirectoryValidationError(
                f"invalid directory: not a Directory message: {exc}"
            ) from None
        return cls.from_proto(msg)


def _checked_size(entries: dict[bytes, Node]) -> int:
    size = 0
    for name, node in entries.items():
        size += 2 + node.size if isinstance(node, DirectoryNode) else 2
        if size > U64_MAX:
            raise _fail(name, "directory size overflows u64")
    return size

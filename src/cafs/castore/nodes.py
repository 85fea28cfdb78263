"""The three kinds of node a directory entry can be, and the rules for names.

Nodes carry no name: a name belongs to the entry of the Directory holding the
node (or, for a root node, to whoever holds it: the ingest argument, a store
path). Nodes are immutable values, so equal content compares equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from cafs.castore.digest import Digest
from cafs.errors import DirectoryValidationError
from cafs.gen.tvix.castore.v1 import castore_pb2

MAX_NAME_LENGTH = 255
MAX_SYMLINK_TARGET_LENGTH = 4095
U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class DirectoryNode:
    """A directory, by the digest of its Directory and its ``size`` (nodes below it)."""

    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class FileNode:
    """A regular file, by the digest of its contents."""

    digest: Digest
    size: int
    executable: bool = False


@dataclass(frozen=True, slots=True)
class SymlinkNode:
    """A symbolic link; the target is raw bytes (any bytes but NUL)."""

    target: bytes


Node = DirectoryNode | FileNode | SymlinkNode


def display_name(name: bytes) -> str:
    """A name as text for messages, with undecodable bytes escaped."""
    return name.decode("utf-8", errors="backslashreplace")


def name_problem(name: bytes) -> str | None:
    """Why ``name`` is not a valid entry name, or None if it is."""
    if not name:
        return "name is empty"
    if name in (b".", b".."):
        return f"name {display_name(name)!r} is not allowed"
    if b"/" in name:
        return f"name {display_name(name)!r} contains '/'"
    if b"\0" in name:
        return f"name {display_name(name)!r} contains a NUL byte"
    if len(name) > MAX_NAME_LENGTH:
        return f"name is {len(name)} bytes long, the limit is {MAX_NAME_LENGTH}"
    return None


def validate_name(name: bytes) -> None:
    """Raise if ``name`` cannot be a directory entry name."""
    problem = name_problem(name)
    if problem is not None:
        raise DirectoryValidationError(f"invalid entry name: {problem}")


def symlink_target_problem(target: bytes) -> str | None:
    """Why ``target`` is not a valid symlink target, or None if it is."""
    if not target:
        return "symlink target is empty"
    if len(target) > MAX_SYMLINK_TARGET_LENGTH:
        return f"symlink target is {len(target)} bytes long, the limit is 4095"
    if b"\0" in target:
        return "symlink target contains a NUL byte"
    return None


def _digest_field(name: bytes, raw: bytes) -> Digest:
    if len(raw) != 32:
        raise DirectoryValidationError(
            f"entry {display_name(name)!r}: invalid digest length {len(raw)}, expected 32"
        )
    return Digest(raw)


def node_from_proto_parts(
    msg: castore_pb2.DirectoryNode | castore_pb2.FileNode | castore_pb2.SymlinkNode,
) -> Node:
    """Convert one entry message to a Node, checking digest length and symlink target."""
    if isinstance(msg, castore_pb2.DirectoryNode):
        return DirectoryNode(_digest_field(msg.name, msg.digest), msg.size)
    if isinstance(msg, castore_pb2.FileNode):
        return FileNode(_digest_field(msg.name, msg.digest), msg.size, msg.executable)
    problem = symlink_target_problem(msg.target)
    if problem is not None:
        raise DirectoryValidationError(f"entry {display_name(msg.name)!r}: {problem}")
    return SymlinkNode(msg.target)


def node_to_proto(name: bytes, node: Node) -> castore_pb2.Node:
    """The ``Node`` message for ``node`` under ``name`` (empty for an anonymous node)."""
    msg = castore_pb2.Node()
    if isinstance(node, DirectoryNode):
        msg.directory.name = name
        msg.directory.digest = node.digest
        msg.directory.size = node.size
    elif isinstance(node, FileNode):
        msg.file.name = name
        msg.file.digest = node.digest
        msg.file.size = node.size
        msg.file.executable = node.executable
    else:
        msg.symlink.name = name
        msg.symlink.target = node.target
    return msg


def node_from_proto(msg: castore_pb2.Node) -> tuple[bytes, Node]:
    """The name and Node of a ``Node`` message; the name may be empty (anonymous)."""
    which = msg.WhichOneof("node")
    if which is None:
        raise DirectoryValidationError("invalid node: no node kind is set")
    part: castore_pb2.DirectoryNode | castore_pb2.FileNode | castore_pb2.SymlinkNode = getattr(
        msg, which
    )
    if part.name:
        validate_name(part.name)
    return part.name, node_from_proto_parts(part)


def node_kind(node: Node) -> str:
    """``directory``, ``file`` or ``symlink``."""
    if isinstance(node, DirectoryNode):
        return "directory"
    if isinstance(node, FileNode):
        return "file"
    return "symlink"

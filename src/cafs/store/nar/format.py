"""The NAR wire format.

A NAR is a sequence of strings, each a little-endian u64 length, the bytes,
and zero padding to a multiple of 8. Its grammar:

    "nix-archive-1" node
    node  = "(" "type" ( "regular" ["executable" ""] "contents" BYTES
                       | "symlink" "target" TARGET
                       | "directory" entry* ) ")"
    entry = "entry" "(" "name" NAME "node" node ")"

Entries come in strictly ascending byte order of their names, so a tree has
exactly one NAR and therefore one NAR hash.
"""

from __future__ import annotations

import struct

MAGIC = "nix-archive-1"
# The longest keyword; anything longer where a keyword is due is an error.
MAX_KEYWORD_LENGTH = 16

_U64 = struct.Struct("<Q")


def padding(length: int) -> int:
    return -length % 8


def u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(data: bytes) -> int:
    value: int = _U64.unpack(data)[0]
    return value


def string(value: bytes) -> bytes:
    """One NAR string: length, bytes, padding."""
    return _U64.pack(len(value)) + value + b"\0" * padding(len(value))


def _tokens(*words: str) -> bytes:
    return b"".join(string(w.encode()) for w in words)


# The fixed runs of strings between the variable parts.
ARCHIVE_START = _tokens(MAGIC)
NODE_OPEN = _tokens("(", "type")
REGULAR = _tokens("regular")
EXECUTABLE = _tokens("executable", "")
CONTENTS = _tokens("contents")
SYMLINK_TARGET = _tokens("symlink", "target")
DIRECTORY = _tokens("directory")
ENTRY_NAME = _tokens("entry", "(", "name")
ENTRY_NODE = _tokens("node")
CLOSE = _tokens(")")

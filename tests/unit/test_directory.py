"""Directory encoding, digests and validation (vectors.md §2.1, survey §2.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import (
    U64_MAX,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
    node_from_proto,
    node_to_proto,
)
from cafs.errors import DirectoryValidationError
from cafs.gen.tvix.castore.v1 import castore_pb2
from tests.fixtures import (
    DIRECTORY_A,
    DIRECTORY_B,
    DIRECTORY_C,
    DIRECTORY_COMPLICATED,
    DIRECTORY_D,
    DIRECTORY_WITH_KEEP,
    EMPTY_DIGEST,
)

# fixture, size, canonical encoding (hex), digest (hex): vectors.md §2.1 (tvix size convention)
VECTORS = [
    (DIRECTORY_A, 0, "", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
    (DIRECTORY_WITH_KEEP, 2,
     "12290a052e6b6565701220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
     "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e"),
    (DIRECTORY_COMPLICATED, 8,
     "0a2a0a046b65657012208b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e1802"
     "12290a052e6b6565701220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
     "1a1e0a02616112182f6e69782f73746f72652f736f6d657768657265656c7365",
     "424a7f6ce08d805d15b428062faae96299a1675d708c3a39261afe38cdd04feb"),
    (DIRECTORY_B, 2,
     "0a250a01611220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
     "8701f4722d8dae7f2c40fa003331b8437a3825f9e1bfd3a77998c64cc226b9cc"),
    (DIRECTORY_C, 4,
     "0a250a01611220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
     "0a260a0261271220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
     "78eb200ae0cc95d4ea954655fbcf91e285013a261310e161927f2401d2bca803"),
    (DIRECTORY_D, 6,
     "0a250a01611220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
     "0a270a016212208701f4722d8dae7f2c40fa003331b8437a3825f9e1bfd3a77998c64cc226b9cc1802",
     "76cd8b55b37333961c1778ba997e57df92e219926ae5a66c414b810331a77603"),
]  # fmt: skip


@pytest.mark.parametrize(("directory", "size", "encoding", "digest"), VECTORS)
def test_directory_vectors(directory: Directory, size: int, encoding: str, digest: str) -> None:
    assert directory.size == size
    assert directory.canonical_bytes().hex() == encoding
    assert directory.digest.hex() == digest
    # Decoding the canonical bytes gives back the same directory.
    assert Directory.from_bytes(bytes.fromhex(encoding)) == directory


def test_complicated_display_digest() -> None:
    assert str(DIRECTORY_COMPLICATED.digest) == "b3:Qkp/bOCNgF0VtCgGL6rpYpmhZ11wjDo5Jhr+OM3QT+s="


def test_empty_directory_digest_equals_empty_blob_digest() -> None:
    assert DIRECTORY_A.digest == EMPTY_DIGEST


def test_unknown_fields_are_not_hashed() -> None:
    msg = DIRECTORY_WITH_KEEP.to_proto()
    data = msg.SerializeToString() + bytes.fromhex("2a03616263")  # field 5, "abc"
    assert Directory.from_bytes(data).digest == DIRECTORY_WITH_KEEP.digest


def _dir_msg(
    dirs: list[tuple[bytes, bytes, int]] = (),  # type: ignore[assignment]
    files: list[tuple[bytes, bytes, int]] = (),  # type: ignore[assignment]
    links: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> castore_pb2.Directory:
    msg = castore_pb2.Directory()
    for name, digest, size in dirs:
        msg.directories.add(name=name, digest=digest, size=size)
    for name, digest, size in files:
        msg.files.add(name=name, digest=digest, size=size)
    for name, target in links:
        msg.symlinks.add(name=name, target=target)
    return msg


D = bytes(32)

INVALID = [
    ("empty name", _dir_msg(files=[(b"", D, 0)]), "name is empty"),
    ("dot", _dir_msg(files=[(b".", D, 0)]), "not allowed"),
    ("dotdot", _dir_msg(dirs=[(b"..", D, 0)]), "not allowed"),
    ("slash", _dir_msg(links=[(b"a/b", b"x")]), "contains '/'"),
    ("nul", _dir_msg(files=[(b"a\0b", D, 0)]), "NUL"),
    ("too long", _dir_msg(files=[(b"a" * 256, D, 0)]), "limit is 255"),
    ("unsorted", _dir_msg(files=[(b"b", D, 0), (b"a", D, 0)]), "not sorted"),
    ("duplicate in a list", _dir_msg(files=[(b"a", D, 0), (b"a", D, 0)]), "duplicate name"),
    ("duplicate across lists", _dir_msg(dirs=[(b"a", D, 0)], links=[(b"a", b"x")]), "duplicate"),
    ("short dir digest", _dir_msg(dirs=[(b"a", bytes(31), 0)]), "invalid digest length 31"),
    ("long file digest", _dir_msg(files=[(b"f", bytes(33), 0)]), "invalid digest length 33"),
    ("empty file digest", _dir_msg(files=[(b"f", b"", 0)]), "invalid digest length 0"),
    ("empty target", _dir_msg(links=[(b"l", b"")]), "target is empty"),
    ("long target", _dir_msg(links=[(b"l", b"x" * 4096)]), "limit is 4095"),
    ("nul in target", _dir_msg(links=[(b"l", b"a\0")]), "NUL"),
    ("size overflow", _dir_msg(dirs=[(b"a", D, U64_MAX)]), "overflows"),
    ("size overflow sum", _dir_msg(dirs=[(b"a", D, U64_MAX // 2), (b"b", D, U64_MAX // 2)]),
     "overflows"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "msg", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_directories_are_refused(
    case: str, msg: castore_pb2.Directory, expected: str
) -> None:
    with pytest.raises(DirectoryValidationError, match=expected) as info:
        Directory.from_proto(msg)
    assert "entry" in str(info.value)  # the offending entry is named


def test_error_names_the_entry() -> None:
    with pytest.raises(DirectoryValidationError, match="'bad'"):
        Directory.from_proto(_dir_msg(files=[(b"bad", bytes(3), 0)]))


def test_valid_edge_cases() -> None:
    msg = _dir_msg(
        dirs=[(b"a" * 255, D, U64_MAX - 12)],
        links=[(b"abs", b"/x"), (b"dot", b"."), (b"dotdot", b".."), (b"long", b"y" * 4095),
               (b"raw", b"\xff\xfe")],
    )  # fmt: skip
    directory = Directory.from_proto(msg)
    assert directory.size == U64_MAX
    assert len(directory) == 6


def test_non_utf8_names_are_allowed() -> None:
    directory = Directory([(b"\xff\xfe", FileNode(Digest(D), 1))])
    assert Directory.from_bytes(directory.canonical_bytes()) == directory


def test_constructor_validates_too() -> None:
    with pytest.raises(DirectoryValidationError, match="duplicate"):
        Directory([(b"a", SymlinkNode(b"x")), (b"a", FileNode(Digest(D), 0))])
    with pytest.raises(DirectoryValidationError, match="name is empty"):
        Directory([(b"", SymlinkNode(b"x"))])


def test_anonymous_node_round_trip() -> None:
    node = DIRECTORY_COMPLICATED.as_node()
    msg = node_to_proto(b"", node)
    assert msg.SerializeToString().hex() == (
        "0a241220424a7f6ce08d805d15b428062faae96299a1675d708c3a39261afe38cdd04feb1808"
    )
    assert node_from_proto(msg) == (b"", node)
    with pytest.raises(DirectoryValidationError, match="no node kind"):
        node_from_proto(castore_pb2.Node())


# -- round trips -----------------------------------------------------------------

names = st.binary(min_size=1, max_size=20).filter(
    lambda n: n not in (b".", b"..") and b"/" not in n and b"\0" not in n
)
digests = st.binary(min_size=32, max_size=32).map(Digest)
nodes: st.SearchStrategy[Node] = st.one_of(
    st.builds(DirectoryNode, digests, st.integers(0, 2**40)),
    st.builds(FileNode, digests, st.integers(0, 2**63), st.booleans()),
    st.builds(
        SymlinkNode,
        st.binary(min_size=1, max_size=64).filter(lambda t: b"\0" not in t),
    ),
)


@given(st.dictionaries(names, nodes, max_size=12))
def test_encoding_round_trip(entries: dict[bytes, Node]) -> None:
    directory = Directory(entries.items())
    data = directory.canonical_bytes()
    decoded = Directory.from_bytes(data)
    assert decoded == directory
    assert decoded.canonical_bytes() == data
    assert decoded.digest == directory.digest == Digest.of(data)
    assert decoded.names() == sorted(entries)

"""Known-answer fixtures (reference/vectors.md §1–2)."""

from __future__ import annotations

from pathlib import Path

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import FileNode, SymlinkNode

EMPTY_BLOB = b""
HELLOWORLD_BLOB = b"Hello World!"
BLOB_A = bytes.fromhex("0001")
BLOB_B = bytes(range(255)) * 4096

EMPTY_DIGEST = Digest.of(EMPTY_BLOB)
HELLOWORLD_DIGEST = Digest.of(HELLOWORLD_BLOB)

DIRECTORY_A = Directory()
DIRECTORY_WITH_KEEP = Directory([(b".keep", FileNode(EMPTY_DIGEST, 0))])
DIRECTORY_COMPLICATED = Directory(
    [
        (b"keep", DIRECTORY_WITH_KEEP.as_node()),
        (b".keep", FileNode(EMPTY_DIGEST, 0)),
        (b"aa", SymlinkNode(b"/nix/store/somewhereelse")),
    ]
)
DIRECTORY_B = Directory([(b"a", DIRECTORY_A.as_node())])
DIRECTORY_C = Directory([(b"a", DIRECTORY_A.as_node()), (b"a'", DIRECTORY_A.as_node())])
DIRECTORY_D = Directory([(b"a", DIRECTORY_A.as_node()), (b"b", DIRECTORY_B.as_node())])


def make_complicated(root: Path) -> Path:
    """A file tree shaped like DIRECTORY_COMPLICATED."""
    (root / "keep").mkdir(parents=True)
    (root / ".keep").touch()
    (root / "keep" / ".keep").touch()
    (root / "aa").symlink_to("/nix/store/somewhereelse")
    return root

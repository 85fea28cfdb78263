"""Importing trees: vectors, file kinds, refusals, and random trees read back."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cafs.castore.blobs.base import BlobService
from cafs.castore.composition import blob_service_from_addr, directory_service_from_addr
from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService
from cafs.castore.ingest import ingest_path
from cafs.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from cafs.errors import IngestError
from tests.fixtures import DIRECTORY_COMPLICATED, HELLOWORLD_DIGEST, make_complicated


async def test_complicated_tree(
    tmp_path: Path, blob_service: BlobService, directory_service: DirectoryService
) -> None:
    node = await ingest_path(
        make_complicated(tmp_path / "complicated"), blob_service, directory_service
    )
    assert node == DirectoryNode(DIRECTORY_COMPLICATED.digest, 8)
    assert str(node.digest) == "b3:Qkp/bOCNgF0VtCgGL6rpYpmhZ11wjDo5Jhr+OM3QT+s="
    assert await directory_service.get(node.digest) == DIRECTORY_COMPLICATED


async def test_single_file_and_symlink_roots(tmp_path: Path) -> None:
    blobs = blob_service_from_addr("memory://")
    directories = directory_service_from_addr("memory://")
    f = tmp_path / "hello"
    f.write_bytes(b"Hello World!")
    f.chmod(0o755)
    assert await ingest_path(f, blobs, directories) == FileNode(HELLOWORLD_DIGEST, 12, True)
    link = tmp_path / "link"
    link.symlink_to("hello")
    assert await ingest_path(link, blobs, directories) == SymlinkNode(b"hello")


async def test_executable_is_owner_x_bit(tmp_path: Path) -> None:
    blobs = blob_service_from_addr("memory://")
    directories = directory_service_from_addr("memory://")
    for mode, expected in ((0o644, False), (0o744, True), (0o654, False), (0o645, False)):
        f = tmp_path / f"f{mode:o}"
        f.write_bytes(b"x")
        f.chmod(mode)
        node = await ingest_path(f, blobs, directories)
        assert isinstance(node, FileNode) and node.executable is expected


async def test_empty_directories_and_deep_nesting(tmp_path: Path) -> None:
    blobs = blob_service_from_addr("memory://")
    directories = directory_service_from_addr("memory://")
    deep = tmp_path / "root" / "/".join(f"d{i}" for i in range(60))
    deep.mkdir(parents=True)
    (tmp_path / "root" / "empty").mkdir()
    node = await ingest_path(tmp_path / "root", blobs, directories)
    assert isinstance(node, DirectoryNode)
    closure = [d async for d in directories.get_recursive(node.digest)]
    assert len(closure) == 61  # root, d0..d58 and the shared empty directory (d59 == empty)


@pytest.mark.parametrize("kind", ["fifo", "socket"])
async def test_special_files_are_refused_by_name(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "fine").write_bytes(b"ok")
    special = root / "sub" / "special"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(special))
        sock.close()
    blobs = blob_service_from_addr("memory://")
    expected = "a FIFO" if kind == "fifo" else "a socket"
    with pytest.raises(IngestError, match=f"{special}: cannot import {expected}"):
        await ingest_path(root, blobs, directory_service_from_addr("memory://"))
    assert not await blobs.has(Digest.of(b"ok"))  # refused before anything was written


async def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="No such file"):
        await ingest_path(
            tmp_path / "nope",
            blob_service_from_addr("memory://"),
            directory_service_from_addr("memory://"),
        )


# -- random trees, read back through the services -----------------------------------

NAME = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)

TREE = st.recursive(
    st.one_of(
        st.tuples(st.just("file"), st.binary(max_size=3000), st.booleans()),
        st.tuples(st.just("link"), NAME),
    ),
    lambda children: st.dictionaries(NAME, children, max_size=5),
    max_leaves=25,
)


def materialise(path: Path, tree: object) -> None:
    if isinstance(tree, dict):
        path.mkdir()
        for name, child in tree.items():
            materialise(path / name, child)
    elif tree[0] == "file":  # type: ignore[index]
        _, data, executable = tree  # type: ignore[misc]
        path.write_bytes(data)
        path.chmod(0o755 if executable else 0o644)
    else:
        path.symlink_to(tree[1])  # type: ignore[index]


async def compare(
    path: Path, node: Node, blobs: BlobService, directories: DirectoryService
) -> None:
    st_ = os.lstat(path)
    if isinstance(node, SymlinkNode):
        assert stat.S_ISLNK(st_.st_mode)
        assert node.target == os.readlink(os.fsencode(path))
    elif isinstance(node, FileNode):
        assert stat.S_ISREG(st_.st_mode)
        assert node.executable == bool(st_.st_mode & 0o100)
        data = path.read_bytes()
        assert node.size == len(data)
        assert await blobs.read_all(node.digest) == data
    else:
        directory = await directories.get(node.digest)
        assert directory is not None
        assert directory.size == node.size
        assert sorted(os.fsencode(n) for n in os.listdir(path)) == directory.names()
        for name, child in directory:
            await compare(path / os.fsdecode(name), child, blobs, directories)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=st.dictionaries(NAME, TREE, max_size=6))
async def test_random_trees_read_back(
    tmp_path_factory: pytest.TempPathFactory,
    blob_service: BlobService,
    directory_service: DirectoryService,
    tree: dict[str, object],
) -> None:
    root = tmp_path_factory.mktemp("tree") / "root"
    materialise(root, tree)
    node = await ingest_path(root, blob_service, directory_service)
    await compare(root, node, blob_service, directory_service)

"""The store mode of the mount: root names are store path basenames from the PathInfoService."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from tests.mount.conftest import expect_errno, mounted_store
from tests.process import cafs


def make_paths(root: Path) -> list[Path]:
    tree = root / "hello-tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "greeting").write_text("hello\n")
    (tree / "bin" / "run").write_text("#!/bin/sh\necho ran\n")
    (tree / "bin" / "run").chmod(0o755)
    single = root / "single-file"
    single.write_bytes(b"\x00\x01" * 70_000)
    link = root / "a-link"
    link.symlink_to("/nix/store/somewhereelse")
    return [tree, single, link]


def test_store_paths_are_served_by_exact_basename(tmp_path: Path) -> None:
    sources = make_paths(tmp_path / "src")
    home = tmp_path / "home"
    printed = cafs("import", *map(str, sources), home=home).stdout.split()
    basenames = [p.removeprefix("/nix/store/") for p in printed]
    assert [b.split("-", 1)[1] for b in basenames] == ["hello-tree", "single-file", "a-link"]
    tree, single, link = basenames

    with mounted_store(tmp_path / "mnt", home) as mount:
        mnt = mount.path
        assert (mnt / tree / "greeting").read_text() == "hello\n"
        assert os.access(mnt / tree / "bin" / "run", os.X_OK)
        assert (mnt / single).read_bytes() == sources[1].read_bytes()
        assert os.readlink(mnt / link) == "/nix/store/somewhereelse"
        assert os.getxattr(mnt / tree, "user.tvix.castore.directory.digest").startswith(b"b3:")
        # The hash part alone is not enough: the name must match too.
        hash_part = tree.split("-", 1)[0]
        expect_errno(errno.ENOENT, os.lstat, mnt / f"{hash_part}-other-name")
        expect_errno(errno.ENOENT, os.lstat, mnt / "not-a-store-path")
        expect_errno(errno.ENOENT, os.lstat, mnt / ("0" * 32 + "-hello-tree"))
        # Without --list-root the root cannot be listed (tvix-store's default).
        expect_errno(errno.EPERM, os.listdir, mnt)

    with mounted_store(tmp_path / "mnt-listed", home, "--list-root") as mount:
        assert sorted(os.listdir(mount.path)) == sorted(basenames)
        assert (mount.path / tree / "greeting").read_text() == "hello\n"

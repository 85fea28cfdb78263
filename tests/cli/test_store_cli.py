"""The Nix-layer commands (import, nar dump/import, path-info, copy) as a user runs them.

Every expected store path and NAR here is computed by the test itself: the
NAR by a small encoder written from the format's grammar (not cafs's), the
path from that NAR's sha256 with ``ca_store_path``. Each CLI process costs
about half a second, so work is batched into few invocations.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cafs.store import nixbase32
from cafs.store.hashes import CAHash, NixHash
from cafs.store.narinfo import NarInfo
from cafs.store.storepath import StorePath, ca_store_path
from tests.fixtures import make_complicated
from tests.process import CAFS, cafs, cafs_bytes, store_env

NOT_FOUND, INVALID, CORRUPT, UNREACHABLE = 3, 4, 5, 6
"""Exit codes (README: exit codes), written out here rather than imported."""

# -- an independent NAR encoder ---------------------------------------------------------


def nar_string(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data + bytes(-len(data) % 8)


def tokens(*words: bytes) -> bytes:
    return b"".join(nar_string(w) for w in words)


def nar_node(path: Path) -> bytes:
    """The NAR node of a file, symlink or directory on disk (entries in byte order)."""
    if path.is_symlink():
        return tokens(b"(", b"type", b"symlink", b"target", os.readlink(os.fsencode(path)), b")")
    if path.is_dir():
        body = b"".join(
            tokens(b"entry", b"(", b"name", name, b"node")
            + nar_node(path / os.fsdecode(name))
            + tokens(b")")
            for name in sorted(os.fsencode(n) for n in os.listdir(path))
        )
        return tokens(b"(", b"type", b"directory") + body + tokens(b")")
    marker = tokens(b"executable", b"") if os.stat(path).st_mode & 0o100 else b""
    return tokens(b"(", b"type", b"regular") + marker + tokens(b"contents", path.read_bytes(), b")")


def nar_of(path: Path) -> bytes:
    return nar_string(b"nix-archive-1") + nar_node(path)


def expected_path(name: str, nar: bytes) -> StorePath:
    return ca_store_path(name, CAHash("nar", NixHash("sha256", hashlib.sha256(nar).digest())))


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], message: str, code: int = 1
) -> None:
    """One line on stderr, and the exit code of its kind (README: exit codes)."""
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def cafs_stdin(*args: str, home: Path, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CAFS, *args],
        env=store_env(home),
        input=data,
        capture_output=True,
        check=False,
        timeout=300,
    )


# -- import, dump, path-info ------------------------------------------------------------


def make_sources(root: Path) -> list[Path]:
    """A tree (the vectors' complicated one, plus a larger and an executable file),
    a single file and a top-level symlink."""
    tree = make_complicated(root / "complicated")
    hello = root / "hello.txt"
    hello.write_bytes(b"Hello World!")
    link = root / "link"
    link.symlink_to("/nix/store/somewhereelse")
    return [tree, hello, link]


def test_import_dump_and_path_info(tmp_path: Path) -> None:
    home = tmp_path / "home"
    sources = make_sources(tmp_path / "src")
    printed = cafs("import", *map(str, sources), home=home).stdout.splitlines()
    nars = [nar_of(source) for source in sources]
    expected = [expected_path(s.name, nar) for s, nar in zip(sources, nars, strict=True)]
    assert printed == [p.absolute for p in expected]
    # The known answer of vectors.md §10 for a tree named "complicated".
    assert printed[0] == "/nix/store/pngqdzggfqs4q7fg6iywqnlzcgsp85qr-complicated"
    assert len(nars[0]) == 840
    for path, nar in zip(expected, nars, strict=True):
        assert cafs_bytes("nar", "dump", path.absolute, home=home) == nar
        text = cafs("path-info", path.basename, home=home).stdout  # a basename works too
        info = NarInfo.parse(text)
        nar_hash = NixHash("sha256", hashlib.sha256(nar).digest())
        assert info.store_path == path
        assert info.nar_hash == nar_hash
        assert info.nar_size == len(nar)
        assert info.ca == CAHash("nar", nar_hash)
        assert info.references == []
        assert info.compression is None
        assert f"NarHash: sha256:{nixbase32.encode(nar_hash.digest)}\n" in text
        assert info.render() == text


def test_import_of_large_and_executable_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tree = tmp_path / "bundle"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "run").write_bytes(b"#!/bin/sh\necho hi\n")
    (tree / "bin" / "run").chmod(0o755)
    (tree / "data").write_bytes(random.Random(1).randbytes(3 * 1024 * 1024 + 17))
    (tree / "bin" / "alias").symlink_to("run")
    nar = nar_of(tree)
    path = expected_path("bundle", nar)
    assert cafs("import", str(tree), home=home).stdout == path.absolute + "\n"
    assert cafs_bytes("nar", "dump", path.absolute, home=home) == nar


# -- nar import -------------------------------------------------------------------------


def test_nar_import_from_files_and_stdin(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "src"
    tree = src / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x").write_bytes(b"x" * 70_000)  # the streamed (large-file) path
    (tree / "tool").write_bytes(b"\x7fELF")
    (tree / "tool").chmod(0o755)
    (tree / "to-sub").symlink_to("sub")
    tree_nar = nar_of(tree)
    nar_file = tmp_path / "tree.nar"
    nar_file.write_bytes(tree_nar)
    file_nar = nar_string(b"nix-archive-1") + tokens(
        b"(", b"type", b"regular", b"contents", b"one", b")"
    )
    other = tmp_path / "whatever"
    other.write_bytes(file_nar)

    out = cafs("nar", "import", str(nar_file), home=home).stdout
    assert out == expected_path("tree", tree_nar).absolute + "\n"  # name: file name sans .nar
    out = cafs("nar", "import", "--name", "one.txt", str(other), home=home).stdout
    assert out == expected_path("one.txt", file_nar).absolute + "\n"
    piped = cafs_stdin("nar", "import", "--name", "piped", "-", home=home, data=tree_nar)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode() == expected_path("piped", tree_nar).absolute + "\n"

    for name, nar in (("tree", tree_nar), ("one.txt", file_nar), ("piped", tree_nar)):
        assert cafs_bytes("nar", "dump", expected_path(name, nar).absolute, home=home) == nar

    usage = cafs_stdin("nar", "import", "-", home=home, data=tree_nar)
    assert usage.returncode == 2
    assert b"--name is needed when the NAR comes from standard input" in usage.stderr


def test_malformed_nar_import_leaves_no_path(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tree = make_complicated(tmp_path / "src" / "bad")
    good = nar_of(tree)
    bad = good[:-16] + tokens(b"(")  # the last ")" replaced
    nar_file = tmp_path / "bad.nar"
    nar_file.write_bytes(bad)
    result = cafs("nar", "import", str(nar_file), home=home, check=False)
    assert_one_line_error(
        result, "NAR is malformed at byte 824: expected 'entry' or ')', found '('\n", INVALID
    )
    truncated = tmp_path / "truncated.nar"
    truncated.write_bytes(good[:500])
    result = cafs("nar", "import", "--name", "bad", str(truncated), home=home, check=False)
    assert_one_line_error(result, "NAR is truncated", INVALID)
    # Neither the path a correct import makes nor one named after the bad bytes exists.
    for nar in (good, bad):
        path = expected_path("bad", nar).absolute
        result = cafs("path-info", path, home=home, check=False)
        assert_one_line_error(result, f"{path} is not in the store", NOT_FOUND)


# -- refusals ---------------------------------------------------------------------------


def test_bad_names_and_unknown_paths_are_one_line_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for name, bad in (("a b", "' '"), ("ünï", "'ü'")):
        source = tmp_path / name
        source.mkdir()
        result = cafs("import", str(source), home=home, check=False)
        assert_one_line_error(
            result,
            f"{source}: {name!r} cannot name a store path: character {bad} at position",
            INVALID,
        )
    result = cafs("path-info", "not-a-path", home=home, check=False)
    assert_one_line_error(result, "invalid store path 'not-a-path'", INVALID)
    result = cafs("nar", "import", str(tmp_path / "missing.nar"), home=home, check=False)
    assert_one_line_error(result, f"cannot open {tmp_path / 'missing.nar'}: No such file")

    right = tmp_path / "rightname"
    right.write_bytes(b"right")
    imported = StorePath.parse(cafs("import", str(right), home=home).stdout.strip())
    assert imported.name == "rightname"
    wrong = StorePath(imported.digest, "wrongname")
    for command in (("nar", "dump"), ("path-info",)):
        result = cafs(*command, wrong.absolute, home=home, check=False)
        assert_one_line_error(result, f"{wrong.absolute} is not in the store", NOT_FOUND)


# -- copy -------------------------------------------------------------------------------


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def closure_entry(path: str, nar: bytes, **extra: object) -> dict[str, object]:
    digest = hashlib.sha256(nar).digest()
    return {
        "path": path,
        "narHash": NixHash("sha256", digest).to_sri(),
        "narSize": len(nar),
        "references": [],
        **extra,
    }


def test_copy_refuses_bad_closure_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = tmp_path / "missing.json"
    absent = f"/nix/store/{nixbase32.encode(bytes(range(20)))}-cafs-test-absent"
    cases = [
        (missing, f"cannot read {missing}: No such file or directory", INVALID),
        (tmp_path / "broken.json", f"{tmp_path / 'broken.json'} is not valid JSON", INVALID),
        (
            write_json(tmp_path / "nokey.json", {"other": []}),
            f"{tmp_path / 'nokey.json'} has no 'closure' list",
            INVALID,
        ),
        (
            write_json(
                tmp_path / "nohash.json",
                {"closure": [{"path": absent, "narSize": 1, "references": []}]},
            ),
            f"closure entry {absent}: field 'narHash' is missing",
            INVALID,
        ),
        (
            write_json(tmp_path / "absent.json", {"closure": [closure_entry(absent, b"x")]}),
            f"{absent}: No such file or directory\n",
            1,
        ),
    ]
    (tmp_path / "broken.json").write_text('{"closure": [')
    for file, message, code in cases:
        result = cafs("copy", str(file), home=home, check=False)
        assert_one_line_error(result, message, code)


@pytest.fixture
def nix_added(tmp_path: Path) -> Iterator[list[tuple[Path, StorePath, bytes]]]:
    """Two unique paths put into the real /nix/store by Nix itself; deleted afterwards."""
    if shutil.which("nix-store") is None:
        pytest.skip("Nix is not installed (the real-Nix compat suite covers copy)")
    if not os.access("/nix/store", os.W_OK):
        pytest.skip("/nix/store is not writable (the real-Nix compat suite covers copy)")
    unique = uuid.uuid4().hex.encode()
    tree = tmp_path / "nix" / "cafs-test-tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "id").write_bytes(unique)
    (tree / "big").write_bytes(random.Random(unique).randbytes(300_000))
    (tree / "run").write_bytes(b"#!/bin/sh\n" + unique)
    (tree / "run").chmod(0o755)
    (tree / "link").symlink_to("sub/id")
    single = tmp_path / "nix" / "cafs-test-file"
    single.write_bytes(b"single " + unique)
    added: list[tuple[Path, StorePath, bytes]] = []
    try:
        for source in (tree, single):
            result = subprocess.run(
                ["nix-store", "--add", str(source)], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                pytest.skip(f"nix-store --add does not work here: {result.stderr.strip()}")
            added.append((source, StorePath.parse(result.stdout.strip()), nar_of(source)))
        yield added
    finally:
        for _, path, _ in added:
            subprocess.run(
                ["nix-store", "--delete", path.absolute], capture_output=True, check=False
            )


def test_copy_from_the_nix_store(
    tmp_path: Path, nix_added: list[tuple[Path, StorePath, bytes]]
) -> None:
    home = tmp_path / "home"
    (tree, tree_path, tree_nar), (single, single_path, single_nar) = nix_added
    # Nix and the test's own encoder agree on the NAR, hence on the path.
    assert tree_path == expected_path(tree.name, tree_nar)
    assert single_path == expected_path(single.name, single_nar)
    closure = write_json(
        tmp_path / "closure.json",
        {
            "closure": [
                closure_entry(single_path.absolute, single_nar),
                closure_entry(
                    tree_path.absolute,
                    tree_nar,
                    references=[single_path.absolute],
                    ca=CAHash("nar", NixHash.of("sha256", tree_nar)).to_nix_string(),
                ),
            ]
        },
    )
    copied = cafs("copy", str(closure), home=home).stdout.splitlines()
    assert sorted(copied) == sorted([single_path.absolute, tree_path.absolute])
    # Everything is present now: a second copy copies nothing.
    assert cafs("copy", str(closure), home=home).stdout == ""
    assert cafs_bytes("nar", "dump", tree_path.absolute, home=home) == tree_nar
    info = NarInfo.parse(cafs("path-info", tree_path.absolute, home=home).stdout)
    assert info.references == [single_path]
    assert info.nar_hash == NixHash.of("sha256", tree_nar)
    assert info.nar_size == len(tree_nar)
    assert info.ca == CAHash("nar", NixHash.of("sha256", tree_nar))

    # A listed hash that does not match what is on disk is refused, and not recorded.
    lying = write_json(
        tmp_path / "lying.json",
        {"closure": [closure_entry(single_path.absolute, single_nar + b"!")]},
    )
    other_home = tmp_path / "other"
    result = cafs("copy", str(lying), home=other_home, check=False)
    assert_one_line_error(result, f"{single_path.absolute} on disk does not match", CORRUPT)
    result = cafs("path-info", single_path.absolute, home=other_home, check=False)
    assert_one_line_error(result, f"{single_path.absolute} is not in the store", NOT_FOUND)

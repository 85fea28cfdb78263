"""The ``cafs`` command, run as a user runs it: a real process on a real store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import blake3
import pytest
import zstandard

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.gen.tvix.castore.v1 import rpc_blobstore_pb2
from tests.fixtures import make_complicated
from tests.process import CAFS, cafs, cafs_bytes, store_env

COMPLICATED = "b3:Qkp/bOCNgF0VtCgGL6rpYpmhZ11wjDo5Jhr+OM3QT+s="


def test_ingest_complicated_prints_vector_digest(tmp_path: Path) -> None:
    tree = make_complicated(tmp_path / "complicated")
    out = cafs("castore", "ingest", str(tree), home=tmp_path / "home")
    assert out.stdout == f"{tree}: directory {COMPLICATED} size 8\n"
    assert out.stderr == ""  # quiet when not on a terminal


def test_ls_and_cat_read_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tree = make_complicated(tmp_path / "t")
    (tree / "hello").write_bytes(b"Hello World!")
    (tree / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    line = cafs("castore", "ingest", str(tree), home=home).stdout
    digest = line.split()[2]
    listing = cafs("castore", "ls", "-r", digest, home=home).stdout.splitlines()
    names = [row.split()[-1] if "->" not in row else row.split()[-3] for row in listing]
    assert names == [".keep", "aa", "hello", "keep/", "keep/.keep", "run.sh"]
    assert listing[1].endswith("aa -> /nix/store/somewhereelse")
    assert listing[5].startswith("executable")
    hello = next(row for row in listing if row.endswith("hello")).split()[1]
    assert hello == str(Digest.of(b"Hello World!"))
    assert cafs("castore", "cat", hello, home=home).stdout == "Hello World!"
    # The hex form is accepted too.
    assert cafs("castore", "cat", Digest.parse(hello).hex(), home=home).stdout == "Hello World!"


def test_cat_of_a_large_file_is_byte_exact(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(5 * 1024 * 1024 + 3)
    src = tmp_path / "big"
    src.write_bytes(data)
    home = tmp_path / "home"
    digest = cafs("castore", "ingest", str(src), home=home).stdout.split()[2]
    assert cafs_bytes("castore", "cat", digest, home=home) == data


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["castore", "cat", "b3:" + "A" * 43 + "="], "error: blob b3:AAAA", 3),
        (["castore", "ls", COMPLICATED], "error: directory b3:Qkp/", 3),
        (["castore", "cat", "nonsense"], "error: invalid digest 'nonsense'", 4),
        (["castore", "ingest", "/does/not/exist"], "error: /does/not/exist: No such file", 1),
        (["castore", "ls", "--blob-service-addr", "bogus://x", COMPLICATED],
         "error: invalid service address 'bogus://x': unknown blob service scheme", 4),
        (["castore", "ls", "--directory-service-addr", "sqlite:///", COMPLICATED],
         "error: invalid service address 'sqlite:///': refusing", 4),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_the_exit_code_of_their_kind(
    tmp_path: Path, args: list[str], message: str, code: int
) -> None:
    """3 not found, 4 invalid input, 1 anything else (README: exit codes)."""
    result = cafs(*args, home=tmp_path / "home", check=False)
    assert result.returncode == code
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_env_addresses_are_used(tmp_path: Path) -> None:
    tree = make_complicated(tmp_path / "t")
    env_home = tmp_path / "elsewhere"
    result = cafs(
        "castore",
        "ingest",
        str(tree),
        home=tmp_path / "home",
        BLOB_SERVICE_ADDR=f"objectstore+file://{env_home}/o",
        DIRECTORY_SERVICE_ADDR=f"sqlite://{env_home}/d.sqlite",
    )
    assert COMPLICATED in result.stdout
    assert (env_home / "d.sqlite").exists()
    assert not (tmp_path / "home").exists()


def test_fifo_is_refused_by_name(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    os.mkfifo(tree / "pipe")
    result = cafs("castore", "ingest", str(tree), home=tmp_path / "home", check=False)
    assert result.returncode == 1
    assert result.stderr == f"error: {tree / 'pipe'}: cannot import a FIFO\n"


def make_tree(root: Path, files: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"d{i % 37}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(rng.randbytes(rng.randrange(0, 20000)))


def test_two_processes_share_one_embedded_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    trees = [tmp_path / "a", tmp_path / "b"]
    for seed, tree in enumerate(trees):
        make_tree(tree, 400, seed)
    procs = [
        subprocess.Popen(
            [*CAFS, "castore", "ingest", str(tree)],
            env=store_env(home),
            stdout=subprocess.PIPE,
            text=True,
        )
        for tree in trees
    ]
    digests = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        digests.append(out.split()[2])
    for digest in digests:
        listing = cafs("castore", "ls", "-r", digest, home=home).stdout.splitlines()
        assert sum(1 for row in listing if row.startswith("file")) == 400


def check_store_integrity(home: Path) -> int:
    """Every visible object holds exactly what its name promises; returns how many."""
    objects = home / "objects"
    dctx = zstandard.ZstdDecompressor()
    chunks: set[str] = set()
    for path in (objects / "chunks").rglob("*") if (objects / "chunks").exists() else []:
        if path.is_file():
            data = dctx.stream_reader(path.read_bytes()).read()
            assert blake3.blake3(data).hexdigest() == path.name, f"corrupt chunk {path}"
            chunks.add(path.name)
    blobs = len(chunks)
    for path in (objects / "blobs").rglob("*") if (objects / "blobs").exists() else []:
        if not path.is_file():
            continue
        blobs += 1
        index = rpc_blobstore_pb2.StatBlobResponse.FromString(path.read_bytes())
        if not index.chunks:
            empty = path.name == blake3.blake3(b"").hexdigest()
            assert empty or path.name in chunks, f"index {path} without its chunk"
            continue
        hasher = blake3.blake3()
        for chunk in index.chunks:
            assert chunk.digest.hex() in chunks, f"index {path} lists a missing chunk"
            hasher.update(
                dctx.stream_reader(
                    (
                        objects / "chunks/b3" / chunk.digest.hex()[:4] / chunk.digest.hex()
                    ).read_bytes()
                ).read()
            )
        assert hasher.hexdigest() == path.name
    import sqlite3

    db = home / "directories.sqlite"
    if db.exists():
        with sqlite3.connect(db) as conn:
            # A kill between creating the file and its schema leaves an empty
            # database, which the next open completes.
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            rows = conn.execute("SELECT digest, data FROM directories") if tables else []
            for digest, data in rows:
                assert Directory.from_bytes(data).digest == digest
    return blobs


def test_kill_during_ingest_leaves_no_wrong_blob(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, 1500, 11)
    (tree / "large").write_bytes(random.Random(5).randbytes(48 * 1024 * 1024))
    home = tmp_path / "home"
    for delay in (0.3, 0.8, 1.5, 2.5):
        proc = subprocess.Popen(
            [*CAFS, "castore", "ingest", str(tree)],
            env=store_env(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        check_store_integrity(home)
    # The store recovers: a full ingest afterwards succeeds and reads back.
    out = cafs("castore", "ingest", str(tree), home=home).stdout
    listing = cafs("castore", "ls", "-r", out.split()[2], home=home).stdout.splitlines()
    large = next(row for row in listing if row.endswith("/large") or row.endswith(" large"))
    data = cafs_bytes("castore", "cat", large.split()[1], home=home)
    assert data == (tree / "large").read_bytes()
    assert check_store_integrity(home) >= 1500
    # Temporary files of the killed processes were swept by the next run.
    assert not list((home / "objects" / "tmp").iterdir())

"""``cafs gc``, ``cafs verify`` and pins, run as a user runs them on real stores.

Two layouts: the embedded default (object files plus SQLite) and a store
that lives entirely in one object-store folder. "Exactly the dead objects"
is checked against a second store that only ever held the live paths: after
gc, both hold the same objects, key for key.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.test_store_cli import nar_of
from tests.process import CAFS, cafs, cafs_bytes, store_env

CORRUPT = 5
LAYOUTS = ("embedded", "objectstore")


def layout_env(home: Path, layout: str) -> dict[str, str]:
    if layout == "embedded":
        return {}
    url = f"objectstore+file://{home}/bucket"
    return {
        "BLOB_SERVICE_ADDR": url,
        "DIRECTORY_SERVICE_ADDR": url,
        "PATH_INFO_SERVICE_ADDR": url,
    }


def run(
    *args: str, home: Path, layout: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return cafs(*args, home=home, check=check, **layout_env(home, layout))


def make_tree(root: Path, seed: int, files: int = 6, big: int = 0) -> Path:
    """Files of random bytes in two levels; ``big`` bytes more in one file (several chunks)."""
    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        where = root if i % 2 else root / "sub"
        (where / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, 5000)))
    if big:
        (root / "big").write_bytes(rng.randbytes(big))
    (root / "link").symlink_to("sub/f0")
    return root


def object_root(home: Path, layout: str) -> Path:
    return home / ("objects" if layout == "embedded" else "bucket")


def stored_objects(home: Path, layout: str) -> set[str]:
    """Every object of a store, by key (directories in SQLite by their digest)."""
    root = object_root(home, layout)
    found = {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in ("tmp", "pathinfos", "pins")
    }
    if layout == "embedded":
        with sqlite3.connect(home / "directories.sqlite") as db:
            found |= {bytes(row[0]).hex() for row in db.execute("SELECT digest FROM directories")}
    return found


def age_everything(home: Path, layout: str, seconds: float) -> None:
    """Make every object look written ``seconds`` ago."""
    then = time.time() - seconds
    for path in object_root(home, layout).rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))
    if layout == "embedded":
        with sqlite3.connect(home / "directories.sqlite") as db:
            db.execute("UPDATE directories SET written = ?", (then,))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gc_frees_exactly_the_dead_objects(tmp_path: Path, layout: str) -> None:
    live = [make_tree(tmp_path / "live1", 1, big=1_500_000), make_tree(tmp_path / "live2", 2)]
    dead = [make_tree(tmp_path / "dead1", 3, big=700_000), make_tree(tmp_path / "dead2", 4)]
    # Shares a file with a live tree: that blob must stay.
    (dead[1] / "shared").write_bytes((live[0] / "sub" / "f0").read_bytes())

    only_live, home = tmp_path / "only-live", tmp_path / "home"
    run("import", *map(str, live), home=only_live, layout=layout)
    paths = run("import", *map(str, live), home=home, layout=layout).stdout.split()
    run("castore", "ingest", *map(str, dead), home=home, layout=layout)
    before = stored_objects(home, layout)
    expected_dead = before - stored_objects(only_live, layout)
    assert expected_dead

    # Young objects are kept whatever refers to them.
    kept = run("gc", "--dry-run", home=home, layout=layout)
    assert kept.stdout == "" and "would free 0 objects" in kept.stderr

    dry = run("gc", "--dry-run", "--grace", "0", home=home, layout=layout)
    listed = {line.split("\t")[1] for line in dry.stdout.splitlines()}
    assert listed == expected_dead
    assert stored_objects(home, layout) == before  # a dry run deletes nothing

    freed = run("gc", "--grace", "0", home=home, layout=layout)
    assert f"freed {len(expected_dead)} objects" in freed.stderr
    assert stored_objects(home, layout) == stored_objects(only_live, layout)
    again = run("gc", "--dry-run", "--grace", "0", home=home, layout=layout)
    assert again.stdout == ""
    run("verify", "--nar", home=home, layout=layout)
    for source, path in zip(live, paths, strict=True):
        assert cafs_bytes("nar", "dump", path, home=home, **layout_env(home, layout)) == nar_of(
            source
        )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gc_keeps_what_an_import_in_flight_reuses(tmp_path: Path, layout: str) -> None:
    """Objects that an import finds already stored count as written anew."""
    home = tmp_path / "home"
    reused = make_tree(tmp_path / "reused", 5, big=600_000)
    forgotten = make_tree(tmp_path / "forgotten", 6)
    run("castore", "ingest", str(reused), str(forgotten), home=home, layout=layout)
    age_everything(home, layout, 7200)
    # An import that has stored its content but not yet its PathInfo:
    run("castore", "ingest", str(reused), home=home, layout=layout)
    before = stored_objects(home, layout)
    run("gc", "--grace", "1h", home=home, layout=layout)
    after = stored_objects(home, layout)
    # Its PathInfo lands after the gc: everything it names is there.
    path = run("import", str(reused), home=home, layout=layout).stdout.strip()
    run("verify", "--nar", home=home, layout=layout)
    assert cafs_bytes("nar", "dump", path, home=home, **layout_env(home, layout)) == nar_of(reused)
    assert len(after) < len(before)  # the forgotten tree went


def test_gc_alongside_running_imports_loses_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    trees = [make_tree(tmp_path / f"t{i}", 10 + i, files=40, big=400_000) for i in range(4)]
    importer = subprocess.Popen(
        [*CAFS, "import", *map(str, trees)],
        env=store_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        rounds = 0
        while importer.poll() is None or rounds == 0:
            cafs("gc", "--grace", "30s", home=home)
            rounds += 1
        out, err = importer.communicate(timeout=120)
    finally:
        if importer.poll() is None:
            importer.kill()
            importer.wait()
    assert importer.returncode == 0, err
    cafs("gc", "--grace", "30s", home=home)
    cafs("verify", "--nar", home=home)
    for tree, path in zip(trees, out.decode().split(), strict=True):
        assert cafs_bytes("nar", "dump", path, home=home) == nar_of(tree)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_verify_finds_each_kind_of_damage(tmp_path: Path, layout: str) -> None:
    home = tmp_path / "home"
    tree = make_tree(tmp_path / "tree", 7, big=1_200_000)
    path = run("import", str(tree), home=home, layout=layout).stdout.strip()
    run("verify", "--nar", home=home, layout=layout)
    root = object_root(home, layout)
    chunk = files_under(root / "chunks")[0]
    index = next(p for p in (root / "blobs").rglob("*") if p.is_file())
    flip_byte(chunk, len(chunk.read_bytes()) // 2)
    index.write_bytes(index.read_bytes()[: len(index.read_bytes()) // 2])
    if layout == "embedded":
        with sqlite3.connect(home / "directories.sqlite") as db:
            digest = db.execute("SELECT digest FROM directories LIMIT 1").fetchone()[0]
            db.execute("UPDATE directories SET data = data || x'00' WHERE digest = ?", (digest,))
        directory_key = bytes(digest).hex()
    else:
        single = files_under(root / "directories")[0]
        flip_byte(single, 3)
        directory_key = str(single.relative_to(root))

    result = run("verify", "--nar", home=home, layout=layout, check=False)
    assert result.returncode == CORRUPT
    problems = {line.split("\t")[0]: line for line in result.stdout.splitlines()}
    assert str(chunk.relative_to(root)) in problems["chunk"]
    assert str(index.relative_to(root)) in problems["blob index"]
    assert directory_key in result.stdout
    assert path in problems["path info"]  # its NAR can no longer be rendered
    assert "problems found" in result.stderr


def test_verify_nar_finds_a_path_info_whose_nar_hash_lies(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tree = make_tree(tmp_path / "tree", 8)
    path = cafs("import", str(tree), home=home).stdout.strip()
    lie = (
        "import asyncio, dataclasses, sys\n"
        "from cafs.store.services import StoreServices\n"
        "from cafs.store.storepath import StorePath\n"
        "async def main():\n"
        "    s = StoreServices.from_addrs(None, None, None)\n"
        "    info = await s.path_infos.get_path(StorePath.parse(sys.argv[1]))\n"
        "    await s.path_infos.put(dataclasses.replace(info, nar_sha256=bytes(32)))\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([CAFS[0], "-c", lie, path], env=store_env(home), check=True, capture_output=True)
    cafs("verify", home=home)  # without --nar the objects themselves are sound
    result = cafs("verify", "--nar", home=home, check=False)
    assert result.returncode == CORRUPT
    assert f"path info\t{path}\tNAR hash differs" in result.stdout


def test_verify_repair_refetches_a_corrupt_near_chunk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tree = make_tree(tmp_path / "tree", 9, big=900_000)
    path = cafs("import", str(tree), home=home).stdout.strip()
    near = tmp_path / "near"
    cached = {
        "BLOB_SERVICE_ADDR": f"cache://?near=objectstore+file://{near}&far={default_blobs(home)}"
    }
    assert cafs_bytes("nar", "dump", path, home=home, **cached) == nar_of(tree)
    victim = files_under(near / "chunks")[0]
    flip_byte(victim, 10)
    result = cafs("verify", home=home, check=False, **cached)
    assert result.returncode == CORRUPT and str(victim.relative_to(near)) in result.stdout
    repaired = cafs("verify", "--repair", home=home, check=False, **cached)
    assert "removed 1 corrupt objects from near caches" in repaired.stderr
    assert not victim.exists()
    assert cafs_bytes("nar", "dump", path, home=home, **cached) == nar_of(tree)
    cafs("verify", "--nar", home=home, **cached)


def default_blobs(home: Path) -> str:
    return f"objectstore+file://{home}/objects"


def test_near_size_bounds_a_near_cache(tmp_path: Path) -> None:
    home = tmp_path / "home"
    trees = [make_tree(tmp_path / f"t{i}", 20 + i, big=800_000) for i in range(4)]
    paths = cafs("import", *map(str, trees), home=home).stdout.split()
    near = tmp_path / "near"
    limit = 1 << 20
    cached = {
        "BLOB_SERVICE_ADDR": f"cache://?near=objectstore+file://{near}"
        f"&far={default_blobs(home)}&near-size=1M"
    }
    for tree, path in zip(trees, paths, strict=True):
        assert cafs_bytes("nar", "dump", path, home=home, **cached) == nar_of(tree)
    held = sum(p.stat().st_size for p in near.rglob("*") if p.is_file())
    assert 0 < held <= limit
    # What was evicted comes back from far, byte for byte.
    for tree, path in zip(trees, paths, strict=True):
        assert cafs_bytes("nar", "dump", path, home=home, **cached) == nar_of(tree)


def test_pinned_roots_survive_gc(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tree = make_tree(tmp_path / "tree", 30, big=300_000)
    out = cafs("castore", "ingest", str(tree), home=home).stdout
    digest = out.split()[2]
    cafs("castore", "pin", digest, home=home)
    assert cafs("castore", "pins", home=home).stdout.split() == [digest]
    assert cafs("gc", "--dry-run", "--grace", "0", home=home).stdout == ""
    cafs("castore", "unpin", digest, home=home)
    assert cafs("castore", "unpin", digest, home=home, check=False).returncode == 3
    freed = cafs("gc", "--grace", "0", home=home)
    assert "freed 0 objects" not in freed.stderr
    assert stored_objects(home, "embedded") == set()
    missing = cafs("castore", "pin", digest, home=home, check=False)
    assert missing.returncode == 3 and "neither a directory nor a blob" in missing.stderr


def test_gc_refuses_a_remote_store(tmp_path: Path) -> None:
    result = cafs(
        "gc",
        home=tmp_path,
        check=False,
        BLOB_SERVICE_ADDR=f"grpc+unix://{tmp_path}/nowhere.sock",
    )
    assert result.returncode != 0
    assert "run gc and verify where the store lives" in result.stderr

"""What tvix's object layout costs the disk, whoever writes it: the floor of tree ingest.

``cafs castore ingest`` of many small files is bound by file-system work: one
object file per distinct file, under a two-byte (65,536-way) fan-out, written
atomically and durably. This measures that work with nothing of cafs in the
way, in one Python thread (no hashing beyond the BLAKE3 that names an object,
no compression), next to ``nix-store --add`` + ``sync`` of the same files, all
in the same run:

- ``copy``: every file read and written to the same relative path in a fresh
  directory, then ``syncfs`` (what any durable copy of the tree costs);
- ``layout``: every distinct file written to a temporary file and renamed to
  ``chunks/b3/<4 hex>/<digest hex>`` (the directory made on the first object
  under it), with a ``syncfs`` before and after the renames of each batch of
  128 files, as cafs commits them;
- ``layout, one sync``: the same with a single ``syncfs`` at the end;
- ``layout, no fan-out``: every object in one directory, one sync at the end;
- ``cafs castore ingest`` into a fresh store;
- ``nix-store --add`` + ``sync`` (skipped without Nix).

The page cache is dropped before each (root). Outputs stay until the end (ext4
without a journal creates files slowly right after a mass deletion).

    python bench/layout_floor.py [--tree DIR] [--runs K] [--workdir DIR]

By default the tree is the small files of ``bench/fs.py``'s corpus
(``/var/tmp/cafs-bench-fs/tree`` without its large file), made if missing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from harness import CAFS, cafs_env, drop_caches, generate_corpus, lacks_root, remove, run

BATCH = 128
WORKDIR = Path("/var/tmp/cafs-bench-layout")
SMALL = 64 * 1024


def small_files(tree: Path) -> list[Path]:
    files = [p for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink()]
    return [p for p in files if p.stat().st_size <= SMALL]


LIBC = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    libc = LIBC
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def copy(tree: Path, files: list[Path], out: Path) -> None:
    for path in files:
        target = out / path.relative_to(tree)
        data = path.read_bytes()
        try:
            target.write_bytes(data)
        except FileNotFoundError:
            target.parent.mkdir(parents=True)
            target.write_bytes(data)
    syncfs(out)


def layout(files: list[Path], out: Path, *, per_batch: bool, fan_out: bool) -> None:
    temp = out / "tmp"
    temp.mkdir(parents=True)
    seen: set[str] = set()
    staged: list[tuple[str, str]] = []
    counter = 0

    def publish() -> None:
        if per_batch:
            syncfs(out)
        for name, final in staged:
            try:
                os.rename(name, final)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(name, final)
        if per_batch:
            syncfs(out)
        staged.clear()

    for path in files:
        data = path.read_bytes()
        digest = blake3.blake3(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        counter += 1
        name = str(temp / str(counter))
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        shard = f"chunks/b3/{digest[:4]}/" if fan_out else "chunks/"
        staged.append((name, str(out / shard / digest)))
        if len(staged) >= BATCH:
            publish()
    publish()
    syncfs(out)


def cafs_ingest(tree: Path, home: Path) -> None:
    """The real thing: ``cafs castore ingest`` into a fresh embedded store (durable at exit)."""
    run([*CAFS, "castore", "ingest", str(tree)], env=cafs_env(home))


def nix_add(tree: Path, added: list[str]) -> None:
    """``nix-store --add`` + ``sync``; the store path goes to ``added`` (deleted after)."""
    added.append(run(["nix-store", "--add", str(tree)]).strip())
    subprocess.run(["sync"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    opts = parser.parse_args(argv)
    if lacks_root("bench/layout_floor.py needs root (drop_caches)"):
        return 2
    workdir: Path = opts.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    tree = opts.tree
    if tree is None:
        fs_tree = Path("/var/tmp/cafs-bench-fs/tree")
        tree = workdir / "tree"
        if not tree.exists():
            if fs_tree.exists():
                # Hard links: the same files, without the large one.
                subprocess.run(["cp", "-al", str(fs_tree), str(tree)], check=True)
            else:
                generate_corpus(tree, 50_000, 2_000, 0, 20240601)
            for big in [p for p in tree.rglob("*") if p.is_file() and p.stat().st_size > SMALL]:
                big.unlink()
    files = small_files(tree)
    size = sum(p.stat().st_size for p in files)
    print(f"{len(files):,} files, {size / 1e6:.1f} MB, in {tree}", file=sys.stderr)
    ways: dict[str, Callable[[Path], None]] = {
        "copy": lambda out: copy(tree, files, out),
        "layout": lambda out: layout(files, out, per_batch=True, fan_out=True),
        "layout, one sync": lambda out: layout(files, out, per_batch=False, fan_out=True),
        "layout, no fan-out": lambda out: layout(files, out, per_batch=False, fan_out=False),
    }
    ways["cafs castore ingest"] = lambda out: cafs_ingest(tree, out)
    added: list[str] = []
    if shutil.which("nix-store") is not None:
        ways["nix-store --add + sync"] = lambda _: nix_add(tree, added)
    samples: dict[str, list[float]] = {name: [] for name in ways}
    outputs: list[Path] = []
    try:
        for number in range(opts.runs):
            for name, way in ways.items():
                out = workdir / f"out-{number}-{len(outputs)}"
                outputs.append(out)
                out.mkdir()
                os.sync()
                drop_caches()
                start = time.perf_counter()
                way(out)
                samples[name].append(time.perf_counter() - start)
                print(f"  {name:<24} {samples[name][-1]:6.2f} s", file=sys.stderr, flush=True)
                for path in added:
                    subprocess.run(["nix-store", "--delete", path], capture_output=True)
                added.clear()
    finally:
        for out in outputs:
            with contextlib.suppress(OSError):
                remove(out)
    base = statistics.median(samples["copy"])
    print(f"\n{len(files):,} files, {size / 1e6:.1f} MB; medians of {opts.runs} runs\n")
    print("| way | median s | files/s | ÷ copy |")
    print("|---|---:|---:|---:|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {len(files) / median:,.0f} | {median / base:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

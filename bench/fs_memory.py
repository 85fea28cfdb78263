"""Memory of a mount over a tree of a million entries: does FORGET keep it bounded?

Builds a synthetic tree straight into a fresh embedded store (``--dirs``
directories of ``--files`` files each, every file a different blob digest, so
no two share an inode; the blobs themselves are never read), mounts it with
``cafs castore mount``, walks it (``os.walk`` + ``lstat`` of every entry)
twice with ``echo 2 > /proc/sys/vm/drop_caches`` between the walks, and
reports the daemon's peak and current resident memory after each step and
the inodes it holds (its SIGUSR1 status line).

    python bench/fs_memory.py [--dirs 1000 --files 1000 --workdir DIR]

Needs root (drop_caches).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

from harness import CAFS, cafs_env, drop_caches, memory_kib, mounted, remove

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import FileNode
from cafs.castore.services import CastoreServices

STATUS = re.compile(r"status: inodes held=(\d+) known=(\d+)")


async def build(home: Path, dirs: int, files: int) -> str:
    os.environ["CAFS_HOME"] = str(home)
    services = CastoreServices.from_addrs(None, None)
    await services.connect()
    try:
        children = []
        for d in range(dirs):
            entries = [
                (f"f{i:05d}".encode(), FileNode(Digest.of(f"{d}/{i}".encode()), i % 4096))
                for i in range(files)
            ]
            directory = Directory(entries)
            await services.directories.put(directory)
            children.append((f"d{d:05d}".encode(), directory.as_node()))
        root = Directory(children)
        await services.directories.put(root)
        return str(root.digest)
    finally:
        await services.close()


def held(log: Path, pid: int) -> int:
    before = len(STATUS.findall(log.read_text()))
    os.kill(pid, signal.SIGUSR1)
    while len(found := STATUS.findall(log.read_text())) == before:
        time.sleep(0.05)
    return int(found[-1][0])


def walk(root: Path) -> int:
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            seen += 1
    return seen


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dirs", type=int, default=1000)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cafs-fs-memory"))
    opts = parser.parse_args()
    home, mnt, log = opts.workdir / "home", opts.workdir / "mnt", opts.workdir / "mount.log"
    remove(opts.workdir)
    mnt.mkdir(parents=True)
    started = time.monotonic()
    digest = asyncio.run(build(home, opts.dirs, opts.files))
    print(f"built {opts.dirs * (opts.files + 1)} entries in {time.monotonic() - started:.0f} s")
    command = [*CAFS, "castore", "mount", digest, str(mnt)]
    with mounted(command, mnt, env=cafs_env(home), log=log) as process:
        print(f"mounted: peak {memory_kib(process.pid)[0] / 1024:.0f} MiB")
        for step in ("first walk", "second walk"):
            started = time.monotonic()
            seen = walk(mnt)
            elapsed = time.monotonic() - started
            peak, now = memory_kib(process.pid)
            print(
                f"{step}: {seen} entries in {elapsed:.0f} s; peak {peak / 1024:.0f} MiB, "
                f"now {now / 1024:.0f} MiB, inodes held {held(log, process.pid)}"
            )
            drop_caches(2)
            time.sleep(2)
            print(f"after drop_caches: inodes held {held(log, process.pid)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import subprocess
import sys
import time
from pathlib import Path

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import FileNode
from cafs.config import CastoreServices

CAFS = [sys.executable, "-m", "cafs.cli"]
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


def memory_kib(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


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
    subprocess.run(["rm", "-rf", str(opts.workdir)], check=True)
    mnt.mkdir(parents=True)
    started = time.monotonic()
    digest = asyncio.run(build(home, opts.dirs, opts.files))
    print(f"built {opts.dirs * (opts.files + 1)} entries in {time.monotonic() - started:.0f} s")
    env = {**os.environ, "CAFS_HOME": str(home)}
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [*CAFS, "castore", "mount", digest, str(mnt)], env=env, stderr=err
        )
    try:
        while "serving" not in log.read_text():
            time.sleep(0.05)
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
            Path("/proc/sys/vm/drop_caches").write_text("2")
            time.sleep(2)
            print(f"after drop_caches: inodes held {held(log, process.pid)}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""virtiofs benchmark: cafs virtiofs against QEMU's virtiofsd and 9p, inside real guests.

One command builds a corpus that fits an emulated guest (``corpus.py``:
2,000 files of 0-16 KiB in 100 directories plus a 64 MiB random file),
ingests it into a fresh embedded store, and measures, in the same run, the
same tree served to a QEMU guest (TCG) by:

- ``9p``: QEMU's own ``-virtfs`` share of the plain directory;
- ``virtiofsd``: QEMU's C virtiofsd on the plain directory (``cache=auto``);
- ``cafs``: ``cafs castore virtiofs`` on the embedded store.

Inside each guest a small static program (``guestload.c``) runs the
workloads of ``bench/fs.py``: metadata walk cold and warm, read every small
file cold, sequential read of the large file cold and warm, random 4 KiB
reads cold. "Cold" means a fresh mount in the guest after dropping the
guest's caches (for cafs a fresh mount is also a fresh FUSE session, so
nothing is held in its model); the host's caches are dropped before each
guest boots. Medians of ``--runs``.

    python bench/virtiofs.py [--files N --dirs N --large-size SIZE --runs K
                              --workdir DIR --output FILE]

Needs root (drop_caches; virtiofsd sandboxes itself), QEMU, a kernel with the
virtiofs and 9p modules, busybox-static and gcc (``make system-vm`` installs them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import corpus
from fs import METRICS, Results, drop_caches, fmt, ratio
from ingest import BenchError, publish, remove, run, source_state

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.vm.guest import available, run_guest

CAFS = [sys.executable, "-m", "cafs.cli"]
PEERS = ["9p", "virtiofsd", "cafs"]
VIRTIOFSD = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
LARGE_NAME = "large.bin"
RANDOM_READS = 2000
HERE = Path(__file__).resolve().parent


NINEP_MOUNT = "mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host9p /host"

SCRIPT = """
set -e
cp /host/tools/guestload /host/tools/small.list /tmp/
G=/tmp/guestload
remount() {{
    cd /
    umount {mountpoint} 2>/dev/null || true
    {mount}
    sync; echo 3 > /proc/sys/vm/drop_caches
}}
remount; $G walk {root}; $G walk {root}
remount; $G readall {root} /tmp/small.list
remount; $G seq {root}/{large}; $G seq {root}/{large}
remount; $G rand {root}/{large} {reads} 42
"""


def virtiofsd() -> str | None:
    return next((path for path in VIRTIOFSD if os.access(path, os.X_OK)), None)


@dataclass
class Bench:
    workdir: Path
    digest: str
    large_size: int

    @property
    def share(self) -> Path:
        return self.workdir / "share"

    @property
    def tree(self) -> Path:
        return self.share / "tree"

    @contextmanager
    def backend(self, peer: str) -> Iterator[list[tuple[str, str]]]:
        """The virtiofs devices for ``peer``'s guest, served until the block ends."""
        if peer == "9p":
            yield []
            return
        sock = self.workdir / f"{peer}.sock"
        remove(sock)
        log = open(self.workdir / f"{peer}.log", "wb")  # noqa: SIM115
        if peer == "cafs":
            env = {**os.environ, "CAFS_HOME": str(self.workdir / "home")}
            cmd = [*CAFS, "castore", "virtiofs", self.digest, str(sock)]
        else:
            binary = virtiofsd()
            assert binary is not None
            env = dict(os.environ)
            cmd = [binary, f"--socket-path={sock}", "-o", f"source={self.tree}", "-o", "cache=auto"]
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while not sock.is_socket():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{peer} did not listen on {sock}: see {log.name}")
                time.sleep(0.02)
            yield [(str(sock), peer)]
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
            remove(sock)

    def measure(self, peer: str, results: Results) -> None:
        if peer == "9p":
            mountpoint, mount, root = "/host", NINEP_MOUNT, "/host/tree"
        else:
            mountpoint, root = "/mnt/fs", "/mnt/fs"
            mount = f"mkdir -p /mnt/fs; mount -t virtiofs {peer} /mnt/fs"
        script = SCRIPT.format(mountpoint=mountpoint, mount=mount, root=root, large=LARGE_NAME,
                               reads=RANDOM_READS)  # fmt: skip
        with self.backend(peer) as devices:
            drop_caches()
            result = run_guest(script, virtiofs=devices, ninep=str(self.share), mem="1G",
                               timeout=1800)  # fmt: skip
        output = result.output.decode(errors="replace")
        if result.rc != 0:
            raise BenchError(f"the {peer} guest failed ({result.rc}):\n{output[-2000:]}")
        lines = [line.split() for line in output.splitlines() if line[:1].isdigit()]
        if len(lines) != 6:
            raise BenchError(f"the {peer} guest printed:\n{output[-2000:]}")
        seconds = [float(line[0]) for line in lines]
        results.add(peer, "walk_cold", seconds[0])
        results.add(peer, "walk_warm", seconds[1])
        results.add(peer, "small_cold", seconds[2])
        results.add(peer, "large_cold", self.large_size / seconds[3] / 1e6)
        results.add(peer, "large_warm", self.large_size / seconds[4] / 1e6)
        results.add(peer, "random_cold", RANDOM_READS / seconds[5])
        walked = int(lines[0][2])
        print(f"  {peer}: {walked} entries, " + " ".join(f"{s:.3f}" for s in seconds),
              file=sys.stderr)  # fmt: skip


def build(opts: argparse.Namespace) -> Bench:
    workdir: Path = opts.workdir.absolute()
    share = workdir / "share"
    tree = share / "tree"
    tools = share / "tools"
    stamp = workdir / "corpus.done"
    wanted = f"{opts.files} {opts.dirs} {opts.large_size} {opts.seed}"
    if not stamp.exists() or stamp.read_text() != wanted:
        for path in (share, workdir / "home", stamp):
            remove(path)
        tools.mkdir(parents=True)
        print("generating the corpus", file=sys.stderr)
        corpus.generate_tree(tree, opts.files, opts.dirs, seed=opts.seed)
        corpus.generate_large(tree / LARGE_NAME, opts.large_size, seed=opts.seed)
        print("ingesting into cafs", file=sys.stderr)
        env = {**os.environ, "CAFS_HOME": str(workdir / "home")}
        line = run([*CAFS, "castore", "ingest", str(tree)], env=env)
        (workdir / "digest").write_text(line.split()[2])
        small = sorted(
            os.path.relpath(os.path.join(d, f), tree)
            for d, _, fs in os.walk(tree)
            for f in fs
            if f != LARGE_NAME and not os.path.islink(os.path.join(d, f))
        )
        (tools / "small.list").write_text("".join(name + "\n" for name in small))
        stamp.write_text(wanted)
    run(["gcc", "-static", "-O2", "-o", str(tools / "guestload"), str(HERE / "guestload.c")])
    return Bench(workdir, (workdir / "digest").read_text().strip(), opts.large_size)


def report(results: Results, opts: argparse.Namespace) -> str:
    lines = [
        f"virtiofs benchmark ({source_state()}), {opts.runs} runs, medians; "
        "guests under QEMU TCG, 1 vCPU, 1 GiB.",
        f"Corpus: {opts.files:,} small files in {opts.dirs:,} directories"
        f" + a {opts.large_size / 2**20:.0f} MiB file.",
        "",
        "| workload | " + " | ".join(PEERS) + " | cafs cost ÷ 9p | cafs cost ÷ virtiofsd |",
        "|---|" + "---:|" * (len(PEERS) + 2),
    ]
    for metric, label, higher in METRICS:
        row = [fmt(results.median(peer, metric), higher) for peer in PEERS]
        row += [ratio(results, metric, higher, ref) for ref in ("9p", "virtiofsd")]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Cost ratios: time ratio for seconds, inverse ratio for rates; below 1.00× cafs is faster."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--large-size", type=corpus.parse_size, default=64 << 20)
    parser.add_argument("--seed", type=int, default=corpus.DEFAULT_SEED)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/cafs-bench-virtiofs"))
    parser.add_argument("--output", type=Path, help="also write the report here")
    opts = parser.parse_args(argv)
    reason = available()
    if reason is not None:
        print(f"error: no guest can run here: {reason}", file=sys.stderr)
        return 1
    if os.geteuid() != 0 or virtiofsd() is None or shutil.which("gcc") is None:
        print("error: needs root, QEMU's virtiofsd and gcc (make system-vm)", file=sys.stderr)
        return 1
    try:
        bench = build(opts)
        results = Results()
        for index in range(opts.runs):
            print(f"run {index + 1} of {opts.runs}", file=sys.stderr)
            for peer in PEERS:
                bench.measure(peer, results)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report(results, opts)
    publish(text, opts.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

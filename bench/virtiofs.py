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
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import (
    CAFS,
    COST_RATIO_NOTE,
    LARGE_NAME,
    RANDOM_READS,
    BenchError,
    Medians,
    Stamp,
    add_corpus_options,
    add_report_options,
    cafs_env,
    cost_table,
    drop_caches,
    generate_corpus,
    ingest_tree,
    measure_and_publish,
    remove,
    run,
    serving,
    small_files,
    source_state,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.vm.guest import available, run_guest

PEERS = ["9p", "virtiofsd", "cafs"]
VIRTIOFSD = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
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
        log = self.workdir / f"{peer}.log"
        env: dict[str, str] | None = None
        if peer == "cafs":
            env = cafs_env(self.workdir / "home")
            cmd = [*CAFS, "castore", "virtiofs", self.digest, str(sock)]
        else:
            binary = virtiofsd()
            assert binary is not None
            cmd = [binary, f"--socket-path={sock}", "-o", f"source={self.tree}", "-o", "cache=auto"]
        what = f"{peer} did not listen on {sock} (see {log})"
        try:
            with serving(cmd, sock.is_socket, what, env=env, log=log, stop_timeout=30):
                yield [(str(sock), peer)]
        finally:
            remove(sock)

    def measure(self, peer: str, results: Medians) -> None:
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
    stamp = Stamp.of_corpus(workdir / "corpus.done", opts)
    if not stamp.current():
        for path in (share, workdir / "home", stamp.path):
            remove(path)
        tools.mkdir(parents=True)
        print("generating the corpus", file=sys.stderr)
        generate_corpus(tree, opts.files, opts.dirs, opts.large_size, opts.seed)
        print("ingesting into cafs", file=sys.stderr)
        (workdir / "digest").write_text(ingest_tree(tree, workdir / "home"))
        small = small_files(tree)
        (tools / "small.list").write_text("".join(name + "\n" for name in small))
        stamp.write()
    run(["gcc", "-static", "-O2", "-o", str(tools / "guestload"), str(HERE / "guestload.c")])
    return Bench(workdir, (workdir / "digest").read_text().strip(), opts.large_size)


def report(results: Medians, opts: argparse.Namespace) -> str:
    lines = [
        f"virtiofs benchmark ({source_state()}), {opts.runs} runs, medians; "
        "guests under QEMU TCG, 1 vCPU, 1 GiB.",
        f"Corpus: {opts.files:,} small files in {opts.dirs:,} directories"
        f" + a {opts.large_size / 2**20:.0f} MiB file.",
        "",
        *cost_table(results, PEERS, ["9p", "virtiofsd"]),
        "",
        COST_RATIO_NOTE,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_options(parser, files=2000, dirs=100, large_size=64 << 20)
    parser.add_argument("--runs", type=int, default=3)
    add_report_options(parser, Path("/var/tmp/cafs-bench-virtiofs"))
    opts = parser.parse_args(argv)
    reason = available()
    if reason is not None:
        print(f"error: no guest can run here: {reason}", file=sys.stderr)
        return 1
    if os.geteuid() != 0 or virtiofsd() is None or shutil.which("gcc") is None:
        print("error: needs root, QEMU's virtiofsd and gcc (make system-vm)", file=sys.stderr)
        return 1
    results = Medians()

    def measure() -> None:
        bench = build(opts)
        for index in range(opts.runs):
            print(f"run {index + 1} of {opts.runs}", file=sys.stderr)
            for peer in PEERS:
                bench.measure(peer, results)

    return measure_and_publish(measure, lambda: report(results, opts), opts.output)


if __name__ == "__main__":
    sys.exit(main())

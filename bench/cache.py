"""Binary cache benchmark: ``nix copy --from`` cafs nar-bridge against nginx, and a mount over it.

One command builds the corpora of ``bench/fs.py`` (``corpus.py``: 50,000
files of 0-16 KiB in 2,000 directories; one random 1 GiB file in a directory
of its own), adds both to the real Nix store (``nix-store --add``) and to a
fresh cafs store (``cafs import``, which must print the same paths), writes
them once into an uncompressed ``file://`` binary cache (``nix copy --to
file://…?compression=none``), and measures, in the same run:

- ``nix copy --from`` of each path into a fresh ``local?root=`` store, from
  ``cafs nar-bridge`` (NARs rendered from castore as they are sent) and from
  nginx serving the ``file://`` cache as static files (Debian's nginx);
- ``cafs mount`` of the nginx cache through ``nix+http://`` (in front of it,
  ``cache://`` with a local near store): reading every file of both paths the
  first time (each NAR downloaded and ingested), and again on a fresh mount
  with the kernel's caches dropped (served from the near store).

The page cache is dropped before every timed step (root). Medians of ``--runs``.

    python bench/cache.py [--files N --dirs N --large-size SIZE --runs K --workdir DIR
                           --output FILE]

Needs root, Nix (scripts/setup-nix.sh) and nginx (installed with apt-get if missing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import corpus
from fs import drop_caches, is_mounted, wait_mounted
from ingest import BenchError, publish, remove, run, source_state

REPO = Path(__file__).resolve().parent.parent
CAFS = [sys.executable, "-m", "cafs.cli"]
NIX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    types {{ text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def nix_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{NIX_PATH}:{os.environ.get('PATH', '')}"}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/nix-cache-info", timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{what} did not answer at {url}") from None
            time.sleep(0.05)


@contextmanager
def serving(command: list[str], url: str, what: str, env: dict[str, str] | None = None,
            log: Path | None = None) -> Iterator[str]:  # fmt: skip
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_http(url, process, what)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            out.close()  # type: ignore[union-attr]


class CacheBench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.work: Path = opts.workdir.absolute()
        self.home = self.work / "home"
        self.cache = self.work / "file-cache"
        self.results: dict[tuple[str, str], list[float]] = {}
        self.paths: dict[str, str] = {}

    def add(self, key: tuple[str, str], seconds: float) -> None:
        self.results.setdefault(key, []).append(seconds)
        print(f"  {key[0]} / {key[1]}: {seconds:.2f} s", file=sys.stderr)

    def setup(self) -> None:
        if shutil.which("nix-store") is None:
            run(["bash", str(REPO / "scripts" / "setup-nix.sh")])
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            run(["apt-get", "update", "-qq"])
            run(["apt-get", "install", "-y", "-qq", "nginx-light"])
        stamp = self.work / "corpus.done"
        wanted = f"{self.opts.files} {self.opts.dirs} {self.opts.large_size} {self.opts.seed}"
        if stamp.exists() and stamp.read_text() == wanted:
            for line in (self.work / "paths").read_text().splitlines():
                name, _, path = line.partition(" ")
                self.paths[name] = path
            return
        for stale in (self.work / "bench-tree", self.work / "bench-large", self.home, self.cache):
            remove(stale)
        self.work.mkdir(parents=True, exist_ok=True)
        print("generating the corpora", file=sys.stderr)
        corpus.generate_tree(self.work / "bench-tree", self.opts.files, self.opts.dirs,
                             seed=self.opts.seed)  # fmt: skip
        (self.work / "bench-large").mkdir()
        corpus.generate_large(self.work / "bench-large" / "large.bin", self.opts.large_size,
                              seed=self.opts.seed)  # fmt: skip
        env = {**os.environ, "CAFS_HOME": str(self.home)}
        for name in ("bench-tree", "bench-large"):
            print(f"adding {name} to Nix and to cafs", file=sys.stderr)
            [theirs] = run(["nix-store", "--add", str(self.work / name)], env=nix_env()).split()
            [ours] = run([*CAFS, "import", str(self.work / name)], env=env).split()
            if theirs != ours:
                raise BenchError(f"cafs import gave {ours}, nix-store --add {theirs}")
            self.paths[name] = theirs
        print("writing the file:// binary cache", file=sys.stderr)
        run(["nix", "copy", "--to", f"file://{self.cache}?compression=none",
             *self.paths.values()], env=nix_env())  # fmt: skip
        (self.work / "paths").write_text("".join(f"{k} {v}\n" for k, v in self.paths.items()))
        stamp.write_text(wanted)

    @contextmanager
    def nginx(self) -> Iterator[str]:
        port = free_port()
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=self.work, port=port, root=self.cache))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        with serving([binary, "-c", str(conf)], f"http://127.0.0.1:{port}", "nginx") as url:
            yield url

    @contextmanager
    def bridge(self) -> Iterator[str]:
        port = free_port()
        env = {**os.environ, "CAFS_HOME": str(self.home)}
        command = [*CAFS, "nar-bridge", "--listen-address", f"127.0.0.1:{port}"]
        with serving(command, f"http://127.0.0.1:{port}", "cafs nar-bridge", env,
                     self.work / "nar-bridge.log") as url:  # fmt: skip
            yield url

    def copy_from(self, source: str, url: str, number: int) -> None:
        for name, path in self.paths.items():
            root = self.work / "roots" / f"{source}-{name}-{number}"
            drop_caches()
            start = time.perf_counter()
            run(["nix", "copy", "--no-check-sigs", "--from", url, "--to",
                 f"local?root={root}", path], env=nix_env())  # fmt: skip
            self.add((f"nix copy --from {source}", name), time.perf_counter() - start)

    def mount_reads(self, url: str, number: int) -> None:
        home = self.work / f"mount-home-{number}"
        remove(home)
        home.mkdir(parents=True)
        far = f"nix+{url}"
        near_pi = "sqlite://" + quote(str(home / "near-pathinfo.sqlite"))
        args = [
            "--path-info-service-addr",
            f"cache://?near={quote(near_pi, safe='')}&far={quote(far, safe='')}",
            "--blob-service-addr",
            "objectstore+file://" + quote(str(home / "objects")),
            "--directory-service-addr",
            "sqlite://" + quote(str(home / "directories.sqlite")),
        ]
        for label in ("first read", "second read"):
            mnt = self.work / "mnt"
            mnt.mkdir(exist_ok=True)
            env = {**os.environ, "CAFS_HOME": str(home)}
            log = open(self.work / "mount.log", "ab")  # noqa: SIM115
            process = subprocess.Popen([*CAFS, "mount", str(mnt), *args], env=env,
                                       stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
            try:
                wait_mounted(mnt, process)
                drop_caches()
                start = time.perf_counter()
                for path in self.paths.values():
                    read_tree(mnt / Path(path).name)
                self.add(("cafs mount over nix+http", label), time.perf_counter() - start)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
                log.close()
                if is_mounted(mnt):
                    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        remove(home)

    def run(self) -> None:
        self.setup()
        with self.nginx() as nginx_url, self.bridge() as bridge_url:
            for number in range(self.opts.runs):
                print(f"run {number + 1} of {self.opts.runs}", file=sys.stderr)
                self.copy_from("nginx", nginx_url, number)
                self.copy_from("nar-bridge", bridge_url, number)
                if not self.opts.no_mount:
                    self.mount_reads(nginx_url, number)
                remove(self.work / "roots")

    def report(self) -> str:
        lines = [
            f"Binary cache benchmark ({source_state()}), {self.opts.runs} runs, medians (s).",
            f"Corpora: {self.opts.files:,} small files in {self.opts.dirs:,} directories; "
            f"one {self.opts.large_size / 2**30:.2f} GiB file.",
            "",
            "| what | tree | large | tree ÷ nginx | large ÷ nginx |",
            "|---|---:|---:|---:|---:|",
        ]

        def median(key: tuple[str, str]) -> float | None:
            got = self.results.get(key)
            return statistics.median(got) if got else None

        for source in ("nginx", "nar-bridge"):
            row = f"nix copy --from {source}"
            values = [median((row, name)) for name in ("bench-tree", "bench-large")]
            refs = [
                median(("nix copy --from nginx", name)) for name in ("bench-tree", "bench-large")
            ]
            ratios = [
                f"{v / r:.2f}×" if v and r else "-" for v, r in zip(values, refs, strict=True)
            ]
            cells = [f"{v:.2f}" if v else "-" for v in values]
            lines.append(f"| `{row}` | {cells[0]} | {cells[1]} | {ratios[0]} | {ratios[1]} |")
        for label in ("first read", "second read"):
            value = median(("cafs mount over nix+http", label))
            if value is not None:
                lines.append(
                    f"| cafs mount over nix+http, {label} (both paths) | {value:.2f} | | | |"
                )
        return "\n".join(lines)


def read_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            with open(path, "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=corpus.DEFAULT_FILES)
    parser.add_argument("--dirs", type=int, default=corpus.DEFAULT_DIRS)
    parser.add_argument("--large-size", type=corpus.parse_size, default=corpus.DEFAULT_LARGE_SIZE)
    parser.add_argument("--seed", type=int, default=corpus.DEFAULT_SEED)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-mount", action="store_true", help="skip the nix+http mount rows")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/cafs-bench-cache"))
    parser.add_argument("--output", type=Path, help="also write the report here")
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/cache.py needs root (Nix's store, drop_caches)", file=sys.stderr)
        return 2
    bench = CacheBench(opts)
    try:
        bench.run()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    publish(bench.report(), opts.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

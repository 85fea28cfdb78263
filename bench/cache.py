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
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import corpus
from harness import (
    CAFS,
    MIB,
    BenchError,
    Medians,
    Stamp,
    add_corpus_options,
    add_report_options,
    apt_install,
    cafs_env,
    drop_caches,
    grouped,
    lacks_root,
    measure_and_publish,
    mounted,
    ratio,
    read_through,
    remove,
    run,
    serving,
    source_state,
    table,
    table_row,
    times,
)

REPO = Path(__file__).resolve().parent.parent
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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    """Whether a binary cache answers at ``url`` (its ``nix-cache-info``)."""
    try:
        with urllib.request.urlopen(url + "/nix-cache-info", timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def cache_server(
    command: list[str], url: str, what: str, env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[str]:  # fmt: skip
    """A binary cache served by ``command`` at ``url`` for the length of the block."""
    with serving(command, lambda: answers(url), f"{what} did not answer at {url}", env=env,
                 log=log, stop_timeout=30):  # fmt: skip
        yield url


class CacheBench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.work: Path = opts.workdir.absolute()
        self.home = self.work / "home"
        self.cache = self.work / "file-cache"
        self.results = Medians()
        self.paths: dict[str, str] = {}

    def add(self, key: tuple[str, str], seconds: float) -> None:
        self.results.add(*key, seconds)
        print(f"  {key[0]} / {key[1]}: {seconds:.2f} s", file=sys.stderr)

    def setup(self) -> None:
        if shutil.which("nix-store") is None:
            run(["bash", str(REPO / "scripts" / "setup-nix.sh")])
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            apt_install(["nginx-light"])
        stamp = Stamp.of_corpus(self.work / "corpus.done", self.opts)
        if stamp.current():
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
        env = cafs_env(self.home)
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
        stamp.write()

    @contextmanager
    def nginx(self) -> Iterator[str]:
        port = free_port()
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=self.work, port=port, root=self.cache))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        with cache_server([binary, "-c", str(conf)], f"http://127.0.0.1:{port}", "nginx") as url:
            yield url

    @contextmanager
    def bridge(self) -> Iterator[str]:
        port = free_port()
        env = cafs_env(self.home)
        command = [*CAFS, "nar-bridge", "--listen-address", f"127.0.0.1:{port}"]
        with cache_server(command, f"http://127.0.0.1:{port}", "cafs nar-bridge", env,
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
        mnt = self.work / "mnt"
        for label in ("first read", "second read"):
            with mounted([*CAFS, "mount", str(mnt), *args], mnt, env=cafs_env(home),
                         log=self.work / "mount.log", stop_timeout=120):  # fmt: skip
                drop_caches()
                start = time.perf_counter()
                for path in self.paths.values():
                    read_tree(mnt / Path(path).name)
                self.add(("cafs mount over nix+http", label), time.perf_counter() - start)
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
            *table(["what", "tree", "large", "tree ÷ nginx", "large ÷ nginx"]),
        ]
        median = self.results.median
        for source in ("nginx", "nar-bridge"):
            row = f"nix copy --from {source}"
            values = [median(row, name) for name in ("bench-tree", "bench-large")]
            refs = [median("nix copy --from nginx", name) for name in ("bench-tree", "bench-large")]
            ratios = [times(ratio(v, r)) for v, r in zip(values, refs, strict=True)]
            lines.append(table_row([f"`{row}`", *(grouped(v, 2) for v in values), *ratios]))
        for label in ("first read", "second read"):
            value = median("cafs mount over nix+http", label)
            if value is not None:
                name = f"cafs mount over nix+http, {label} (both paths)"
                lines.append(table_row([name, f"{value:.2f}", "", "", ""]))
        return "\n".join(lines)


def read_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            read_through(Path(path), MIB)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_options(parser)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-mount", action="store_true", help="skip the nix+http mount rows")
    add_report_options(parser, Path("/var/tmp/cafs-bench-cache"))
    opts = parser.parse_args(argv)
    if lacks_root("bench/cache.py needs root (Nix's store, drop_caches)"):
        return 2
    bench = CacheBench(opts)
    return measure_and_publish(bench.run, bench.report, opts.output)


if __name__ == "__main__":
    sys.exit(main())

"""The real Nix (Debian's nix-bin), generated source trees, and the store-mode mount.

The ``nix`` fixture installs and configures Nix with ``scripts/setup-nix.sh`` (quick when
already done). Every store path a test adds to the real /nix/store is recorded and removed
again with ``nix-store --delete`` when the test (or module) ends; paths that are still
referenced are left alone. Generated sources carry a per-session token, so their store paths
are new to the store and never shared with anything else.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP_NIX = REPO / "scripts" / "setup-nix.sh"
SETUP_TIMEOUT = 1200.0
NIX_TIMEOUT = 300.0
NIX_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MIB = 1024 * 1024
TREE_SEEDS = (11, 22, 33)
"""One generated tree per seed; the large file's size crosses a different boundary in each:
many FastCDC chunks, ingest's 1 MiB small-file limit, its 8 MiB read block."""
BIG_SIZES = {11: 3 * MIB + 12345, 22: MIB + 1, 33: 8 * MIB + 1}
NAME_CHARS = "abcdefgxyzABCXYZ0123456789 _-.+=,~ëü日本☃"
STORE_NAME_PREFIX = "cafs-compat-"


def basename(path: str) -> str:
    return PurePath(path).name


class Nix:
    """The Nix command-line tools on the real, local /nix/store."""

    def __init__(self) -> None:
        self.env = {**os.environ, "PATH": f"{NIX_ENV_PATH}:{os.environ.get('PATH', '')}"}

    def run(
        self, *args: str | Path, stdin: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [str(a) for a in args],
            input=stdin,
            env=self.env,
            capture_output=True,
            timeout=NIX_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(str(a) for a in args)} failed with exit {result.returncode}:\n"
                + result.stderr.decode(errors="replace")
            )
        return result

    def lines(self, *args: str | Path) -> list[str]:
        return self.run(*args).stdout.decode().splitlines()

    def dump(self, path: str | Path) -> bytes:
        """``nix-store --dump``: the NAR of any path, in the store or not."""
        return self.run("nix-store", "--dump", path).stdout

    def hash_paths(self, *paths: str | Path) -> list[str]:
        """``nix hash path`` (SRI sha256 of the NAR) of each path, in order."""
        return self.lines("nix", "hash", "path", *paths)

    def query_hashes(self, *paths: str) -> list[str]:
        """``nix-store --query --hash``: the recorded ``sha256:<nixbase32>`` NAR hashes."""
        return self.lines("nix-store", "--query", "--hash", *paths)

    def path_info(self, *paths: str, recursive: bool = False) -> dict[str, dict[str, Any]]:
        """``nix path-info --json``, keyed by store path."""
        flags = ["--recursive"] if recursive else []
        output = self.run("nix", "path-info", "--json", *flags, *paths).stdout
        return {entry["path"]: entry for entry in json.loads(output)}

    def closure(self, *paths: str) -> list[str]:
        return self.lines("nix-store", "--query", "--requisites", *paths)

    def delete(self, paths: Iterable[str]) -> None:
        """Remove ``paths`` from the store; those still referenced (alive) stay."""
        remaining = [p for p in dict.fromkeys(paths) if os.path.lexists(p)]
        if not remaining:
            return
        if self.run("nix-store", "--delete", *remaining, check=False).returncode == 0:
            return
        # Some path is alive: delete one by one, referrers first, until nothing moves.
        progress = True
        while remaining and progress:
            progress = False
            for path in list(remaining):
                if not os.path.lexists(path) or (
                    self.run("nix-store", "--delete", path, check=False).returncode == 0
                ):
                    remaining.remove(path)
                    progress = True


@dataclass
class NixStore:
    """Adds to the real store and remembers what it added, for ``cleanup``."""

    nix: Nix
    added: list[str] = field(default_factory=list)

    def track(self, paths: Iterable[str]) -> None:
        self.added.extend(paths)

    def add(self, *sources: Path) -> list[str]:
        """``nix-store --add`` of each source (one call), its store paths in order."""
        paths = self.nix.lines("nix-store", "--add", *sources)
        self.track(paths)
        assert len(paths) == len(sources), paths
        return paths

    def cleanup(self) -> None:
        self.nix.delete(reversed(self.added))


@pytest.fixture(scope="session")
def nix() -> Nix:
    """A working Nix: installed and configured by scripts/setup-nix.sh, or the test skips."""
    if os.geteuid() != 0:
        reason = "the Nix compatibility tests need root (a single-user store in /nix)"
        print(f"skipping: {reason}")
        pytest.skip(reason)
    try:
        result = subprocess.run(
            ["bash", str(SETUP_NIX)],
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{SETUP_NIX} did not finish within {SETUP_TIMEOUT:.0f}s: {exc.stderr!r}")
    output = (result.stdout + result.stderr).strip()
    if result.returncode == 2:
        lines = [line for line in output.splitlines() if line.strip()]
        reason = lines[-1] if lines else "package registry unreachable"
        print(f"skipping: {reason}")
        pytest.skip(f"cannot install Nix: {reason}")
    if result.returncode != 0:
        pytest.fail(f"{SETUP_NIX} failed with exit {result.returncode}:\n{output}")
    return Nix()


@pytest.fixture
def nix_store(nix: Nix) -> Iterator[NixStore]:
    """The real store, with every path the test adds deleted again afterwards."""
    store = NixStore(nix)
    try:
        yield store
    finally:
        store.cleanup()


# Generated sources.


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def random_name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(1, 14)))
        if name not in (".", "..") and name not in taken:
            taken.add(name)
            return name


def random_subtree(directory: Path, rng: random.Random, depth: int) -> None:
    directory.mkdir()
    taken: set[str] = set()
    for _ in range(rng.randint(2, 8)):
        path = directory / random_name(rng, taken)
        kind = rng.random()
        if kind < 0.25 and depth > 0:
            random_subtree(path, rng, depth - 1)
        elif kind < 0.35:
            path.symlink_to(random_name(rng, set()))
        else:
            size = rng.choice([0, 1, rng.randrange(2, 5000)])
            write(path, rng.randbytes(size), 0o755 if rng.random() < 0.2 else 0o644)


def make_tree(root: Path, seed: int, token: str) -> Path:
    """Every kind of node and name Nix archives, laid out by ``seed``."""
    rng = random.Random(seed)
    root.mkdir()
    write(root / ".token", f"{token}\n".encode())  # a store path no other session has
    write(root / "empty", b"")
    write(root / "one-byte", rng.randbytes(1))
    text = "".join(rng.choice("abc xyz\n") for _ in range(rng.randrange(100, 3000))).encode()
    write(root / "regular.txt", text)
    write(root / "duplicate.txt", text)
    write(root / "run.sh", b"#!/bin/sh\necho hello\n", 0o755)
    write(root / "empty-executable", b"", 0o755)
    write(root / "owner-only-exec", rng.randbytes(100), 0o700)
    # Nix archives the owner's x bit only: this one is not executable in the NAR.
    write(root / "group-exec-only", rng.randbytes(100), 0o654)
    (root / "empty-dir").mkdir()
    write(root / "big.bin", rng.randbytes(BIG_SIZES[seed]))
    if seed == 22:
        write(root / "one-mib", rng.randbytes(MIB))
        write(root / "four-mib", rng.randbytes(4 * MIB))

    (root / "link-relative").symlink_to("regular.txt")
    (root / "link-to-dir").symlink_to("deep")
    (root / "link-outside").symlink_to("../../outside/the/tree")
    (root / "link-absolute").symlink_to("/etc/hostname")
    (root / "link-dangling").symlink_to("does/not/exist")
    (root / "link-absolute-dangling").symlink_to("/nix/store/" + "0" * 32 + "-absent")
    (root / "link-unicode").symlink_to("ünïcödé")

    depth = 5 + rng.randrange(4)
    deep = root / "deep"
    for level in range(depth):
        deep = deep / f"level-{level}"
    deep.mkdir(parents=True)
    write(deep / "leaf", rng.randbytes(rng.randrange(1, 500)))
    (deep / "empty-dir").mkdir()
    (deep / "back-to-top").symlink_to("../" * (depth + 1) + "regular.txt")

    spaced = root / "with space"
    spaced.mkdir()
    write(spaced / "file with  two spaces.txt", b"spaces\n")
    write(root / "ünïcödé", "ünïcödé\n".encode())
    (root / "日本").mkdir()
    write(root / "日本" / "ファイル.txt", "日本語\n".encode())
    write(root / "☃ snow", b"\xe2\x98\x83")
    order = root / "order"  # NAR entries are sorted bytewise
    order.mkdir()
    for name in ("a", "A", "a.b", "a-b", "a0", "_", "Z", "zz", ".hidden", "b", "é", "e"):
        write(order / name, name.encode())
    for twin in ("twin-1", "twin-2"):
        (root / twin / "inner").mkdir(parents=True)
        write(root / twin / "inner" / "same", b"identical subtrees\n")

    many = root / "many"
    many.mkdir()
    count = 300 + rng.randrange(100)
    for i in range(count):
        path = many / f"entry-{i:04d}"
        kind = rng.random()
        if kind < 0.05:
            path.symlink_to(f"entry-{rng.randrange(count):04d}")
        elif kind < 0.1:
            path.mkdir()
            write(path / "inside", f"{i}\n".encode())
        else:
            data = rng.randbytes(rng.randrange(0, 300))
            write(path, data, 0o755 if rng.random() < 0.1 else 0o644)
    random_subtree(root / "random", rng, depth=3)
    return root


@dataclass(frozen=True)
class Sources:
    """Import roots: generated trees, and a lone file, executable and symlink."""

    trees: tuple[Path, ...]
    singles: tuple[Path, ...]
    token: str

    @property
    def roots(self) -> tuple[Path, ...]:
        return (*self.trees, *self.singles)


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    base = tmp_path_factory.mktemp("sources")
    token = secrets.token_hex(8)
    trees = tuple(make_tree(base / f"tree-{seed}", seed, token) for seed in TREE_SEEDS)
    single_file = base / "single-file.txt"
    write(single_file, f"a lone file {token}\n".encode())
    single_exec = base / "single-exec"
    write(single_exec, f"#!/bin/sh\necho {token}\n".encode(), 0o755)
    single_link = base / "single-link"
    single_link.symlink_to(f"../elsewhere-{token}/target")
    empty_file = base / f"empty-file-{token}"
    write(empty_file, b"")
    empty_dir = base / f"empty-dir-{token}"
    empty_dir.mkdir()
    singles = (single_file, single_exec, single_link, empty_file, empty_dir)
    return Sources(trees, singles, token)


# The store-mode mount.


# Copying a closure listed by exportReferencesGraph.

# A derivation with structured attrs whose output is its own .attrs.json: Nix fills in
# `closure` with the closure of `inner` (inner -> leaf, text; text -> dep; leaf -> dep;
# inner -> itself). With structured attrs there is no $out: the output path is read from
# .attrs.sh (`declare -A outputs=(['out']='/nix/store/...' )`) with POSIX sh only.
EXPRESSION = r"""
let
  token = builtins.readFile ./dep/token;
  dep = builtins.path { path = ./dep; name = "cafs-compat-dep"; };
  text = builtins.toFile "cafs-compat-text" "refers to ${dep} (${token})\n";
  leaf = derivation {
    name = "cafs-compat-leaf";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      /bin/mkdir -p $out/bin
      read -r line < ${dep}/token
      echo "#!/bin/sh" > $out/bin/hello
      echo "echo $line from ${dep}" >> $out/bin/hello
      /bin/chmod +x $out/bin/hello
    '' ];
  };
  inner = derivation {
    name = "cafs-compat-inner";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      /bin/mkdir -p $out/share/deep/er
      echo ${text} > $out/share/text-path
      echo $out > $out/share/deep/er/self
      /bin/ln -s ${leaf}/bin/hello $out/hello
      : > $out/empty
    '' ];
  };
in derivation {
  name = "cafs-compat-graph";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  __structuredAttrs = true;
  exportReferencesGraph.closure = [ inner ];
  args = [ "-c" ''
    attrs_json=''${NIX_ATTRS_JSON_FILE:-.attrs.json}
    attrs_sh=''${NIX_ATTRS_SH_FILE:-.attrs.sh}
    out=
    while IFS= read -r line; do
      case $line in
        "declare -A outputs=("*) out=''${line#*"['out']='"}; out=''${out%%"'"*} ;;
      esac
    done < "$attrs_sh"
    [ -n "$out" ] || { echo "no out in $attrs_sh" >&2; exit 1; }
    /bin/cp "$attrs_json" "$out"
  '' ];
}
"""


@dataclass(frozen=True)
class Exported:
    attrs_json: Path
    """The output of the structured-attrs derivation: its .attrs.json, `closure` filled in."""
    closure: list[dict[str, Any]]
    inner: str
    """The path whose closure was exported."""
    public_key: str = ""
    """The throwaway key the closure is signed with, as ``trusted-public-keys`` takes it."""


@pytest.fixture(scope="module")
def exported(
    nix: Nix, sources: Sources, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exported]:
    """Built once per module by the real Nix; the paths are signed with a throwaway key."""
    work = tmp_path_factory.mktemp("derivation")
    (work / "dep").mkdir()
    write(work / "dep" / "token", f"{sources.token}\n".encode())
    (work / "default.nix").write_text(EXPRESSION)
    store = NixStore(nix)

    def track(paths: list[str]) -> None:
        store.track(p for p in paths if basename(p).partition("-")[2].startswith(STORE_NAME_PREFIX))

    try:
        [drv] = nix.lines("nix-instantiate", work / "default.nix")
        track(nix.closure(drv))
        [out] = nix.lines("nix-store", "--realise", drv)
        track(nix.closure(out))
        attrs = json.loads(Path(out).read_text())
        inner = attrs["exportReferencesGraph"]["closure"][0]
        key = f"{STORE_NAME_PREFIX}{sources.token}"
        nix.run("nix-store", "--generate-binary-cache-key", key, work / "secret", work / "public")
        nix.run("nix", "store", "sign", "--key-file", work / "secret", "--recursive", inner)
        public_key = (work / "public").read_text().strip()
        yield Exported(Path(out), attrs["closure"], inner, public_key)
    finally:
        store.cleanup()

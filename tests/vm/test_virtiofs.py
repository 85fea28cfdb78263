"""``cafs virtiofs`` serving real Linux guests (QEMU, the kernel's virtiofs driver).

Each guest mounts what a daemon serves and reports what it sees: kinds,
modes, sizes, SHA-256 of every file, symlink targets, directory entry types
and extended attributes (through a small static program, ``probe.c``, since
busybox shows neither), and EROFS on writes. The host compares that with the
tree the store was made from. Every daemon must exit 0 once its VM is gone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cafs.castore.digest import Digest
from tests.daemon import socket_path
from tests.mount.conftest import ingest
from tests.process import cafs
from tests.virtio.daemon import VirtiofsDaemon, spawn_virtiofs
from tests.vm.guest import GuestError, available, run_guest

REASON = available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

BIG_SIZE = 100 * 1024 * 1024
ODD_SLICES = [(0, 1), (4095, 2), (1 << 20, 4097), (12_345_678, 1_000_001), (BIG_SIZE - 7, 7)]
PROBE_SOURCE = Path(__file__).with_name("probe.c")


def make_tree(root: Path, *, big: bool) -> Path:
    """Every kind of node, names that need care, a directory of many entries."""
    root.mkdir()
    (root / "hello.txt").write_bytes(b"Hello World!")
    (root / "empty").write_bytes(b"")
    exe = root / "tool"
    exe.write_bytes(b"#!/bin/sh\necho tool\n")
    exe.chmod(0o755)
    (root / "name with spaces é ☃").write_bytes(b"unicode\n")
    (root / "link").symlink_to("hello.txt")
    (root / "dangling").symlink_to("/nix/store/somewhere-else")
    sub = root / "sub" / "deeper"
    sub.mkdir(parents=True)
    (sub / "leaf").write_bytes(os.urandom(300_000))
    (root / "sub" / "up").symlink_to("../hello.txt")
    (root / "empty-dir").mkdir()
    many = root / "many"
    many.mkdir()
    for i in range(150):
        (many / f"n{i:03d}").write_bytes(f"{i}\n".encode() * (i + 1))
    if big:
        with open(root / "big", "wb") as f:
            for _ in range(BIG_SIZE // (4 << 20)):
                f.write(os.urandom(4 << 20))
    return root


def expected_listing(tree: Path, dir_sizes: dict[str, int]) -> set[str]:
    """What the guest prints for ``tree``: ``kind|mode|size|path`` lines, as busybox's stat."""
    lines = {f"directory|555|{dir_sizes['.']}|."}
    for path in sorted(tree.rglob("*")):
        rel = "./" + path.relative_to(tree).as_posix()
        if path.is_symlink():
            target = os.readlink(path)
            lines.add(f"symbolic link|444|{len(os.fsencode(target))}|{rel}")
        elif path.is_dir():
            lines.add(f"directory|555|{dir_sizes[rel]}|{rel}")
        else:
            kind = "regular empty file" if path.stat().st_size == 0 else "regular file"
            mode = "555" if path.stat().st_mode & 0o100 else "444"
            lines.add(f"{kind}|{mode}|{path.stat().st_size}|{rel}")
    return lines


def expected_sums(tree: Path) -> set[str]:
    return {
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(tree).as_posix()}"
        for p in tree.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def expected_links(tree: Path) -> set[str]:
    return {
        f"./{p.relative_to(tree).as_posix()} -> {os.readlink(p)}"
        for p in tree.rglob("*")
        if p.is_symlink()
    }


def castore_listing(digest: str, home: Path) -> dict[str, tuple[str, str, int]]:
    """``castore ls -r``: path -> (kind, digest, size)."""
    found = {}
    for line in cafs("castore", "ls", "-r", digest, home=home).stdout.splitlines():
        kind, node_digest, size, rest = line.split(None, 3)
        path = rest.split(" -> ")[0].rstrip("/")
        found["./" + path] = (kind, node_digest, int(size) if size != "-" else 0)
    return found


CHECK = r"""
check() {  # $1: a mounted tree
    echo "== listing $1"
    (cd "$1" && find . -exec stat -c '%F|%a|%s|%n' {} +)
    echo "== sums $1"
    (cd "$1" && find . -type f -exec sha256sum {} +)
    echo "== links $1"
    (cd "$1" && find . -type l | while IFS= read -r p; do echo "$p -> $(readlink "$p")"; done)
    echo "== dirents $1"
    $VM_9P/probe dirents "$1"
    echo "== xattrs $1"
    $VM_9P/probe xattr "$1" user.tvix.castore.directory.digest
    $VM_9P/probe xattr "$1/hello.txt" user.tvix.castore.blob.digest
    $VM_9P/probe xattrs "$1/hello.txt"
    $VM_9P/probe xattr "$1/hello.txt" user.other
    echo "== writes $1"
    echo x > "$1/new" 2>&1 || true
    mkdir "$1/dir" 2>&1 || true
    rm "$1/hello.txt" 2>&1 || true
    touch "$1/hello.txt" 2>&1 || true
    echo "== end $1"
}
"""


def sections(output: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("== "):
            current = found.setdefault(line[3:], [])
        elif current is not None:
            current.append(line)
    return found


@dataclass
class Fixture:
    base: Path
    share: Path
    home: Path
    tree: Path
    digest: str
    store_tree: Path
    store_path: str
    broken_home: Path
    broken_digest: str


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    base = tmp_path_factory.mktemp("vm")
    share = base / "share"
    share.mkdir()
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the guest's probe")
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(share / "probe"), str(PROBE_SOURCE)],
        check=True,
        capture_output=True,
    )
    home = base / "home"
    tree = make_tree(base / "tree", big=True)
    digest = ingest(tree, home)
    store_tree = make_tree(base / "hello-tree", big=False)
    store_path = cafs("import", str(store_tree), home=home).stdout.strip()
    # A store that lost one blob: "victim" gives EIO, the rest still reads.
    broken_home = base / "broken-home"
    broken_tree = base / "broken"
    broken_tree.mkdir()
    (broken_tree / "victim").write_bytes(b"this blob will be lost\n")
    (broken_tree / "fine").write_bytes(b"this one stays\n")
    broken_digest = ingest(broken_tree, broken_home)
    victim = castore_listing(broken_digest, broken_home)["./victim"][1]
    hexdigest = Digest.parse(victim).hex()
    chunk = broken_home / "objects" / "chunks" / "b3" / hexdigest[:4] / hexdigest
    chunk.unlink()
    return Fixture(base, share, home, tree, digest, store_tree, store_path, broken_home,
                   broken_digest)  # fmt: skip


@pytest.fixture
def daemons(fixture: Fixture) -> Iterator[list[VirtiofsDaemon]]:
    """Daemons started by a test, killed by PID at its end whatever happened."""
    started: list[VirtiofsDaemon] = []
    yield started
    for daemon in started:
        daemon.stop(signal.SIGKILL)


def start(fixture: Fixture, daemons: list[VirtiofsDaemon], home: Path, *args: str) -> str:
    path = Path(socket_path(fixture.base))
    daemons.append(spawn_virtiofs(home, path, *args))
    return str(path)


def check_exit(daemons: list[VirtiofsDaemon]) -> None:
    for daemon in daemons:
        assert daemon.wait(timeout=20) == 0, daemon.log_text()
        assert not daemon.socket.exists()


def test_a_guest_sees_the_store_and_a_tree_as_the_host_made_them(
    fixture: Fixture, daemons: list[VirtiofsDaemon]
) -> None:
    tree_sock = start(fixture, daemons, fixture.home, "castore", "virtiofs", fixture.digest)
    store_sock = start(fixture, daemons, fixture.home, "virtiofs")
    broken_sock = start(
        fixture, daemons, fixture.broken_home, "castore", "virtiofs", fixture.broken_digest
    )
    name = fixture.store_path.rsplit("/", 1)[1]
    slices = " ".join(f"{offset}:{length}" for offset, length in ODD_SLICES)
    script = (
        CHECK
        + f"""
mkdir -p /mnt/tree /mnt/store /mnt/broken
mount -t virtiofs "$VM_TAG0" /mnt/tree || exit 10
mount -t virtiofs "$VM_TAG1" /mnt/store || exit 11
mount -t virtiofs "$VM_TAG2" /mnt/broken || exit 12
check /mnt/tree
check /mnt/store/{name}
echo "== store root"
$VM_9P/probe dirents /mnt/store
echo "== slices"
for s in {slices}; do
    off=${{s%:*}}; len=${{s#*:}}
    part=$(dd if=/mnt/tree/big bs=65536 iflag=skip_bytes,count_bytes skip=$off count=$len \
        2>/dev/null | sha256sum)
    echo "$s ${{part%% *}}"
done
echo "== broken"
cat /mnt/broken/victim 2>&1 && echo "victim read"
cat /mnt/broken/fine
echo "== done"
"""
    )
    result = run_guest(
        script,
        virtiofs=[(tree_sock, "tree"), (store_sock, "store"), (broken_sock, "broken")],
        ninep=str(fixture.share),
        mem="1G",
        timeout=300,
    )
    output = result.output.decode(errors="replace")
    assert result.rc == 0, output
    found = sections(output)
    assert "done" in found, output[-3000:]
    # The store path's tree, ingested again: the same digest and node size.
    line = cafs("castore", "ingest", str(fixture.store_tree), home=fixture.home).stdout
    _, _, store_digest, _, store_size = line.split()
    for mount, tree, digest, root_size in [
        ("/mnt/tree", fixture.tree, fixture.digest, 0),  # a mount's root has size 0
        (f"/mnt/store/{name}", fixture.store_tree, store_digest, int(store_size)),
    ]:
        listing = castore_listing(digest, fixture.home)
        dir_sizes = {path: size for path, (kind, _, size) in listing.items() if kind == "directory"}
        dir_sizes["."] = root_size
        assert set(found[f"listing {mount}"]) == expected_listing(tree, dir_sizes)
        assert set(found[f"sums {mount}"]) == expected_sums(tree)
        assert set(found[f"links {mount}"]) == expected_links(tree)
        kinds = {entry.name: entry for entry in os.scandir(tree)}
        dirents = {}
        for line in found[f"dirents {mount}"]:
            d_type, entry_name = line.split(" ", 1)
            dirents[entry_name] = int(d_type)
        assert set(dirents) == set(kinds)
        for entry_name, entry in kinds.items():
            want = 10 if entry.is_symlink() else 4 if entry.is_dir() else 8
            assert dirents[entry_name] == want, entry_name
        xattrs = found[f"xattrs {mount}"]
        assert xattrs == [
            digest,
            listing["./hello.txt"][1],
            "user.tvix.castore.blob.digest",
            f"errno {errno.ENODATA}",
        ]
        writes = found[f"writes {mount}"]
        assert len(writes) == 4 and all("Read-only file system" in line for line in writes)
    assert found["store root"] == [f"errno {errno.EPERM}"]  # no --list-root
    big = (fixture.tree / "big").read_bytes()
    for line, (offset, length) in zip(found["slices"], ODD_SLICES, strict=True):
        digest_hex = hashlib.sha256(big[offset : offset + length]).hexdigest()
        assert line == f"{offset}:{length} {digest_hex}"
    broken = found["broken"]
    assert any("Input/output error" in line for line in broken) and "victim read" not in broken, (
        broken
    )
    assert broken[-1] == "this one stays"
    check_exit(daemons)


def test_two_guests_at_once_each_with_its_daemon_on_one_store(
    fixture: Fixture, daemons: list[VirtiofsDaemon]
) -> None:
    socks = [
        start(fixture, daemons, fixture.home, "castore", "virtiofs", fixture.digest)
        for _ in range(2)
    ]
    script = """
mkdir /mnt/t && mount -t virtiofs "$VM_TAG0" /mnt/t || exit 10
cd /mnt/t && find . -type f ! -name big -exec sha256sum {} + | sort
"""
    results: list[object] = [None, None]

    def guest(index: int) -> None:
        try:
            results[index] = run_guest(script, virtiofs=[(socks[index], "t")], timeout=300)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=guest, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    want = expected_sums(fixture.tree)
    want = {line for line in want if not line.endswith("  ./big")}
    for result in results:
        assert not isinstance(result, Exception), result
        output = result.output.decode(errors="replace")  # type: ignore[attr-defined]
        assert result.rc == 0, output  # type: ignore[attr-defined]
        assert set(output.splitlines()) == want
    check_exit(daemons)


def test_a_killed_daemon_fails_the_guest_instead_of_hanging_it(
    fixture: Fixture, daemons: list[VirtiofsDaemon]
) -> None:
    sock = start(fixture, daemons, fixture.home, "castore", "virtiofs", fixture.digest)
    daemon = daemons[0]

    def kill_once_serving() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "INIT: kernel" in daemon.log_text():
                time.sleep(0.5)
                daemon.process.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once_serving)
    killer.start()
    script = """
mkdir /mnt/t && mount -t virtiofs "$VM_TAG0" /mnt/t || exit 10
while true; do cat /mnt/t/big > /dev/null; echo 3 > /proc/sys/vm/drop_caches; done
"""
    started = time.monotonic()
    try:
        with pytest.raises(GuestError):
            run_guest(script, virtiofs=[(sock, "t")], timeout=240)
    finally:
        killer.join()
    assert time.monotonic() - started < 120
    assert daemon.process.wait(timeout=10) == -signal.SIGKILL

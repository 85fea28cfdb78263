"""The QEMU guest runner itself.

Output and exit status pass through unchanged; files shared over 9p and over
virtiofs (QEMU's reference virtiofsd as the backend) arrive intact; a backend
that dies or a script that hangs ends the run early with the right error; and
no QEMU outlives a run. Each test boots one guest (about 2.5 s under TCG).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.vm import guest
from tests.vm.guest import GuestError, GuestTimeout, run_guest

UNAVAILABLE = guest.available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no QEMU guest: {UNAVAILABLE}")

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers


def processes_with(text: str) -> list[int]:
    """PIDs of the processes whose command line contains TEXT."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found


def is_qemu(pid: int) -> bool:
    try:
        return b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_qemu_left(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Records the PID of every QEMU the test starts; none may be alive afterwards."""
    pids: list[int] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        proc = real_popen(*args, **kwargs)
        argv = args[0] if args else kwargs["args"]
        if "qemu-system" in os.path.basename(str(argv[0])):
            pids.append(proc.pid)
        return proc

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    yield pids
    monkeypatch.undo()
    alive = [pid for pid in pids if is_qemu(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"QEMU still running after the test: {alive}"


def short_socket(tmp_path: Path, name: str) -> str:
    """A unix socket path under tmp_path, or under a short temporary folder if too long."""
    path = tmp_path / name
    if len(os.fsencode(path)) <= 100:
        return str(path)
    return str(Path(tempfile.mkdtemp(prefix="vm-", dir=tmp_path.parent)) / name)


def make_tree(root: Path, seed: int) -> dict[str, str]:
    """A fixture tree with awkward sizes and names; returns {"./path": sha256} of its files."""
    rng = random.Random(seed)
    files = {
        "empty": 0,
        "one": 1,
        "page-1": 4095,
        "page": 4096,
        "page+1": 4097,
        "64k": 65536,
        "128k+1": 131073,
        "name with spaces": 100,
        "ünïcødé-名前": 333,
        "deep/er/still/leaf": 5000,
    }
    files.update({f"many/f{i:03d}": rng.randrange(0, 3000) for i in range(40)})
    sums = {}
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        path.write_bytes(data)
        sums[f"./{rel}"] = hashlib.sha256(data).hexdigest()
    tool = root / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    sums["./tool.sh"] = hashlib.sha256(tool.read_bytes()).hexdigest()
    (root / "link").symlink_to("deep/er/still/leaf")
    return sums


def listing(root: Path) -> bytes:
    """What `find . | sort` prints in the guest for ROOT (bytewise order)."""
    names = [b"."] + [b"./" + os.fsencode(p.relative_to(root)) for p in root.rglob("*")]
    return b"".join(n + b"\n" for n in sorted(names))


def sha256_list(sums: dict[str, str]) -> bytes:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())).encode()


def parse_sums(text: bytes) -> dict[str, str]:
    sums = {}
    for line in text.decode().splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return sums


def stop_by_pid(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started in its own session, with everything in its group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def reference_virtiofsd(source: Path, sock: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """QEMU's C virtiofsd serving SOURCE on SOCK (one connection); stopped by PID afterwards."""
    if not os.access(VIRTIOFSD, os.X_OK):
        pytest.skip(f"no reference virtiofsd at {VIRTIOFSD} (Debian: qemu-system-common)")
    if os.geteuid() != 0:
        pytest.skip("the reference virtiofsd needs root (it sandboxes itself in namespaces)")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={source}", "-o", "cache=auto"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if proc.poll() is not None:
                pytest.fail(f"virtiofsd exited at start: {log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail("virtiofsd did not create its socket within 10 s")
            time.sleep(0.02)
        yield proc
    finally:
        stop_by_pid(proc)
        leftovers = processes_with(f"--socket-path={sock}")
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        assert not leftovers, f"virtiofsd processes left behind: {leftovers}"


# ---------------------------------------------------------------- tests


def test_output_bytes_and_exit_status_pass_through(no_qemu_left: list[int]) -> None:
    every_byte = bytes(range(256))
    octal = "".join(f"\\{b:03o}" for b in every_byte)
    script = f"""
printf 'line one\\r\\n'
printf '{octal}'
echo to-stderr >&2
echo '@@cafs-vm:0123456789abcdef01234567:end rc=0@@'
echo '<4>cafs-vm-kmsg-probe' > /dev/kmsg
dmesg | grep -q cafs-vm-kmsg-probe && printf 'dmesg works'
exit 7
"""
    res = run_guest(script, timeout=60)
    assert len(no_qemu_left) == 1  # the fixture saw the QEMU, and checks it is gone
    expected = (
        b"line one\r\n"
        + every_byte
        + b"to-stderr\n"
        + b"@@cafs-vm:0123456789abcdef01234567:end rc=0@@\n"
        + b"dmesg works"
    )
    assert res.rc == 7
    assert res.output == expected  # exact: no CR added, no kernel line, no final newline added
    assert 0 < res.boot_s < res.wall_s
    assert b"@@cafs-vm:" in res.console


def test_9p_share_arrives_intact(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    sums = make_tree(share, seed=9)
    script = """
cd "$VM_9P" || exit 10
find . -type f -exec sha256sum {} + | sort -k 2
echo "link -> $(readlink link)"
[ -x tool.sh ] && ./tool.sh
mount -t 9p -o trans=virtio host9p /mnt 2>/dev/null && echo "mounted twice"
touch new-file 2>/dev/null && echo "writable"
exit 0
"""
    res = run_guest(script, ninep=str(share), timeout=60)
    assert res.rc == 0, res.output
    lines = res.output.split(b"\n")
    assert parse_sums(b"\n".join(lines[: len(sums)])) == sums
    assert lines[len(sums) :] == [b"link -> deep/er/still/leaf", b"tool", b""]


def test_virtiofs_through_the_reference_virtiofsd(tmp_path: Path) -> None:
    trees = {name: tmp_path / name for name in ("a", "b")}
    expected = tmp_path / "expected"
    expected.mkdir()
    for seed, (name, root) in enumerate(trees.items()):
        root.mkdir()
        sums = make_tree(root, seed)
        (expected / f"{name}.sha256").write_bytes(sha256_list(sums))
        (expected / f"{name}.find").write_bytes(listing(root))
    # A negative control: a list with one wrong digest must be caught.
    wrong = dict(parse_sums((expected / "a.sha256").read_bytes()))
    wrong["./page"] = "0" * 64
    (expected / "wrong.sha256").write_bytes(sha256_list(wrong))
    script = """
check() {  # MOUNTPOINT NAME
  cd "$1" || exit 20
  list="$VM_9P/$2.sha256"
  sha256sum -c -s "$list" || { sha256sum -c "$list" | grep -v ': OK$'; exit 21; }
  find . | sort | diff "$VM_9P/$2.find" - || exit 22
  [ "$(readlink link)" = deep/er/still/leaf ] && [ -x tool.sh ] || exit 23
  echo "$2 ok"
}
mkdir -p /mnt/a /mnt/b
mount -t virtiofs "$VM_TAG0" /mnt/a || exit 11
mount -t virtiofs "$VM_TAG1" /mnt/b || exit 12
check /mnt/a a
check /mnt/b b
cd /mnt/a && sha256sum -c -s "$VM_9P/wrong.sha256" 2>/dev/null && echo "wrong list passed"
echo "tags: $VM_TAGS"
"""
    sock_a, sock_b = short_socket(tmp_path, "a.sock"), short_socket(tmp_path, "b.sock")
    with (
        reference_virtiofsd(trees["a"], sock_a, tmp_path / "a.log"),
        reference_virtiofsd(trees["b"], sock_b, tmp_path / "b.log"),
    ):
        res = run_guest(
            script,
            virtiofs=[(sock_a, "tree-a"), (sock_b, "tree-b")],
            ninep=str(expected),
            timeout=90,
        )
    assert res.rc == 0, res.output
    assert res.output == b"a ok\nb ok\ntags: tree-a tree-b\n"


@pytest.mark.parametrize("witness", ["qemu-stderr", "socket-state"])
def test_backend_killed_mid_run_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, witness: str
) -> None:
    """Either sign of a dead backend suffices: QEMU's complaint, or its socket's state
    (the only one when a backend has no backend-request channel QEMU reads from)."""
    if witness == "qemu-stderr":
        monkeypatch.setattr(guest._HangupWatcher, "hung_up", lambda self: False)
    else:
        monkeypatch.setattr(guest, "HANGUP_MESSAGES", ())
    served = tmp_path / "served"
    served.mkdir()
    make_tree(served, seed=3)
    sock = short_socket(tmp_path, "fs.sock")
    script = """
mkdir -p /mnt/fs && mount -t virtiofs "$VM_TAG0" /mnt/fs || exit 11
echo mounted > /mnt/fs/ready
while :; do cat /mnt/fs/many/* >/dev/null; ls /mnt/fs >/dev/null; done
"""
    killed_at: list[float] = []
    done = threading.Event()
    with reference_virtiofsd(served, sock, tmp_path / "fs.log") as backend:

        def kill_when_ready() -> None:
            while not (served / "ready").exists():
                if done.wait(0.05):
                    return
            time.sleep(0.3)  # the guest is in its read loop
            stop_by_pid(backend)
            killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill_when_ready, daemon=True)
        killer.start()
        try:
            with pytest.raises(GuestError) as caught:
                run_guest(script, virtiofs=[(sock, "fs")], timeout=60)
            noticed = time.monotonic()
        finally:
            done.set()
            killer.join(15)
    assert not isinstance(caught.value, GuestTimeout)
    assert killed_at, "the guest never mounted the share"
    assert noticed - killed_at[0] < 5, f"took {noticed - killed_at[0]:.1f}s to notice"
    assert "hung up while the script ran" in str(caught.value)


def test_missing_backend_fails_at_start(tmp_path: Path) -> None:
    sock = short_socket(tmp_path, "nobody.sock")
    t0 = time.monotonic()
    with pytest.raises(GuestError) as caught:
        run_guest("true", virtiofs=[(sock, "fs")], timeout=60)
    assert time.monotonic() - t0 < 10
    assert not isinstance(caught.value, GuestTimeout)
    assert "QEMU failed to start" in str(caught.value)
    assert sock in str(caught.value)  # QEMU's own complaint is included


def test_hanging_script_times_out() -> None:
    t0 = time.monotonic()
    with pytest.raises(GuestTimeout) as caught:
        run_guest("echo started; sleep 600", timeout=8)
    took = time.monotonic() - t0
    assert 8 <= took < 12
    assert "while the script ran" in str(caught.value)
    assert "started" in str(caught.value)  # the console's tail


def test_command_line(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_bytes(b"printf 'from the guest: %s' \"$(id -u)\"; exit 3\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.vm.guest", "--script", str(script), "--mem", "256M"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        qemus = [pid for pid in processes_with(f"/runs/{proc.pid}-") if is_qemu(pid)]
        for pid in qemus:
            os.kill(pid, signal.SIGKILL)
    assert (proc.returncode, out) == (3, b"from the guest: 0"), err
    assert not qemus, f"QEMU left behind by the command line: {qemus}"


def test_initramfs_cache_is_keyed_and_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent builders agree on one file; a changed /init gets a new one, the old goes."""
    monkeypatch.setenv("CAFS_VM_CACHE", str(tmp_path))
    kernel, busybox = guest._find_kernel(), guest._busybox()
    assert not isinstance(kernel, str) and busybox is not None
    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda _: guest._initramfs(kernel, busybox), range(2)))
    assert built[0] == built[1]
    archive = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(built[0].read_bytes())
    assert archive.startswith(b"070701") and b"TRAILER!!!" in archive
    assert guest._initramfs(kernel, busybox) == built[0]  # a hit: nothing rebuilt
    monkeypatch.setattr(guest, "INIT", guest.INIT + "# changed\n")
    rebuilt = guest._initramfs(kernel, busybox)
    assert rebuilt != built[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [rebuilt.name]

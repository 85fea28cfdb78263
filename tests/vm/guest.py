"""Run one busybox shell script in a throwaway Linux guest under QEMU.

Tests and benchmarks use this to put a virtiofs backend (a vhost-user-fs server
listening on a unix socket) under the real Linux virtiofs driver::

    from tests.vm.guest import run_guest

    res = run_guest('mount -t virtiofs "$VM_TAG0" /mnt && ls /mnt', virtiofs=[(sock, "cafs")])
    assert res.rc == 0, res.output

or from a shell: ``python -m tests.vm.guest --script check.sh --virtiofs SOCK TAG``.

Host side
---------
* Kernel: an installed distribution kernel, ``/boot/vmlinuz-VERSION`` with its
  modules under ``/lib/modules/VERSION``. A kernel that has both the virtiofs and
  the 9p modules is preferred (Debian's cloud kernel has no 9p), then the newest;
  ``CAFS_VM_KERNEL=VERSION`` chooses one.
* Userland: a statically linked busybox (Debian: busybox-static).
* QEMU: ``qemu-system-x86_64`` with TCG (no KVM), machine q35, no default
  devices. Guest RAM is always a shared memfd (``memory-backend-memfd,share=on``
  with a NUMA node on it), which a vhost-user backend needs to map it.
* A kernel with a PVH entry point is booted as its uncompressed ELF, which QEMU
  loads directly; this boots about twice as fast under TCG as the bzImage, which
  is the fallback.
* The extracted vmlinux and the initramfs (busybox, the modules, ``/init``) are
  cached under ``$CAFS_VM_CACHE`` or ``~/.cache/cafs-vm``, named after a digest
  of their inputs, so a new kernel, busybox or init script gets new ones. They
  are written under a temporary name and renamed into place: concurrent runs
  may build the same file without harm.
* A virtiofs backend must already listen on its socket; QEMU connects to it at
  start-up (a missing or dead socket makes QEMU fail at once: GuestError). If the
  backend hangs up while the guest runs, the guest's requests can never
  complete; this is noticed from QEMU's stderr or from the state of QEMU's
  sockets, and run_guest stops QEMU and raises GuestError within about two
  seconds instead of waiting for the timeout.
* QEMU is killed by PID at the timeout (GuestTimeout) and dies with the process
  that started it, even on SIGKILL (``PR_SET_PDEATHSIG``). Linux ties that signal
  to the thread that forked, so call run_guest from a thread that outlives it.

Guest side
----------
* PID 1 is a busybox shell script. It mounts /proc, /sys, /dev and a tmpfs on
  /tmp, loads the virtio_pci and virtiofs modules (and the 9p ones if ``ninep``
  is given), runs the script with busybox ``sh`` as root in /root, stdin /dev/null,
  ``PATH=/bin`` (busybox applets only), and powers the guest off.
* ``$VM_TAG0``, ``$VM_TAG1``, ... are the virtiofs tags in the order given and
  ``$VM_TAGS`` all of them, space-separated. Nothing is mounted for the script:
  ``mkdir -p /mnt/a && mount -t virtiofs "$VM_TAG0" /mnt/a``.
* ``ninep=DIR`` shares DIR read-only over virtio-9p (tag ``host9p``) and it is
  mounted at ``/host`` before the script starts (``$VM_9P`` is ``/host``; unset
  without ``ninep``). Use it to pass expected data in: checksum lists, listings.
* What the script writes to stdout and stderr comes back byte for byte in
  ``Result.output`` (the console does no output processing) and its exit status
  in ``Result.rc``. Kernel messages are kept off the console while the script
  runs (console loglevel 1); ``dmesg`` in the script shows them.
* The serial console carries about 400 KB/s under TCG: compare in the guest and
  print a summary rather than megabytes. Writes the host must see on a virtiofs
  mount need a ``sync`` in the script (the guest is powered off, not shut down).
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import ctypes
import gzip
import hashlib
import lzma
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

NINEP_TAG = "host9p"
NINEP_MOUNT = "/host"
KERNEL_ARGS = "console=ttyS0 rdinit=/init panic=-1 quiet"
VIRTIOFS_MODULES = ("virtio_pci", "virtiofs")
NINEP_MODULES = ("9pnet_virtio", "9p")
# Part of the initramfs cache key: bump it when the image's layout changes.
IMAGE_LAYOUT = "1"
# What QEMU writes to stderr when a vhost-user backend has closed its end.
HANGUP_MESSAGES = (b"Unexpected end-of-file", b"Failed to read msg header")
HANGUP_GRACE_S = 1.0  # after a hang-up, for console output still on its way
POWEROFF_GRACE_S = 10.0  # after the script, for the guest to power off
TAG_RE = re.compile(r"[A-Za-z0-9._-]{1,36}")
MEM_RE = re.compile(r"([0-9]+)([KMGT]?)", re.IGNORECASE)
SUN_PATH_MAX = 107  # bytes in a unix socket path, without the terminating NUL

# PID 1 in the guest. /vm holds the lists of modules to load, in order (from
# the cached image), and the run's own files: nonce (the markers carry it, so
# that a script cannot forge them), env (shell assignments) and script. A
# marker starts with a newline so that it stands on a line of its own even
# after output without a final newline; the host takes that newline off again.
# The 9p tag is NINEP_TAG's value.
INIT = r"""#!/bin/sh
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
exec </dev/null >/dev/console 2>&1
stty -opost </dev/console
read -r nonce </vm/nonce
mark() { printf '\n@@cafs-vm:%s:%s@@\n' "$nonce" "$*"; }
fail() { mark "fail $*"; poweroff -f; sleep 10; exit 1; }
load() {
  while read -r mod; do
    insmod "/lib/modules/$mod" || fail "insmod $mod"
  done <"$1"
}
load /vm/modules
. /vm/env
if [ -n "$VM_9P" ]; then
  load /vm/modules-9p
  mkdir -p "$VM_9P"
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host9p "$VM_9P" || fail "mount 9p"
fi
dmesg -n 1
printf '@@cafs-vm:%s:begin@@\n' "$nonce"
cd /root
sh /vm/script
rc=$?
cd /
mark "end rc=$rc"
echo "--- guest kernel log (tail) ---"
dmesg | tail -n 40
sync
poweroff -f
sleep 10
"""


@dataclass(frozen=True)
class Result:
    """A script's run in the guest."""

    rc: int  # the script's exit status
    output: bytes  # what it wrote to stdout and stderr, exactly
    boot_s: float  # from QEMU's start to the script's start (host clock)
    wall_s: float  # from QEMU's start to its exit
    console: bytes  # the whole serial console, boot messages and markers included


class GuestError(Exception):
    """No guest could run here, QEMU failed to start, the guest died, or a backend hung up."""


class GuestTimeout(GuestError):
    """The guest did not finish the script in time; QEMU was killed."""


# ---------------------------------------------------------------- the host's parts


def _qemu() -> str | None:
    return shutil.which("qemu-system-x86_64")


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:5] != b"\x7fELF\x02":
                return False
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def _busybox() -> str | None:
    """A statically linked busybox, or None."""
    for cand in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if cand and _is_static_elf(cand):
            return cand
    return None


def _mod_name(path: str) -> str:
    """The module name of a modules.dep path: kernel/fs/fuse/virtiofs.ko.xz -> virtiofs."""
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


@dataclass(frozen=True)
class _Kernel:
    version: str
    image: Path  # the bzImage in /boot
    moddir: Path
    fs_modules: tuple[str, ...]  # for virtiofs: paths under moddir, in load order
    ninep_modules: tuple[str, ...] | None  # the further ones for 9p, if it has them

    @property
    def has_9p(self) -> bool:
        return self.ninep_modules is not None


def _load_order(moddir: Path, wanted: Sequence[str]) -> list[str] | None:
    """Paths of WANTED and their dependencies, dependencies first; None if one is missing.
    Built-in modules need no loading."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            deps[_mod_name(path)] = (path, rest.split())
    builtin_list = moddir / "modules.builtin"
    builtin = (
        {_mod_name(p) for p in builtin_list.read_text().split()} if builtin_list.exists() else set()
    )
    order: list[str] = []
    done: set[str] = set()

    def add(name: str) -> bool:
        if name in done or name in builtin:
            return True
        if name not in deps:
            return False
        done.add(name)
        path, needs = deps[name]
        if not all(add(_mod_name(dep)) for dep in needs):
            return False
        order.append(path)
        return True

    if not all(add(name) for name in wanted):
        return None
    return order


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", version) if p]


def _find_kernel() -> _Kernel | str:
    """The kernel to boot, or why there is none."""
    chosen = os.environ.get("CAFS_VM_KERNEL")
    root = Path("/lib/modules")
    versions = (
        [chosen] if chosen else sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    )
    found: list[_Kernel] = []
    for version in versions:
        moddir = root / version
        images = [
            p for p in (Path("/boot") / f"vmlinuz-{version}", moddir / "vmlinuz") if p.is_file()
        ]
        if not images or not (moddir / "modules.dep").is_file():
            continue
        image = images[0]
        fs = _load_order(moddir, VIRTIOFS_MODULES)
        if fs is None:
            continue
        both = _load_order(moddir, VIRTIOFS_MODULES + NINEP_MODULES)
        ninep = None if both is None else tuple(m for m in both if m not in fs)
        found.append(_Kernel(version, image, moddir, tuple(fs), ninep))
    if not found:
        which = f"kernel {chosen}" if chosen else "kernel"
        return (
            f"no {which} with virtiofs modules in /boot and /lib/modules "
            "(install linux-image-amd64)"
        )
    return max(found, key=lambda k: (k.has_9p, _version_key(k.version)))


def available() -> str | None:
    """None if a guest can run here, else a one-line reason why not."""
    if _qemu() is None:
        return "no qemu-system-x86_64 on PATH (install qemu-system-x86)"
    kernel = _find_kernel()
    if isinstance(kernel, str):
        return kernel
    if _busybox() is None:
        return "no statically linked busybox (install busybox-static)"
    if not os.access(kernel.image, os.R_OK) and not _cached_vmlinux(kernel)[0].exists():
        return f"cannot read {kernel.image} (make it readable, e.g. chmod 0644, or run as root)"
    return None


# ---------------------------------------------------------------- the boot files


class _Cpio:
    """Writes the "newc" cpio archive the kernel unpacks as its initramfs."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 0

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        path = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(path), 0)
        self._out += b"070701" + b"".join(b"%08X" % v for v in fields) + path
        self._out += bytes(-len(self._out) % 4) + data
        self._out += bytes(-len(self._out) % 4)

    def directory(self, name: str) -> None:
        self._add(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._add(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._add(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive, gzipped and padded so that another one can follow it."""
        self._add("TRAILER!!!", 0)
        packed = gzip.compress(bytes(self._out), compresslevel=6, mtime=0)
        return packed + bytes(-len(packed) % 4)


def cache_dir() -> Path:
    configured = os.environ.get("CAFS_VM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "cafs-vm"


def _digest(*parts: bytes | str | int) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        h.update(b"%d:" % len(data) + data)
    return h.hexdigest()[:16]


def _publish(path: Path, data: bytes) -> None:
    """Write PATH atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _prune(keep: Path, prefix: str) -> None:
    """Remove the cached files named PREFIX, a digest, maybe a suffix, other than
    KEEP and its companions: they were built from older inputs."""
    own = re.compile(re.escape(prefix) + r"[0-9a-f]{16}(\.[a-z.-]+)?")
    for old in keep.parent.iterdir():
        if own.fullmatch(old.name) and not old.name.startswith(keep.name):
            old.unlink(missing_ok=True)


def _decompress_tool(tool: str, data: bytes) -> bytes | None:
    if shutil.which(tool) is None:
        return None
    done = subprocess.run([tool, "-dc"], input=data, capture_output=True, check=False)
    return done.stdout if done.stdout else None


def _vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (boot protocol 2.08+), or None."""
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        return None
    setup_sectors = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    payload = bzimage[start : start + length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        if payload.startswith(b"\x1f\x8b"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        if payload.startswith(b"\x5d\x00\x00"):
            return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
        if payload.startswith(b"BZh"):
            return bz2.BZ2Decompressor().decompress(payload)
    except (lzma.LZMAError, zlib.error, OSError, EOFError):
        return None
    # The kernel's build appends the uncompressed size (4 bytes) to these two.
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return _decompress_tool("zstd", payload[:-4])
    if payload.startswith(b"\x02\x21\x4c\x18"):
        return _decompress_tool("lz4", payload[:-4])
    return None


def _has_pvh_entry(elf: bytes) -> bool:
    """True if the ELF kernel has a PVH entry point (a Xen note of type 18)."""
    if elf[:5] != b"\x7fELF\x02":
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            if elf[pos + 12 : pos + 12 + namesz] == b"Xen\0" and note_type == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _cached_vmlinux(kernel: _Kernel) -> tuple[Path, Path]:
    """Where the kernel's vmlinux is cached, and the mark left when it has no PVH entry."""
    st = kernel.image.stat()
    out = cache_dir() / f"vmlinux-{kernel.version}-{_digest(st.st_size, st.st_mtime_ns)}"
    return out, out.with_name(out.name + ".no-pvh")


def _boot_image(kernel: _Kernel) -> Path:
    """The file QEMU boots: the cached vmlinux when it has a PVH entry, else the bzImage."""
    out, no_pvh = _cached_vmlinux(kernel)
    if out.exists():
        return out
    if no_pvh.exists():
        return kernel.image
    try:
        elf = _vmlinux(kernel.image.read_bytes())
    except OSError as e:
        raise GuestError(f"cannot read the kernel: {e}") from e
    if elf is None or not _has_pvh_entry(elf):
        _publish(no_pvh, b"")
        return kernel.image
    _publish(out, elf)
    _prune(out, f"vmlinux-{kernel.version}-")
    return out


def _module_bytes(path: Path) -> bytes:
    """A module file, decompressed (busybox insmod loads plain .ko files)."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        plain = _decompress_tool("zstd", data)
        if plain is None:
            raise GuestError(f"{path} is zstd-compressed and there is no zstd to unpack it")
        return plain
    return data


def _initramfs(kernel: _Kernel, busybox: str) -> Path:
    """The cached base initramfs: busybox, the modules, /init."""
    bb = Path(busybox).read_bytes()
    ninep = kernel.ninep_modules or ()
    mods = kernel.fs_modules + ninep
    raw = [(kernel.moddir / m).read_bytes() for m in mods]
    key = _digest(IMAGE_LAYOUT, INIT, kernel.version, bb, *kernel.fs_modules, "9p:", *ninep, *raw)
    out = cache_dir() / f"initramfs-{kernel.version}-{key}.cpio.gz"
    if out.exists():
        return out
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    cpio = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "root", "run", "sys"):
        cpio.directory(d)
    for d in ("tmp", "usr", "vm"):
        cpio.directory(d)
    cpio.symlink("sbin", "bin")
    cpio.symlink("usr/bin", "../bin")
    cpio.symlink("usr/sbin", "../bin")
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", bb, 0o755)
    for applet in applets:
        if applet != "busybox":
            cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.file("etc/group", b"root:x:0:\n")
    for listing, group in (("vm/modules", kernel.fs_modules), ("vm/modules-9p", ninep)):
        names = [_mod_name(mod) + ".ko" for mod in group]
        for mod, name in zip(group, names, strict=True):
            cpio.file(f"lib/modules/{name}", _module_bytes(kernel.moddir / mod))
        cpio.file(listing, "".join(n + "\n" for n in names).encode())
    cpio.file("init", INIT.encode(), 0o755)
    _publish(out, cpio.finish())
    _prune(out, f"initramfs-{kernel.version}-")
    return out


def _run_dir() -> Path:
    """A new folder for one run's files; folders of runs whose process is gone go first."""
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for d in runs.iterdir():
        pid = d.name.partition("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(d, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=runs))


# ---------------------------------------------------------------- QEMU


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGKILL the child when we die (prctl)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # we died before the prctl took effect
            os._exit(1)

    return hook


def _qemu_value(value: str) -> str:
    """VALUE as one QEMU option value (commas doubled)."""
    return value.replace(",", ",,")


def _mem_size(mem: str) -> str:
    m = MEM_RE.fullmatch(mem.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"mem={mem!r}: give a size such as 512M or 1G")
    return m.group(1) + (m.group(2).upper() or "M")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _tail(data: bytes, lines: int = 25) -> str:
    text = data.decode(errors="replace").replace("\r", "").rstrip("\n").splitlines()
    return "\n".join("  | " + line for line in text[-lines:])


def _failure(what: str, console: bytes, stderr: bytes) -> str:
    msg = what
    if console:
        msg += "\nguest console (last lines):\n" + _tail(console)
    if stderr.strip():
        msg += "\nQEMU stderr:\n" + _tail(stderr, 15)
    return msg


def run_guest(
    script: str | bytes,
    *,
    virtiofs: Sequence[tuple[str, str]] = (),
    ninep: str | None = None,
    mem: str = "512M",
    smp: int = 1,
    timeout: float = 120,
    qemu_args: Sequence[str] = (),
    queue_size: int = 1024,
) -> Result:
    """Boot a guest, run SCRIPT in it with busybox sh, and return its Result.

    virtiofs: (socket path, tag) pairs, one vhost-user-fs-pci device each; the
    backends must already listen. ninep: a host folder shared read-only at
    /host. qemu_args: more QEMU arguments. queue_size: descriptors per virtqueue
    of each virtiofs device.

    Raises GuestTimeout when the script has not finished after TIMEOUT seconds
    (boot included), GuestError when no guest can run here, QEMU fails, the
    guest dies, or a virtiofs backend hangs up.
    """
    body = script.encode() if isinstance(script, str) else script
    size = _mem_size(mem)
    if smp < 1:
        raise ValueError("smp must be at least 1")
    for sock, tag in virtiofs:
        if not TAG_RE.fullmatch(tag):
            raise ValueError(f"virtiofs tag {tag!r}: use 1 to 36 of A-Z a-z 0-9 . _ -")
        if len(os.fsencode(sock)) > SUN_PATH_MAX:
            raise ValueError(f"socket path longer than {SUN_PATH_MAX} bytes: {sock}")
    if ninep is not None and not os.path.isdir(ninep):
        raise ValueError(f"ninep={ninep!r} is not a directory")

    qemu, kernel, busybox = _qemu(), _find_kernel(), _busybox()
    if qemu is None or isinstance(kernel, str) or busybox is None:
        raise GuestError(available() or "no guest can run here")
    if ninep is not None and not kernel.has_9p:
        raise GuestError(f"kernel {kernel.version} has no 9p modules")
    image = _boot_image(kernel)
    base = _initramfs(kernel, busybox)

    nonce = secrets.token_hex(12)
    tags = [tag for _, tag in virtiofs]
    env = [f"export VM_TAG{i}={shlex.quote(tag)}" for i, tag in enumerate(tags)]
    env.append(f"export VM_TAGS={shlex.quote(' '.join(tags))}")
    if ninep is not None:
        env.append(f"export VM_9P={NINEP_MOUNT}")
    extra = _Cpio()
    extra.file("vm/nonce", nonce.encode() + b"\n")
    extra.file("vm/env", "".join(line + "\n" for line in env).encode())
    extra.file("vm/script", body)

    run = _run_dir()
    proc: subprocess.Popen[bytes] | None = None
    try:
        initrd = run / "initrd"
        initrd.write_bytes(base.read_bytes() + extra.finish())
        cmd = [
            qemu,
            *("-nodefaults", "-no-user-config", "-no-reboot", "-display", "none"),
            *("-machine", "q35", "-accel", "tcg", "-smp", str(smp), "-m", size),
            *("-object", f"memory-backend-memfd,id=mem,size={size},share=on"),
            *("-numa", "node,memdev=mem"),
            *("-kernel", _qemu_value(str(image)), "-initrd", _qemu_value(str(initrd))),
            *("-append", KERNEL_ARGS),
            *("-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"),
        ]
        for i, (sock, tag) in enumerate(virtiofs):
            cmd += ["-chardev", f"socket,id=vfs{i},path={_qemu_value(sock)}"]
            cmd += [
                "-device",
                f"vhost-user-fs-pci,queue-size={queue_size},chardev=vfs{i},tag={tag}",
            ]
        if ninep is not None:
            share = _qemu_value(os.path.abspath(ninep))
            cmd += [
                "-virtfs",
                f"local,path={share},mount_tag={NINEP_TAG},security_model=none,readonly=on",
            ]
        cmd += qemu_args

        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        return _watch(proc, nonce, t0, t0 + timeout, timeout, [sock for sock, _ in virtiofs])
    finally:
        if proc is not None:
            _kill(proc)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        shutil.rmtree(run, ignore_errors=True)


def _watch(
    proc: subprocess.Popen[bytes],
    nonce: str,
    t0: float,
    deadline: float,
    timeout: float,
    backends: Sequence[str],
) -> Result:
    """Follow QEMU's console and stderr until the script's end, a failure or the deadline."""
    assert proc.stdout is not None and proc.stderr is not None
    tag = re.escape(f"@@cafs-vm:{nonce}:".encode())
    begin_re = re.compile(tag + rb"begin@@\r?\n")
    end_re = re.compile(rb"\n" + tag + rb"(?:end rc=(\d+)|fail ([^@\r\n]*))@@")
    console = bytearray()
    stderr = bytearray()
    begin: re.Match[bytes] | None = None
    end: re.Match[bytes] | None = None
    t_begin = t_end = t_hangup = 0.0
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, console)
    sel.register(proc.stderr, selectors.EVENT_READ, stderr)
    watcher = _HangupWatcher(proc.pid, backends) if backends else None
    with sel:
        while True:
            now = time.monotonic()
            if end is not None:
                limit = t_end + POWEROFF_GRACE_S
            elif t_hangup:
                limit = t_hangup + HANGUP_GRACE_S
            else:
                limit = deadline
            if now >= limit:
                break
            if not sel.get_map():  # QEMU closed both pipes: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, limit - now))
                break
            for key, _ in sel.select(min(limit - now, 0.25)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                start = max(0, len(buf) - 256)
                buf += chunk
                if buf is not console:
                    continue
                if begin is None:
                    begin = begin_re.search(console, start)
                    if begin is not None:
                        t_begin = time.monotonic()
                if end is None:
                    end = end_re.search(console, max(start, begin.end() if begin else 0))
                    if end is not None:
                        t_end = time.monotonic()
            if (
                end is None
                and not t_hangup
                and watcher is not None
                and (any(m in stderr for m in HANGUP_MESSAGES) or watcher.hung_up())
            ):
                t_hangup = time.monotonic()
        running = proc.poll() is None
        _kill(proc)
        # Whatever QEMU wrote before it died.
        for key in list(sel.get_map().values()):
            while chunk := os.read(key.fd, 1 << 16):
                key.data.extend(chunk)
    wall = time.monotonic() - t0
    out, err = bytes(console), bytes(stderr)

    if end is not None and end.group(1) is not None and begin is not None:
        return Result(
            rc=int(end.group(1)),
            output=out[begin.end() : end.start()],
            boot_s=t_begin - t0,
            wall_s=wall,
            console=out,
        )
    if end is not None:
        failed = (end.group(2) or b"").decode(errors="replace").strip()
        raise GuestError(_failure(f"guest set-up failed: {failed}", out, err))
    if t_hangup:
        where = "while the script ran" if begin else "before the script started"
        raise GuestError(
            _failure(
                f"a virtiofs backend hung up {where} ({t_hangup - t0:.1f}s after QEMU's start); "
                "QEMU killed",
                out,
                err,
            )
        )
    if running:
        where = "while the script ran" if begin else "before the script started"
        raise GuestTimeout(_failure(f"timed out after {timeout:g}s {where}; QEMU killed", out, err))
    what = "QEMU failed to start" if not out else "the guest stopped before the script finished"
    raise GuestError(_failure(f"{what} (QEMU exit status {proc.returncode})", out, err))


@dataclass(frozen=True)
class _UnixSocket:
    peer: int  # the peer's inode, 0 if none
    shutdown: int  # RCV_SHUTDOWN | SEND_SHUTDOWN, set on both ends when one closes
    name: bytes  # the bound path (a backend's accepted connections carry its listening path)


class _HangupWatcher:
    """Tells when a virtiofs backend's connection to QEMU has ended.

    QEMU reports a vhost-user backend's hang-up on stderr only when it reads
    from the backend, which it may never do while the guest waits for replies.
    The kernel knows at once: sock_diag (the netlink interface behind ``ss -x``)
    shows, for each of QEMU's sockets (from /proc/PID/fd), its peer and whether
    it is shut down. A connection to one of the backend paths that is seen
    established and later shut down, or closed by QEMU, counts as a hang-up.
    Sockets are matched to backends by the file name of the peer's address.
    Without netlink this stays silent and QEMU's stderr is the only witness.
    """

    NETLINK_SOCK_DIAG = 4
    SOCK_DIAG_BY_FAMILY = 20
    NLM_F_REQUEST_DUMP = 0x301
    NLMSG_ERROR, NLMSG_DONE = 2, 3
    UDIAG_SHOW_NAME, UDIAG_SHOW_PEER = 0x1, 0x4
    UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_SHUTDOWN = 0, 2, 6
    INTERVAL_S = 0.5

    def __init__(self, pid: int, paths: Sequence[str]) -> None:
        self._pid = pid
        self._names = {os.fsencode(os.path.basename(p)) for p in paths}
        self._connected: set[int] = set()  # QEMU's inodes seen connected to a backend
        self._next = 0.0
        self._broken = False

    def hung_up(self) -> bool:
        now = time.monotonic()
        if self._broken or now < self._next:
            return False
        self._next = now + self.INTERVAL_S
        mine = self._socket_inodes()
        try:
            sockets = self._unix_sockets()
        except OSError:
            self._broken = True
            return False
        for ino in self._connected:
            if ino not in mine or (ino in sockets and sockets[ino].shutdown):
                return True  # QEMU closed it, or the backend did
        for ino in mine & sockets.keys():
            own, peer = sockets[ino], sockets.get(sockets[ino].peer)
            if peer and not own.shutdown and os.path.basename(peer.name) in self._names:
                self._connected.add(ino)
        return False

    def _socket_inodes(self) -> set[int]:
        fds = f"/proc/{self._pid}/fd"
        found: set[int] = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(fds):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"{fds}/{fd}")
                    if target.startswith("socket:["):
                        found.add(int(target[8:-1]))
        return found

    def _unix_sockets(self) -> dict[int, _UnixSocket]:
        """All unix sockets of this network namespace, by inode."""
        show = self.UDIAG_SHOW_NAME | self.UDIAG_SHOW_PEER
        req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show, 0, 0)
        head = struct.pack(
            "=IHHII", 16 + len(req), self.SOCK_DIAG_BY_FAMILY, self.NLM_F_REQUEST_DUMP, 1, 0
        )
        found: dict[int, _UnixSocket] = {}
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, self.NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(2)
            nl.send(head + req)
            while data := nl.recv(1 << 16):
                pos = 0
                while pos + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, pos)
                    if kind == self.NLMSG_DONE:
                        return found
                    if kind == self.NLMSG_ERROR or length < 32:
                        raise OSError("sock_diag refused the request")
                    (ino,) = struct.unpack_from("=I", data, pos + 20)  # after the 16-byte header
                    peer = shutdown = 0
                    name = b""
                    attr = pos + 32
                    while attr + 4 <= pos + length:
                        alen, atype = struct.unpack_from("=HH", data, attr)
                        if alen < 4:
                            break
                        value = data[attr + 4 : attr + alen]
                        if atype == self.UNIX_DIAG_PEER:
                            (peer,) = struct.unpack_from("=I", value)
                        elif atype == self.UNIX_DIAG_SHUTDOWN:
                            shutdown = value[0]
                        elif atype == self.UNIX_DIAG_NAME:
                            name = value.rstrip(b"\0")
                        attr += (alen + 3) & ~3
                    found[ino] = _UnixSocket(peer, shutdown, name)
                    pos += (length + 3) & ~3
        return found


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.vm.guest",
        description="Boot a QEMU guest, run a busybox sh script in it, print its output "
        "and exit with its status (124: timeout, 125: QEMU or guest failure).",
    )
    parser.add_argument("--script", required=True, metavar="FILE", help="the script; - for stdin")
    parser.add_argument(
        "--virtiofs",
        nargs=2,
        action="append",
        default=[],
        metavar=("SOCK", "TAG"),
        help="a vhost-user-fs backend listening on SOCK, seen as $VM_TAG0, $VM_TAG1, ...",
    )
    parser.add_argument("--9p", dest="ninep", metavar="DIR", help="share DIR read-only at /host")
    parser.add_argument("--mem", default="512M", help="guest RAM (default 512M)")
    parser.add_argument("--smp", type=int, default=1, help="vCPUs (default 1)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds (default 120)")
    parser.add_argument("--qemu-arg", action="append", default=[], help="one more QEMU argument")
    parser.add_argument("--console", metavar="FILE", help="write the whole serial console here")
    parser.add_argument("-v", "--verbose", action="store_true", help="timings on stderr")
    args = parser.parse_args(argv)
    script = sys.stdin.buffer.read() if args.script == "-" else Path(args.script).read_bytes()

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through run_guest, which kills QEMU

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        res = run_guest(
            script,
            virtiofs=[(sock, tag) for sock, tag in args.virtiofs],
            ninep=args.ninep,
            mem=args.mem,
            smp=args.smp,
            timeout=args.timeout,
            qemu_args=args.qemu_arg,
        )
    except GuestTimeout as e:
        print(f"guest: {e}", file=sys.stderr)
        return 124
    except GuestError as e:
        print(f"guest: {e}", file=sys.stderr)
        return 125
    except ValueError as e:
        parser.error(str(e))
    if args.console:
        Path(args.console).write_bytes(res.console)
    if args.verbose:
        print(
            f"guest: boot {res.boot_s:.2f}s, total {res.wall_s:.2f}s, rc {res.rc}", file=sys.stderr
        )
    sys.stdout.buffer.write(res.output)
    sys.stdout.flush()
    return res.rc


if __name__ == "__main__":
    sys.exit(main())

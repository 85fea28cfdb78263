"""Every command against a ``cafs daemon`` process, and the daemon's own command line.

The commands are pointed at the daemon with the service flags (or their
environment variables) and their output is compared with what the same
commands print on the embedded store, and with NARs and store paths that the
test computes itself (the independent encoder of ``test_store_cli``). The
daemon is also checked as a program: refusals of bad addresses, fast failure
of ``wait-connect=1``, exit on SIGTERM and SIGINT, and a graceful shutdown
that lets a call in flight finish. Daemons are stopped by PID.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cafs.castore.digest import Digest
from cafs.store.hashes import CAHash, NixHash
from cafs.store.narinfo import NarInfo
from cafs.store.storepath import StorePath
from tests.cli.test_store_cli import (
    NOT_FOUND,
    UNREACHABLE,
    assert_one_line_error,
    closure_entry,
    expected_path,
    make_sources,
    nar_of,
    nar_string,
    nix_added,  # noqa: F401 - a fixture, used by test_copy_through_the_daemon
    tokens,
    write_json,
)
from tests.daemon import (
    READY,
    Daemon,
    file_services,
    running_daemon,
    socket_path,
    spawn_daemon,
)
from tests.process import CAFS, cafs, store_env

MIB = 1024 * 1024
FAST = 5.0
"""Seconds a refusal may take (the process start included; the connect timeout is 10 s)."""


def castore_remote(url: str) -> tuple[str, ...]:
    """The flags of castore commands for the services at ``url``."""
    return ("--blob-service-addr", url, "--directory-service-addr", url)


def remote(url: str) -> tuple[str, ...]:
    """The flags of Nix-layer commands (and the daemon) for the services at ``url``."""
    return (*castore_remote(url), "--path-info-service-addr", url)


def run(*args: str, home: Path, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """cafs with binary output (and optional input), not checked."""
    return subprocess.run(
        [*CAFS, *args], env=store_env(home), input=data, capture_output=True, timeout=300
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, on a unix socket, over file backends."""
    base = tmp_path_factory.mktemp("daemon-cli")
    with running_daemon(base / "home", socket_path(base), *file_services(base / "store")) as d:
        yield d


# -- castore commands ---------------------------------------------------------------------


def test_castore_ingest_cat_and_ls_through_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    tree = make_sources(tmp_path / "src")[0]
    big = random.Random(5).randbytes(5 * MIB + 3)
    (tree / "big").write_bytes(big)
    (tree / "run").write_bytes(b"#!/bin/sh\necho ran\n")
    (tree / "run").chmod(0o755)
    client, local = tmp_path / "client", tmp_path / "local"

    line = cafs("castore", "ingest", str(tree), *castore_remote(daemon.url), home=client).stdout
    # The digest does not depend on where the tree is stored.
    assert line == cafs("castore", "ingest", str(tree), home=local).stdout
    digest = line.split()[2]

    env = {"BLOB_SERVICE_ADDR": daemon.url, "DIRECTORY_SERVICE_ADDR": daemon.url}
    listing = cafs("castore", "ls", "-r", digest, home=client, **env).stdout
    assert listing == cafs("castore", "ls", "-r", digest, home=local).stdout
    rows = {row.split()[-1]: row.split() for row in listing.splitlines() if "->" not in row}
    assert rows["big"][:3] == ["file", str(Digest.of(big)), str(len(big))]
    assert rows["run"][0] == "executable"
    assert "aa -> /nix/store/somewhereelse" in listing

    cat = run("castore", "cat", rows["big"][1], *castore_remote(daemon.url), home=client)
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == big  # a chunked blob, read chunk by chunk over gRPC
    assert cafs("castore", "cat", rows["run"][1], home=client, **env).stdout == (
        "#!/bin/sh\necho ran\n"
    )

    missing = "b3:" + "A" * 43 + "="
    result = cafs("castore", "cat", missing, home=client, **env, check=False)
    assert_one_line_error(result, f"blob {missing} not found", NOT_FOUND)
    result = cafs("castore", "ls", missing, home=client, **env, check=False)
    assert_one_line_error(result, f"directory {missing} not found", NOT_FOUND)
    assert not client.exists()  # nothing was written to the client's embedded store


# -- the Nix layer ------------------------------------------------------------------------


def test_import_path_info_and_nar_dump_through_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    sources = make_sources(tmp_path / "src")
    tree = sources[0]
    (tree / "bin").mkdir()
    (tree / "bin" / "tool").write_bytes(random.Random(9).randbytes(2 * MIB + 1))
    (tree / "bin" / "tool").chmod(0o755)
    client, local = tmp_path / "client", tmp_path / "local"
    nars = [nar_of(source) for source in sources]
    expected = [expected_path(s.name, nar) for s, nar in zip(sources, nars, strict=True)]

    printed = cafs("import", *map(str, sources), *remote(daemon.url), home=client).stdout
    assert printed.splitlines() == [p.absolute for p in expected]
    assert cafs("import", *map(str, sources), home=local).stdout == printed

    for path, nar in zip(expected, nars, strict=True):
        dumped = run("nar", "dump", path.absolute, *remote(daemon.url), home=client)
        assert dumped.returncode == 0, dumped.stderr
        assert dumped.stdout == nar
        text = cafs("path-info", path.basename, *remote(daemon.url), home=client).stdout
        info = NarInfo.parse(text)
        assert info.store_path == path
        assert info.nar_hash == NixHash.of("sha256", nar)
        assert info.nar_size == len(nar)
        assert info.ca == CAHash("nar", NixHash.of("sha256", nar))
        assert info.references == []
    # The same tree, dumped from the embedded store, is the same NAR.
    assert run("nar", "dump", expected[0].absolute, home=local).stdout == nars[0]
    assert (
        cafs("path-info", expected[0].absolute, home=local).stdout
        == cafs("path-info", expected[0].absolute, *remote(daemon.url), home=client).stdout
    )

    wrong = StorePath(expected[0].digest, "wrongname").absolute
    result = cafs("path-info", wrong, *remote(daemon.url), home=client, check=False)
    assert_one_line_error(result, f"{wrong} is not in the store", NOT_FOUND)
    assert not client.exists()


def test_nar_import_through_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    tree = tmp_path / "src" / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data").write_bytes(random.Random(11).randbytes(MIB + 7))
    (tree / "tool").write_bytes(b"\x7fELF")
    (tree / "tool").chmod(0o755)
    (tree / "to-sub").symlink_to("sub")
    tree_nar = nar_of(tree)
    nar_file = tmp_path / "tree.nar"
    nar_file.write_bytes(tree_nar)
    file_nar = nar_string(b"nix-archive-1") + tokens(
        b"(", b"type", b"regular", b"contents", b"piped file", b")"
    )
    client = tmp_path / "client"

    out = cafs("nar", "import", str(nar_file), *remote(daemon.url), home=client).stdout
    assert out == expected_path("tree", tree_nar).absolute + "\n"
    piped = run(
        "nar", "import", "--name", "piped", "-", *remote(daemon.url), home=client, data=file_nar
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode() == expected_path("piped", file_nar).absolute + "\n"

    for name, nar in (("tree", tree_nar), ("piped", file_nar)):
        dumped = run(
            "nar", "dump", expected_path(name, nar).absolute, *remote(daemon.url), home=client
        )
        assert dumped.stdout == nar, dumped.stderr
    # The PathInfo was recorded by the daemon, with the NAR's size.
    info = NarInfo.parse(
        cafs(
            "path-info", expected_path("tree", tree_nar).absolute, *remote(daemon.url), home=client
        ).stdout
    )
    assert info.nar_size == len(tree_nar)
    assert not client.exists()


def test_copy_through_the_daemon(
    daemon: Daemon,
    tmp_path: Path,
    nix_added: list[tuple[Path, StorePath, bytes]],  # noqa: F811 - the imported fixture
) -> None:
    (tree, tree_path, tree_nar), (_, single_path, single_nar) = nix_added
    assert tree_path == expected_path(tree.name, tree_nar)
    closure = write_json(
        tmp_path / "closure.json",
        {
            "closure": [
                closure_entry(single_path.absolute, single_nar),
                closure_entry(tree_path.absolute, tree_nar, references=[single_path.absolute]),
            ]
        },
    )
    client = tmp_path / "client"
    copied = cafs("copy", str(closure), *remote(daemon.url), home=client).stdout.split()
    assert sorted(copied) == sorted([single_path.absolute, tree_path.absolute])
    # The daemon has them now: a second copy (its URLs from the environment) copies nothing.
    env = {
        "BLOB_SERVICE_ADDR": daemon.url,
        "DIRECTORY_SERVICE_ADDR": daemon.url,
        "PATH_INFO_SERVICE_ADDR": daemon.url,
        "NIX_ATTRS_JSON_FILE": str(closure),
    }
    assert cafs("copy", home=client, **env).stdout == ""
    dumped = run("nar", "dump", tree_path.absolute, *remote(daemon.url), home=client)
    assert dumped.stdout == tree_nar, dumped.stderr
    info = NarInfo.parse(cafs("path-info", tree_path.absolute, home=client, **env).stdout)
    assert info.references == [single_path]
    assert info.nar_hash == NixHash.of("sha256", tree_nar)
    assert not client.exists()


# -- unreachable daemons ------------------------------------------------------------------


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on (just freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_wait_connect_fails_fast_when_nobody_listens(tmp_path: Path) -> None:
    stale = Path(socket_path(tmp_path))
    with socket.socket(socket.AF_UNIX) as orphan:
        orphan.bind(str(stale))  # a socket file, but nobody accepts on it
    absent = stale.with_name("absent.sock")
    stale_url = f"grpc+unix://{stale}?wait-connect=1"
    absent_url = f"grpc+unix://{absent}?wait-connect=1"
    tcp_url = f"grpc+http://127.0.0.1:{closed_port()}?wait-connect=1"
    digest = "b3:" + "A" * 43 + "="
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    home = tmp_path / "home"
    commands = [
        (stale_url, ["castore", "ls", digest]),
        (absent_url, ["castore", "cat", digest]),
        (tcp_url, ["castore", "ingest", str(tmp_path / "mnt")]),
        (stale_url, ["path-info", "/nix/store/" + "0" * 32 + "-x"]),
        (tcp_url, ["import", str(tmp_path / "mnt")]),
        (stale_url, ["mount", str(mnt)]),
    ]
    for url, command in commands:
        flags = castore_remote(url) if command[0] == "castore" else remote(url)
        started = time.monotonic()
        result = cafs(*command, *flags, home=home, check=False)
        assert time.monotonic() - started < FAST, command
        assert_one_line_error(result, f"cannot connect to {url}\n", UNREACHABLE)
    assert not home.exists()
    assert not os.path.ismount(mnt)


# -- the daemon as a program --------------------------------------------------------------


def test_default_listen_address_is_127_0_0_1_port_8000(tmp_path: Path) -> None:
    text = " ".join(cafs("daemon", "--help", home=tmp_path).stdout.split())
    assert "-l, --listen-address ADDR" in text
    assert "[default: 127.0.0.1:8000]" in text


def test_bad_listen_addresses_are_one_line_errors(daemon: Daemon, tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_bytes(b"")
    live = daemon.url.removeprefix("grpc+unix://")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [
            ("nohost", "invalid listen address 'nohost': expected host:port or a socket path"),
            ("host:99999", "invalid listen address 'host:99999': expected host:port"),
            ("127.0.0.1:", "invalid listen address '127.0.0.1:'"),
            (f"127.0.0.1:{port}", f"cannot listen on 127.0.0.1:{port}: Address already in use\n"),
            (
                str(tmp_path / "no-dir" / "d.sock"),
                f"cannot listen on {tmp_path / 'no-dir' / 'd.sock'}: No such file or directory\n",
            ),
            (str(regular), f"cannot listen on {regular}: it exists and is not a socket\n"),
            (live, f"cannot listen on {live}: another server is listening there\n"),
        ]
        for address, message in cases:
            result = cafs(
                "daemon",
                "--listen-address",
                address,
                *remote("memory://"),
                home=tmp_path / "h",
                check=False,
            )
            assert_one_line_error(result, message)
    assert not (tmp_path / "h").exists()
    # The daemon whose socket was asked for is untouched.
    assert cafs(
        "path-info",
        "/nix/store/" + "0" * 32 + "-x",
        *remote(daemon.url),
        home=tmp_path,
        check=False,
    ).stderr.endswith("is not in the store\n")


def spawn_with_env_address(home: Path, listen: str) -> Daemon:
    """A daemon told where to listen by LISTEN_ADDRESS, not by the flag."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / "daemon.log"
    args = [*CAFS, "daemon", *remote("memory://")]
    with open(log, "wb") as err:
        process = subprocess.Popen(
            args, env=store_env(home, LISTEN_ADDRESS=listen), stdout=subprocess.DEVNULL, stderr=err
        )
    daemon = Daemon("", process, log, args, home)
    deadline = time.monotonic() + 30
    while not (found := READY.search(daemon.log_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            raise AssertionError(f"the daemon did not start: {daemon.log_text()}")
        time.sleep(0.02)
    daemon.url = found.group(1)
    return daemon


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_daemon_and_remove_its_socket(tmp_path: Path, signum: int) -> None:
    listen = socket_path(tmp_path)
    if signum == signal.SIGTERM:
        daemon = spawn_daemon(tmp_path / "home", listen, *remote("memory://"))
    else:
        daemon = spawn_with_env_address(tmp_path / "home", listen)
    try:
        assert daemon.url == f"grpc+unix://{listen}"
        assert Path(listen).is_socket()
        daemon.process.send_signal(signum)
        assert daemon.process.wait(timeout=30) == 0, daemon.log_text()
    finally:
        daemon.kill()
    assert not os.path.lexists(listen)
    log = daemon.log_text()
    assert "shutting down" in log and "Traceback" not in log


class PausingRelay:
    """A unix socket relay to ``target`` that stops passing the server's bytes to the
    client once ``pause_after`` of them went through, until ``resume()``."""

    def __init__(self, listen: str, target: str, pause_after: int) -> None:
        self.target = target
        self.pause_after = pause_after
        self.passed = 0
        self.paused = threading.Event()
        self._resume = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(listen)
        self._server.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            self._sockets += [client, upstream]
            for args in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if from_server:
                    self.passed += len(data)
                    if self.passed >= self.pause_after and not self.paused.is_set():
                        self.paused.set()
                        self._resume.wait(60)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def resume(self) -> None:
        self._resume.set()

    def close(self) -> None:
        self.resume()
        for sock in [self._server, *self._sockets]:
            sock.close()


def test_sigterm_lets_a_cat_in_flight_finish(tmp_path: Path) -> None:
    """The blob is held whole (memory://), so the cat is one Read call, paused in flight
    by a relay. (From a chunking backend each chunk is a call of its own, and calls
    that have not started when SIGTERM arrives are refused.)"""
    data = random.Random(13).randbytes(32 * MIB)
    source = tmp_path / "blob"
    source.write_bytes(data)
    listen = socket_path(tmp_path)
    relay_path = str(Path(listen).with_name("relay.sock"))
    daemon = spawn_daemon(tmp_path / "home", listen, *remote("memory://"))
    relay = PausingRelay(relay_path, listen, pause_after=4 * MIB)
    cat: subprocess.Popen[bytes] | None = None
    try:
        line = cafs(
            "castore", "ingest", str(source), *castore_remote(daemon.url), home=tmp_path
        ).stdout
        digest = line.split()[2]
        cat = subprocess.Popen(
            [*CAFS, "castore", "cat", digest, *castore_remote(f"grpc+unix://{relay_path}")],
            env=store_env(tmp_path / "client"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert relay.paused.wait(30), "the Read call did not start"
        daemon.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "shutting down" not in daemon.log_text():
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.02)
        time.sleep(0.5)
        assert daemon.process.poll() is None, "the daemon did not wait for the call"
        relay.resume()
        out, err = cat.communicate(timeout=60)
        assert cat.returncode == 0, err
        assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
        assert daemon.process.wait(timeout=30) == 0
        assert not os.path.lexists(listen)
    finally:
        relay.close()
        if cat is not None and cat.poll() is None:
            cat.kill()
            cat.wait()
        daemon.kill()


def test_daemon_log_names_the_url_it_listens_on(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "home", "127.0.0.1:0", *remote("memory://")) as d:
        assert re.fullmatch(r"grpc\+http://127\.0\.0\.1:[1-9][0-9]*", d.url)
        source = tmp_path / "hello"
        source.write_bytes(b"Hello World!")
        printed = cafs("import", str(source), *remote(d.url + "?wait-connect=1"), home=tmp_path)
        path = printed.stdout.strip()
        dumped = run("nar", "dump", path, *remote(d.url), home=tmp_path)
        assert dumped.stdout == nar_of(source)

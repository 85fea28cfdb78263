"""What every command shares: running async bodies, errors, service and mount flags."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from cafs import tracing
from cafs.castore.services import CastoreServices
from cafs.config import store_home
from cafs.errors import (
    CafsError,
    IntegrityError,
    InvalidAddressError,
    RemoteError,
    StorageError,
    ValidationError,
)
from cafs.fs.root_nodes import RootNodes
from cafs.fuse import DEFAULT_THREADS
from cafs.urls import parse_size

if TYPE_CHECKING:
    from cafs.fs.filesystem import Filesystem

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger("cafs")


class CommandError(CafsError):
    """A user mistake the CLI reports in one line."""


class NotFoundError(CommandError):
    """What the command was asked for is not in the store."""


class ExitCode(IntEnum):
    """The exit status of each kind of failure, so scripts can tell them apart."""

    OK = 0
    ERROR = 1
    """Any other failure (a mount point, a socket, a file that cannot be imported)."""
    USAGE = 2
    """Unknown flags or missing arguments (click's own)."""
    NOT_FOUND = 3
    INVALID = 4
    """Input that breaks a rule: a malformed NAR, digest, store path or narinfo, a bad URL."""
    CORRUPT = 5
    """Stored or received data that does not match its digest or hash."""
    UNREACHABLE = 6
    """A remote service that cannot be reached or does not answer within its deadline."""
    STORAGE = 7
    """A backend failed otherwise (disk, database, a remote service's error)."""
    INTERRUPTED = 130


def exit_code(exc: CafsError) -> ExitCode:
    if isinstance(exc, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(exc, ValidationError | InvalidAddressError):
        return ExitCode.INVALID
    if isinstance(exc, IntegrityError):
        return ExitCode.CORRUPT
    if isinstance(exc, RemoteError):
        if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return ExitCode.UNREACHABLE
        if exc.code == "DATA_LOSS":
            return ExitCode.CORRUPT
        return ExitCode.STORAGE
    if isinstance(exc, StorageError):
        return ExitCode.STORAGE
    return ExitCode.ERROR


def command_name(context: click.Context) -> str:
    """``cafs castore ingest``, however the program was started (``python -m cafs.cli``…)."""
    root = context.find_root().info_name or ""
    return "cafs " + context.command_path.removeprefix(root).strip()


def run_async(func: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Run an async command; cafs errors become one line on stderr and their exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with tracing.span(command_name(click.get_current_context())):
                return asyncio.run(func(*args, **kwargs))
        except CafsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exit_code(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)

    return wrapper


def castore_service_options(func: Callable[P, T]) -> Callable[P, T]:
    """The service URL flags (also read from the environment), as in tvix."""
    func = click.option(
        "--directory-service-addr",
        envvar="DIRECTORY_SERVICE_ADDR",
        metavar="URL",
        help="Directory service URL [default: the embedded store].",
    )(func)
    func = click.option(
        "--blob-service-addr",
        envvar="BLOB_SERVICE_ADDR",
        metavar="URL",
        help="Blob service URL [default: the embedded store].",
    )(func)
    return func


S = TypeVar("S", bound=CastoreServices)


async def using(services: S, body: Callable[[S], Awaitable[T]]) -> T:
    """Connect ``services``, run ``body`` on them, and close them however it ends."""
    try:
        await services.connect()
        return await body(services)
    finally:
        await services.close()


async def with_services(
    blob_addr: str | None,
    directory_addr: str | None,
    body: Callable[[CastoreServices], Awaitable[T]],
) -> T:
    return await using(CastoreServices.from_addrs(blob_addr, directory_addr), body)


DEFAULT_PLAIN_CACHE_SIZE = "4GiB"


def _size(ctx: click.Context, param: click.Parameter, value: str | int) -> int:
    """A byte count such as 4GiB or 500M; 0 is allowed (off)."""
    size = value if isinstance(value, int) else parse_size(value)
    if size is None:
        raise click.BadParameter(f"{value!r} is not a size such as 4GiB, 500M or 0")
    return size


def plain_cache_option(func: Callable[P, T]) -> Callable[P, T]:
    """``--plain-cache-size``: how much the plain copies of large blobs may take."""
    return click.option(
        "--plain-cache-size",
        envvar="CAFS_PLAIN_CACHE_SIZE",
        metavar="SIZE",
        callback=_size,
        default=DEFAULT_PLAIN_CACHE_SIZE,
        show_default=True,
        help="Keep large blobs that were read as verified plain files under "
        "$CAFS_HOME/plain, up to this size (least recently used out), and read them "
        "from there (as root, a mount lets the kernel read them itself). 0: off.",
    )(func)


async def use_plain_files(
    services: CastoreServices, size: int, *, fill: bool = True, finish: bool = False
) -> None:
    """Read ``services``' large blobs from their plain copies where there are some."""
    if size <= 0:
        return
    from cafs.castore.blobs.plain import PlainFileBlobService, PlainFiles

    plain = PlainFiles(store_home() / "plain", size)
    try:
        await plain.load()
    except OSError as exc:
        log.warning("plain files in %s are off: %s", plain.root, exc)
        return
    services.blobs = PlainFileBlobService(services.blobs, plain, fill=fill, finish=finish)


def filesystem_options(
    list_root_default: bool, *, allow_other: bool = True
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """The flags every command serving a filesystem takes (tvix-store's names and environment).

    ``allow_other`` is for kernel mounts only: a VM's filesystem has no other users.
    """

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        func = plain_cache_option(func)
        func = click.option(
            "--threads",
            envvar="THREADS",
            type=click.IntRange(min=1),
            default=DEFAULT_THREADS,
            show_default=True,
            help="FUSE requests served at once.",
        )(func)
        if allow_other:
            func = click.option(
                "--takeover",
                is_flag=True,
                help="Take over the live mount at MOUNTPOINT kept in --handover-dir, "
                "from a running or crashed cafs, instead of mounting anew.",
            )(func)
            func = click.option(
                "--handover-dir",
                envvar="CAFS_HANDOVER_DIR",
                metavar="DIR",
                type=click.Path(file_okay=False, resolve_path=True, path_type=str),
                help="Keep here what a successor needs to take the mount over without "
                "unmounting (an upgrade, a restart after a crash).",
            )(func)
            func = click.option(
                "--allow-other",
                envvar="ALLOW_OTHER",
                is_flag=True,
                help="Let other users use the mount (needs user_allow_other in /etc/fuse.conf).",
            )(func)
        func = click.option(
            "--metrics-listen-address",
            envvar="METRICS_LISTEN_ADDRESS",
            metavar="HOST:PORT",
            help="Serve Prometheus metrics (FUSE requests, latency, errors) at /metrics there.",
        )(func)
        func = click.option(
            "--show-xattr/--no-show-xattr",
            default=True,
            show_default=True,
            help="Expose blob and directory digests as extended attributes.",
        )(func)
        func = click.option(
            "-l",
            "--list-root/--no-list-root",
            default=list_root_default,
            show_default=True,
            help="Allow listing the root.",
        )(func)
        return func

    return decorate


@dataclass(frozen=True)
class MountFlags:
    """What the flags of ``filesystem_options`` ask for."""

    list_root: bool
    show_xattr: bool
    allow_other: bool
    threads: int
    metrics_listen_address: str | None = None
    handover_dir: str | None = None
    takeover: bool = False
    plain_cache_size: int = 0

    @classmethod
    def for_virtiofs(
        cls,
        list_root: bool,
        show_xattr: bool,
        threads: int,
        metrics_listen_address: str | None,
        plain_cache_size: int,
    ) -> MountFlags:
        """The flags of a virtiofs daemon: a VM's filesystem, no other users, no handover."""
        return cls(
            list_root,
            show_xattr,
            False,
            threads,
            metrics_listen_address,
            plain_cache_size=plain_cache_size,
        )


def metrics_observer(flags: MountFlags) -> Callable[[int, float, int], None] | None:
    """Start the metrics endpoint ``flags`` ask for; the observer that feeds it (or None)."""
    if flags.metrics_listen_address is None:
        return None
    from cafs.metrics import observe_fuse, serve_metrics

    url = serve_metrics(flags.metrics_listen_address)
    log.info("metrics at %s", url)
    return observe_fuse


def new_filesystem(services: CastoreServices, roots: RootNodes, flags: MountFlags) -> Filesystem:
    """The filesystem model ``flags`` ask for, over ``services``."""
    from cafs.fs.filesystem import Filesystem

    return Filesystem(
        services.blobs,
        services.directories,
        roots,
        list_root=flags.list_root,
        show_xattr=flags.show_xattr,
    )


async def serve_mount(
    services: CastoreServices, roots: RootNodes, mountpoint: str, flags: MountFlags, what: str
) -> None:
    """Serve ``roots`` over ``services`` at ``mountpoint`` until stopped or unmounted."""
    # Imported here: only mounts need the protocol.
    from cafs.fuse.devfuse import serve
    from cafs.fuse.mount import MountOptions

    handover_dir = None
    if flags.handover_dir is not None:
        handover_dir = Path(flags.handover_dir)
        await asyncio.to_thread(handover_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
    elif flags.takeover:
        raise click.UsageError("--takeover needs --handover-dir, where the live mount is kept")
    await use_plain_files(services, flags.plain_cache_size)
    fs = new_filesystem(services, roots, flags)
    options = MountOptions(allow_other=flags.allow_other, threads=flags.threads)
    await serve(
        fs,
        mountpoint,
        options,
        on_ready=lambda: log.info("serving %s at %s", what, mountpoint),
        observer=metrics_observer(flags),
        handover_dir=handover_dir,
        takeover=flags.takeover,
    )


async def serve_virtiofs(
    services: CastoreServices, roots: RootNodes, socket_path: str, flags: MountFlags, what: str
) -> None:
    """Serve ``roots`` over ``services`` to the VM that connects at ``socket_path``."""
    # Imported here: only virtiofs needs the protocol and vhost-user.
    from cafs.fuse.server import Session
    from cafs.virtio.daemon import serve

    observer = metrics_observer(flags)
    await use_plain_files(services, flags.plain_cache_size)
    await serve(
        lambda: Session(new_filesystem(services, roots, flags), observer=observer),
        socket_path,
        max_in_flight=flags.threads,
        on_ready=lambda: log.info("serving %s over virtiofs at %s", what, socket_path),
    )

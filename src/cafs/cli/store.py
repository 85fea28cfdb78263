"""The Nix layer's commands: import, copy, nar dump/import, path-info, mount."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import click

from cafs.cli.common import (
    CommandError,
    MountFlags,
    NotFoundError,
    P,
    T,
    castore_service_options,
    filesystem_options,
    log,
    plain_cache_option,
    run_async,
    serve_mount,
    serve_virtiofs,
    use_plain_files,
    using,
)
from cafs.store.nar.render import FileRange, render_nar_pieces
from cafs.store.pathinfo import PathInfo
from cafs.store.root_nodes import PathInfoRootNodes
from cafs.store.services import StoreServices
from cafs.store.storepath import StorePath


def store_service_options(func: Callable[P, T]) -> Callable[P, T]:
    """The castore flags plus the PathInfo service's."""
    func = click.option(
        "--path-info-service-addr",
        envvar="PATH_INFO_SERVICE_ADDR",
        metavar="URL",
        help="PathInfo service URL [default: the embedded store].",
    )(func)
    return castore_service_options(func)


async def with_store_services(
    blob_addr: str | None,
    directory_addr: str | None,
    path_info_addr: str | None,
    body: Callable[[StoreServices], Awaitable[T]],
) -> T:
    return await using(StoreServices.from_addrs(blob_addr, directory_addr, path_info_addr), body)


def parse_store_path(text: str) -> StorePath:
    """A store path given on the command line (a StorePathError is invalid input, exit 4)."""
    return StorePath.parse(text)


async def required_path_info(services: StoreServices, path: StorePath) -> PathInfo:
    """The PathInfo of exactly ``path``, digest and name, or a one-line error."""
    info = await services.path_infos.get_path(path)
    if info is None:
        raise NotFoundError(f"{path.absolute} is not in the store")
    return info


# Bytes handed to the writing thread at once: one thread hop per few MiB, not per chunk.
WRITE_BATCH = 4 * 1024 * 1024


async def write_stream(pieces: AsyncIterator[bytes | FileRange]) -> None:
    """Copy ``pieces`` to stdout on a worker thread, producing the next batch meanwhile.

    A FileRange is copied by the kernel (``sendfile``), after what came before it.
    """
    out = sys.stdout.buffer
    writing: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    size = 0
    async for piece in pieces:
        if isinstance(piece, FileRange):
            if writing is not None:
                await writing
                writing = None
            await asyncio.to_thread(_write_range, out, batch, piece)
            batch, size = [], 0
            continue
        batch.append(piece)
        size += len(piece)
        if size >= WRITE_BATCH:
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(out.writelines, batch))
            batch, size = [], 0
    if writing is not None:
        await writing
    await asyncio.to_thread(out.writelines, batch)
    await asyncio.to_thread(out.flush)


def _write_range(out: BinaryIO, before: list[bytes], piece: FileRange) -> None:
    out.writelines(before)
    out.flush()
    with piece.open() as source:
        copy_range(source.fileno(), out.fileno(), piece.offset, piece.length)


def copy_range(source: int, target: int, offset: int, length: int) -> None:
    """``length`` bytes of ``source`` from ``offset`` to ``target``, by the kernel where it can."""
    end = offset + length
    while offset < end:
        try:
            sent = os.sendfile(target, source, offset, min(end - offset, 1 << 30))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS) or offset != end - length:
                raise
            break  # sendfile cannot write there: copy through memory
        if sent == 0:
            raise OSError(errno.EIO, "a plain copy is shorter than its blob")
        offset += sent
    while offset < end:
        data = os.pread(source, min(end - offset, 1 << 20), offset)
        if not data:
            raise OSError(errno.EIO, "a plain copy is shorter than its blob")
        view = memoryview(data)
        while view:
            view = view[os.write(target, view) :]
        offset += len(data)


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@store_service_options
@run_async
async def import_command(
    paths: tuple[str, ...],
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Add trees, files or symlinks as store paths, as `nix-store --add` does; print each."""
    # Imported here: only the commands that import need the ingest path.
    from cafs.progress import ingest_progress
    from cafs.store.importer import import_path

    async def body(services: StoreServices) -> None:
        for path in paths:
            with ingest_progress(path) as progress:
                info = await import_path(path, services, progress)
            click.echo(info.store_path.absolute)

    await with_store_services(
        blob_service_addr, directory_service_addr, path_info_service_addr, body
    )


@click.command("copy")
@click.argument("nix_attrs_json_file", envvar="NIX_ATTRS_JSON_FILE", type=click.Path(path_type=str))
@store_service_options
@run_async
async def copy_command(
    nix_attrs_json_file: str,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Copy the closure listed by exportReferencesGraph from /nix/store; print each copied path."""
    from cafs.progress import count_progress
    from cafs.store.copy import copy_closure, read_closure

    entries = read_closure(nix_attrs_json_file)

    async def body(services: StoreServices) -> None:
        total: list[int] = []
        with count_progress("copying", len(entries), "paths") as bar:

            def started(n: int) -> None:
                total.append(n)
                bar.advance(len(entries) - n)

            def done(path: StorePath) -> None:
                click.echo(path.absolute)
                bar.advance()

            result = await copy_closure(entries, services, started, done)
        log.info("copied %d paths, %d already present", len(result.copied), len(result.present))

    await with_store_services(
        blob_service_addr, directory_service_addr, path_info_service_addr, body
    )


@click.group("nar")
def nar_group() -> None:
    """NAR archives: render a store path as one, or add one as a store path."""


@nar_group.command("dump")
@click.argument("store_path")
@click.option(
    "--fill-plain-cache",
    is_flag=True,
    help="Also keep the path's large files as plain copies (see --plain-cache-size), "
    "so later reads and dumps take them from there.",
)
@plain_cache_option
@store_service_options
@run_async
async def nar_dump(
    store_path: str,
    fill_plain_cache: bool,
    plain_cache_size: int,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Write the NAR of STORE_PATH to standard output, as `nix-store --dump` does."""
    wanted = parse_store_path(store_path)

    async def body(services: StoreServices) -> None:
        info = await required_path_info(services, wanted)
        await use_plain_files(
            services, plain_cache_size, fill=fill_plain_cache, finish=fill_plain_cache
        )
        pieces = render_nar_pieces(
            info.node, services.blobs, services.directories, file_ranges=True
        )
        await write_stream(pieces)

    await with_store_services(
        blob_service_addr, directory_service_addr, path_info_service_addr, body
    )


@nar_group.command("import")
@click.argument("nar_file", type=click.Path(path_type=str, allow_dash=True))
@click.option("--name", help="Store path name [default: the file name without .nar].")
@store_service_options
@run_async
async def nar_import(
    nar_file: str,
    name: str | None,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Add the tree of a NAR file (- for standard input) as a store path; print it."""
    from cafs.store.importer import import_nar
    from cafs.store.nar.ingest import file_source

    if name is None:
        if nar_file == "-":
            raise click.UsageError("--name is needed when the NAR comes from standard input")
        name = Path(nar_file).name.removesuffix(".nar")

    async def body(services: StoreServices) -> None:
        stream: BinaryIO
        if nar_file == "-":
            info = await import_nar(name, file_source(sys.stdin.buffer), services)
        else:
            try:
                stream = await asyncio.to_thread(open, nar_file, "rb")
            except OSError as exc:
                raise CommandError(f"cannot open {nar_file}: {exc.strerror}") from exc
            try:
                info = await import_nar(name, file_source(stream), services)
            finally:
                stream.close()
        click.echo(info.store_path.absolute)

    await with_store_services(
        blob_service_addr, directory_service_addr, path_info_service_addr, body
    )


@click.command("path-info")
@click.argument("store_path")
@store_service_options
@run_async
async def path_info_command(
    store_path: str,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Print the narinfo of STORE_PATH."""
    wanted = parse_store_path(store_path)

    async def body(services: StoreServices) -> None:
        info = await required_path_info(services, wanted)
        click.echo(info.to_narinfo().render(), nl=False)

    await with_store_services(
        blob_service_addr, directory_service_addr, path_info_service_addr, body
    )


@click.command("mount")
@click.argument("mountpoint", type=click.Path(path_type=str))
@filesystem_options(list_root_default=False)
@store_service_options
@run_async
async def mount_command(
    mountpoint: str,
    list_root: bool,
    show_xattr: bool,
    metrics_listen_address: str | None,
    allow_other: bool,
    handover_dir: str | None,
    takeover: bool,
    threads: int,
    plain_cache_size: int,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Mount the store read-only at MOUNTPOINT: one entry per store path basename."""

    async def body(services: StoreServices) -> None:
        flags = MountFlags(
            list_root,
            show_xattr,
            allow_other,
            threads,
            metrics_listen_address,
            handover_dir,
            takeover,
            plain_cache_size,
        )
        await serve_mount(
            services, PathInfoRootNodes(services.path_infos), mountpoint, flags, "the store"
        )

    await with_store_services(
        blob_service_addr, directory_service_addr, path_info_service_addr, body
    )


@click.command("virtiofs")
@click.argument("socket_path", metavar="SOCKET", type=click.Path(path_type=str))
@filesystem_options(list_root_default=False, allow_other=False)
@store_service_options
@run_async
async def virtiofs_command(
    socket_path: str,
    list_root: bool,
    show_xattr: bool,
    metrics_listen_address: str | None,
    threads: int,
    plain_cache_size: int,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Serve the store to a VM over vhost-user-fs at SOCKET, until the VM goes away."""

    async def body(services: StoreServices) -> None:
        flags = MountFlags.for_virtiofs(
            list_root, show_xattr, threads, metrics_listen_address, plain_cache_size
        )
        await serve_virtiofs(
            services, PathInfoRootNodes(services.path_infos), socket_path, flags, "the store"
        )

    await with_store_services(
        blob_service_addr, directory_service_addr, path_info_service_addr, body
    )


@click.command("nar-bridge")
@click.option(
    "-l",
    "--listen-address",
    envvar="LISTEN_ADDRESS",
    default="127.0.0.1:9000",  # cafs.http.nar_bridge.DEFAULT_LISTEN_ADDRESS, without aiohttp
    show_default=True,
    metavar="ADDR",
    help="host:port to listen on, or a unix socket path starting with / or .",
)
@click.option(
    "--priority",
    envvar="PRIORITY",
    type=click.IntRange(min=0),
    default=39,
    show_default=True,
    help="Priority announced in nix-cache-info (lower is preferred by Nix).",
)
@click.option(
    "--signing-key-file",
    envvar="SIGNING_KEY_FILE",
    type=click.Path(dir_okay=False, path_type=str),
    help="Sign every narinfo with this Nix secret key file (name:base64).",
)
@click.option(
    "--allow-put",
    is_flag=True,
    help="Accept uploads (nix copy --to http://...); off, the cache is read-only.",
)
@click.option(
    "--compression",
    type=click.Choice(["none", "zstd"]),
    default="none",
    show_default=True,
    help="How NARs are sent (zstd costs CPU here and saves bytes on slow links).",
)
@plain_cache_option
@store_service_options
@run_async
async def nar_bridge_command(
    listen_address: str,
    priority: int,
    signing_key_file: str | None,
    allow_put: bool,
    compression: str,
    plain_cache_size: int,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
    path_info_service_addr: str | None,
) -> None:
    """Serve the store as a Nix binary cache over HTTP, NARs rendered on the fly."""
    # Imported here: aiohttp costs start-up time only this command needs.
    from cafs.http.nar_bridge import BridgeOptions
    from cafs.http.server import serve_bridge
    from cafs.sockets import parse_listen_address
    from cafs.store.signatures import load_signing_key

    address = parse_listen_address(listen_address)
    try:
        key = load_signing_key(signing_key_file) if signing_key_file else None
    except OSError as exc:
        raise CommandError(f"cannot read the signing key: {exc}") from None
    options = BridgeOptions(priority, key, allow_put, compression)

    async def body(services: StoreServices) -> None:
        await use_plain_files(services, plain_cache_size)
        await serve_bridge(services, address, options)

    await with_store_services(
        blob_service_addr, directory_service_addr, path_info_service_addr, body
    )


STORE_COMMANDS = [
    import_command,
    copy_command,
    nar_group,
    path_info_command,
    mount_command,
    virtiofs_command,
    nar_bridge_command,
]

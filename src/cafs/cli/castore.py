"""``cafs castore …``: blobs and directories, below the Nix layer."""

from __future__ import annotations

import os
import sys

import click

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, Node
from cafs.castore.services import CastoreServices
from cafs.cli.common import (
    MountFlags,
    NotFoundError,
    castore_service_options,
    filesystem_options,
    run_async,
    serve_mount,
    serve_virtiofs,
    with_services,
)
from cafs.errors import CafsError
from cafs.fs.root_nodes import DirectoryRootNodes


@click.group()
def castore() -> None:
    """Content-addressed store: blobs and directories."""


def describe_node(node: Node) -> str:
    if isinstance(node, DirectoryNode):
        return f"directory {node.digest} size {node.size}"
    if isinstance(node, FileNode):
        exe = " executable" if node.executable else ""
        return f"file {node.digest} size {node.size}{exe}"
    return f"symlink -> {os.fsdecode(node.target)}"


@castore.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@castore_service_options
@run_async
async def castore_ingest(
    paths: tuple[str, ...], blob_service_addr: str | None, directory_service_addr: str | None
) -> None:
    """Import files, symlinks or directory trees; print each root node."""
    # Imported here: the other commands start faster without the ingest path.
    from cafs.castore.ingest import ingest_path
    from cafs.progress import ingest_progress

    async def body(services: CastoreServices) -> None:
        for path in paths:
            with ingest_progress(path) as progress:
                node = await ingest_path(path, services.blobs, services.directories, progress)
            click.echo(f"{path}: {describe_node(node)}")

    await with_services(blob_service_addr, directory_service_addr, body)


@castore.command("cat")
@click.argument("digest")
@castore_service_options
@run_async
async def castore_cat(
    digest: str, blob_service_addr: str | None, directory_service_addr: str | None
) -> None:
    """Write a blob to standard output."""
    wanted = Digest.parse(digest)

    async def body(services: CastoreServices) -> None:
        reader = await services.blobs.open_read(wanted)
        if reader is None:
            raise NotFoundError(f"blob {wanted} not found")
        out = sys.stdout.buffer
        async with reader:
            while block := await reader.read(1 << 20):
                out.write(block)
        out.flush()

    await with_services(blob_service_addr, directory_service_addr, body)


async def required_directory(services: CastoreServices, digest: Digest) -> Directory:
    directory = await services.directories.get(digest)
    if directory is None:
        raise NotFoundError(f"directory {digest} not found")
    return directory


def listing_line(path: str, node: Node) -> str:
    if isinstance(node, DirectoryNode):
        return f"directory   {node.digest} {node.size:>12}  {path}/"
    if isinstance(node, FileNode):
        kind = "executable" if node.executable else "file"
        return f"{kind:<11} {node.digest} {node.size:>12}  {path}"
    return f"{'symlink':<11} {'-':<47} {'-':>12}  {path} -> {os.fsdecode(node.target)}"


@castore.command("ls")
@click.argument("digest")
@click.option("-r", "--recursive", is_flag=True, help="List subdirectories too.")
@castore_service_options
@run_async
async def castore_ls(
    digest: str,
    recursive: bool,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
) -> None:
    """List a directory: kind, digest, size and name of each entry."""
    wanted = Digest.parse(digest)

    async def body(services: CastoreServices) -> None:
        root = await required_directory(services, wanted)

        async def show(directory: Directory, prefix: str) -> None:
            for name, node in directory:
                path = prefix + os.fsdecode(name)
                click.echo(listing_line(path, node))
                if recursive and isinstance(node, DirectoryNode):
                    child = await services.directories.get(node.digest)
                    if child is None:
                        raise NotFoundError(f"directory {node.digest} ({path}) not found")
                    await show(child, path + "/")

        await show(root, "")

    await with_services(blob_service_addr, directory_service_addr, body)


@castore.command("mount")
@click.argument("digest")
@click.argument("mountpoint", type=click.Path(path_type=str))
@filesystem_options(list_root_default=True)
@castore_service_options
@run_async
async def castore_mount(
    digest: str,
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
) -> None:
    """Mount the directory DIGEST read-only at MOUNTPOINT, until SIGINT/SIGTERM or unmount."""
    wanted = Digest.parse(digest)

    async def body(services: CastoreServices) -> None:
        root = await required_directory(services, wanted)
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
            services, DirectoryRootNodes(root), mountpoint, flags, f"directory {wanted}"
        )

    await with_services(blob_service_addr, directory_service_addr, body)


@castore.command("virtiofs")
@click.argument("digest")
@click.argument("socket_path", metavar="SOCKET", type=click.Path(path_type=str))
@filesystem_options(list_root_default=True, allow_other=False)
@castore_service_options
@run_async
async def castore_virtiofs(
    digest: str,
    socket_path: str,
    list_root: bool,
    show_xattr: bool,
    metrics_listen_address: str | None,
    threads: int,
    plain_cache_size: int,
    blob_service_addr: str | None,
    directory_service_addr: str | None,
) -> None:
    """Serve the directory DIGEST to a VM over vhost-user-fs at SOCKET, until it goes away."""
    wanted = Digest.parse(digest)

    async def body(services: CastoreServices) -> None:
        root = await required_directory(services, wanted)
        flags = MountFlags.for_virtiofs(
            list_root, show_xattr, threads, metrics_listen_address, plain_cache_size
        )
        await serve_virtiofs(
            services, DirectoryRootNodes(root), socket_path, flags, f"directory {wanted}"
        )

    await with_services(blob_service_addr, directory_service_addr, body)


def parse_digest(text: str) -> Digest:
    """A digest on the command line: ``b3:<base64>`` or 64 hex digits."""
    try:
        return Digest.parse(text)
    except CafsError:
        pass
    try:
        return Digest(bytes.fromhex(text))
    except (ValueError, CafsError):
        raise click.BadParameter(f"{text!r} is not a digest (b3:… or 64 hex digits)") from None


@castore.command("pin")
@click.argument("digest")
@castore_service_options
@run_async
async def castore_pin(
    digest: str, blob_service_addr: str | None, directory_service_addr: str | None
) -> None:
    """Keep a castore root (a directory's closure, or a blob) through cafs gc."""
    wanted = parse_digest(digest)

    async def body(services: CastoreServices) -> None:
        if await services.directories.get(wanted) is None and not await services.blobs.has(wanted):
            raise NotFoundError(f"{wanted} is neither a directory nor a blob in the store")
        await services.directories.pin(wanted)

    await with_services(blob_service_addr, directory_service_addr, body)


@castore.command("unpin")
@click.argument("digest")
@castore_service_options
@run_async
async def castore_unpin(
    digest: str, blob_service_addr: str | None, directory_service_addr: str | None
) -> None:
    """Let cafs gc free a root pinned before (unless something else reaches it)."""
    wanted = parse_digest(digest)

    async def body(services: CastoreServices) -> None:
        if not await services.directories.unpin(wanted):
            raise NotFoundError(f"{wanted} is not pinned")

    await with_services(blob_service_addr, directory_service_addr, body)


@castore.command("pins")
@castore_service_options
@run_async
async def castore_pins(blob_service_addr: str | None, directory_service_addr: str | None) -> None:
    """List the pinned roots."""

    async def body(services: CastoreServices) -> None:
        for digest in await services.directories.pins():
            click.echo(str(digest))

    await with_services(blob_service_addr, directory_service_addr, body)

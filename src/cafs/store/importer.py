"""Adding paths to the store the way ``nix-store --add`` does, from a tree or a NAR.

Either way the result is a content-addressed store path: its digest follows
from the NAR hash of the contents and the name (``source`` type, no
references), so cafs and Nix print the same path for the same tree. The
PathInfo is stored last: a failure on the way leaves no path behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from cafs.castore.ingest import IngestProgress, ingest_path
from cafs.castore.nodes import Node
from cafs.errors import StorePathError
from cafs.store.hashes import CAHash, NixHash
from cafs.store.nar.ingest import ByteSource, IngestedNar, ingest_nar
from cafs.store.nar.render import calculate_nar
from cafs.store.pathinfo import PathInfo
from cafs.store.services import StoreServices
from cafs.store.storepath import ca_store_path, name_problem


def checked_name(name: str, source: str) -> str:
    """``name`` if it can name a store path, else a clear error about ``source``."""
    problem = name_problem(name)
    if problem is not None:
        raise StorePathError(f"{source}: {name!r} cannot name a store path: {problem}")
    return name


def content_addressed_info(name: str, node: Node, nar_size: int, nar_sha256: bytes) -> PathInfo:
    """The PathInfo of contents added by hash, with no references."""
    ca = CAHash("nar", NixHash("sha256", nar_sha256))
    return PathInfo(
        store_path=ca_store_path(name, ca),
        node=node,
        references=(),
        nar_size=nar_size,
        nar_sha256=nar_sha256,
        ca=ca,
    )


async def nar_of(node: Node, services: StoreServices) -> tuple[int, bytes]:
    """The NAR size and SHA-256 of ``node``: computed by the PathInfoService if it
    can (a daemon renders where the blobs are), else rendered here."""
    remote = await services.path_infos.calculate_nar(node)
    if remote is not None:
        return remote
    return await calculate_nar(node, services.blobs, services.directories)


async def ingest_with_nar(
    path: str | os.PathLike[str],
    services: StoreServices,
    progress: IngestProgress | None = None,
) -> IngestedNar:
    """Ingest ``path`` and compute its NAR's size and SHA-256 from what was stored.

    The NAR is rendered from the store, not the disk, so the hash vouches for
    the stored tree.
    """
    node = await ingest_path(path, services.blobs, services.directories, progress)
    nar_size, nar_sha256 = await nar_of(node, services)
    return IngestedNar(node, nar_size, nar_sha256)


async def import_path(
    path: str | os.PathLike[str],
    services: StoreServices,
    progress: IngestProgress | None = None,
) -> PathInfo:
    """Ingest ``path`` (a tree, file or symlink) and store it as a store path named after it."""
    name = checked_name(Path(path).name, os.fspath(path))
    result = await ingest_with_nar(path, services, progress)
    return await services.path_infos.put(
        content_addressed_info(name, result.node, result.nar_size, result.nar_sha256)
    )


async def import_nar(name: str, source: ByteSource, services: StoreServices) -> PathInfo:
    """Ingest one NAR and store it as a content-addressed path called ``name``."""
    checked_name(name, "NAR")
    result = await ingest_nar(source, services.blobs, services.directories)
    return await services.path_infos.put(
        content_addressed_info(name, result.node, result.nar_size, result.nar_sha256)
    )

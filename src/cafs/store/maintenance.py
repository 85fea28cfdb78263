"""Garbage collection and verification of a whole store.

``collect_garbage`` marks from every PathInfo and every pin, then sweeps the
blobs, chunks and directories nothing reaches, keeping whatever was written
within the grace period so that imports running alongside lose nothing.
``verify_store`` re-hashes every object, checks that each PathInfo's content
is all there (and, asked to, that its NAR hashes as the PathInfo says), and
with ``repair`` removes corrupt objects from near caches so that they are
fetched again.

Both work on the backends that keep their own objects: for a ``cache://``
service, gc works on the far side (the store of record, whose near caches
are bounded by size instead) and verify on both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cafs.castore.directories.base import DirectoryService
from cafs.castore.maintenance import (
    Cutoff,
    Found,
    Live,
    Maintained,
    Problem,
    Progress,
    maintained,
    mark,
    pinned_roots,
)
from cafs.castore.near_far import NearFar
from cafs.castore.nodes import DirectoryNode, FileNode, Node
from cafs.errors import CafsError
from cafs.store.nar.render import calculate_nar
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService
from cafs.store.services import StoreServices


def store_of_record(service: object) -> object:
    """The far end of a chain of caches: where objects really live."""
    while isinstance(service, NearFar):
        service = service.far
    return service


@dataclass
class GcResult:
    roots: int
    live: Live
    freed: list[Found]

    @property
    def freed_bytes(self) -> int:
        return sum(found.size for found in self.freed)


async def collect_garbage(
    services: StoreServices, grace: float, dry_run: bool, say: Callable[[str], None]
) -> GcResult:
    """Sweep what no PathInfo and no pin reaches and is older than ``grace`` seconds."""
    directories_service = store_of_record(services.directories)
    blobs = maintained(store_of_record(services.blobs), "blob service")
    directories = maintained(directories_service, "directory service")
    path_infos = store_of_record(services.path_infos)
    assert isinstance(path_infos, PathInfoService)
    assert isinstance(directories_service, DirectoryService)
    # The cutoff is taken first: whatever is written from now on is young.
    cutoff = Cutoff.grace(grace)
    roots: list[Node] = [info.node async for info in path_infos.list()]
    roots += await pinned_roots(directories_service)
    say(f"marking from {len(roots)} roots")
    live = Live()
    await mark(roots, directories_service, live)
    say(f"live: {len(live.directories)} directories, {len(live.blobs)} blobs")
    # Directories before blobs: what refers goes before what is referred to.
    freed = await directories.collect(live, cutoff, dry_run)
    freed += await blobs.collect(live, cutoff, dry_run)
    return GcResult(len(roots), live, freed)


@dataclass
class VerifyResult:
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: int = 0
    skipped: list[str] = field(default_factory=list)


def _sides(service: object) -> list[tuple[object, bool]]:
    """Each backend of a service with whether it is a near cache (repairable)."""
    sides: list[tuple[object, bool]] = []
    while isinstance(service, NearFar):
        sides.append((service.near, True))
        service = service.far
    sides.append((service, False))
    return sides


async def verify_store(
    services: StoreServices,
    nar: bool,
    repair: bool,
    report: Callable[[Problem], None],
    progress: Progress,
) -> VerifyResult:
    result = VerifyResult()

    def found(problem: Problem) -> None:
        result.problems.append(problem)
        report(problem)

    for what, service in (
        ("blob service", services.blobs),
        ("directory service", services.directories),
    ):
        for backend, near in _sides(service):
            if not isinstance(backend, Maintained):
                result.skipped.append(f"{what} {type(backend).__name__}")
                continue
            before = len(result.problems)
            result.checked += await backend.verify(found, progress)
            mine = result.problems[before:]
            if repair and near and mine:
                result.repaired += await backend.remove(mine)
    for backend, near in _sides(services.path_infos):
        verify_each = getattr(backend, "verify_each", None)
        if verify_each is None:
            result.skipped.append(f"path info service {type(backend).__name__}")
            continue
        before = len(result.problems)
        async for info in verify_each(found):
            result.checked += 1
            problem = await _check_content(services, info, nar)
            if problem is not None:
                found(problem)
        mine = result.problems[before:]
        if repair and near and mine:
            result.repaired += await backend.remove(mine)  # type: ignore[attr-defined]
    return result


async def _check_content(services: StoreServices, info: PathInfo, nar: bool) -> Problem | None:
    """Is everything the PathInfo names there (and does its NAR hash as it says)?"""
    path = info.store_path.absolute
    try:
        missing = await _missing_content(services, info.node)
        if missing is not None:
            return Problem("path info", path, f"names missing content: {missing}")
        if nar:
            size, sha256 = await calculate_nar(info.node, services.blobs, services.directories)
            if size != info.nar_size:
                return Problem("path info", path, f"NAR is {size} bytes, not {info.nar_size}")
            if sha256 != info.nar_sha256:
                return Problem("path info", path, "NAR hash differs from the one recorded")
    except CafsError as exc:
        return Problem("path info", path, f"content cannot be read: {exc}")
    return None


async def _missing_content(services: StoreServices, node: Node) -> str | None:
    blobs: list[FileNode] = []
    if isinstance(node, FileNode):
        blobs.append(node)
    elif isinstance(node, DirectoryNode):
        seen = False
        async for directory in services.directories.get_recursive(node.digest):
            seen = True
            blobs.extend(child for _, child in directory if isinstance(child, FileNode))
        if not seen:
            return f"directory {node.digest}"
    for blob in blobs:
        if not await services.blobs.has(blob.digest):
            return f"blob {blob.digest}"
    return None

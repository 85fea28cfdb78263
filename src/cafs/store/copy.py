"""Copying a closure from the local Nix store, as listed by ``exportReferencesGraph``.

A derivation with ``__structuredAttrs`` and ``exportReferencesGraph.closure``
gets a JSON file listing every path of the closure with its NAR hash, size
and references. Each path not yet in the store is ingested from
``/nix/store``, its NAR hash recomputed and compared with the listed one (a
path that changed on disk is refused, not recorded under a false hash), and
its PathInfo stored with the listed references, deriver and signatures.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cafs.errors import CafsError, IntegrityError, ValidationError
from cafs.store.hashes import CAHash, NixHash
from cafs.store.importer import ingest_with_nar
from cafs.store.pathinfo import PathInfo
from cafs.store.services import StoreServices
from cafs.store.signatures import Signature
from cafs.store.storepath import StorePath

# Paths ingested at once; each ingest is itself parallel inside.
PATHS_IN_FLIGHT = 4


class ClosureFileError(ValidationError):
    """A closure JSON file that cannot be read as an exportReferencesGraph listing."""


@dataclass(frozen=True, slots=True)
class ClosureEntry:
    """One path of the closure, with what Nix recorded about it."""

    path: StorePath
    nar_hash: NixHash
    nar_size: int
    references: tuple[StorePath, ...]
    deriver: StorePath | None
    signatures: tuple[Signature, ...]
    ca: CAHash | None


def _entry(raw: Any, index: int) -> ClosureEntry:
    where = f"closure entry {index}"
    if not isinstance(raw, dict):
        raise ClosureFileError(f"{where} is not an object")
    try:
        path = StorePath.from_absolute(raw["path"])
        where = f"closure entry {path.absolute}"
        nar_hash = NixHash.parse(raw["narHash"])
        nar_size = raw["narSize"]
        references = tuple(StorePath.from_absolute(r) for r in raw.get("references", []))
        deriver = StorePath.from_absolute(raw["deriver"]) if raw.get("deriver") else None
        signatures = tuple(Signature.parse(s) for s in raw.get("signatures", []))
        ca = CAHash.parse(raw["ca"]) if raw.get("ca") else None
    except KeyError as exc:
        raise ClosureFileError(f"{where}: field {exc.args[0]!r} is missing") from exc
    except (TypeError, AttributeError) as exc:
        raise ClosureFileError(f"{where}: a field has the wrong type") from exc
    except ValidationError as exc:
        raise ClosureFileError(f"{where}: {exc}") from exc
    if nar_hash.algo != "sha256":
        raise ClosureFileError(f"{where}: narHash must be sha256, got {nar_hash.algo}")
    if not isinstance(nar_size, int) or isinstance(nar_size, bool) or nar_size < 0:
        raise ClosureFileError(f"{where}: narSize must be a non-negative integer")
    return ClosureEntry(path, nar_hash, nar_size, references, deriver, signatures, ca)


def read_closure(file: str | Path) -> list[ClosureEntry]:
    """The entries of the ``closure`` key of an exportReferencesGraph JSON file."""
    try:
        document = json.loads(Path(file).read_bytes())
    except OSError as exc:
        raise ClosureFileError(f"cannot read {file}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClosureFileError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("closure"), list):
        raise ClosureFileError(f"{file} has no 'closure' list")
    return [_entry(raw, i) for i, raw in enumerate(document["closure"])]


async def copy_entry(entry: ClosureEntry, services: StoreServices) -> PathInfo:
    """Ingest one path from the local Nix store and record it, after checking its NAR hash."""
    stored = await ingest_with_nar(entry.path.absolute, services)
    if (stored.nar_size, stored.nar_sha256) != (entry.nar_size, entry.nar_hash.digest):
        found = NixHash("sha256", stored.nar_sha256)
        raise IntegrityError(
            f"{entry.path.absolute} on disk does not match the closure file: NAR "
            f"{found} ({stored.nar_size} bytes), expected {entry.nar_hash} "
            f"({entry.nar_size} bytes)"
        )
    return await services.path_infos.put(
        PathInfo(
            store_path=entry.path,
            node=stored.node,
            references=entry.references,
            nar_size=stored.nar_size,
            nar_sha256=stored.nar_sha256,
            signatures=entry.signatures,
            deriver=entry.deriver,
            ca=entry.ca,
        )
    )


@dataclass
class CopyResult:
    copied: list[StorePath]
    present: list[StorePath]


async def copy_closure(
    entries: list[ClosureEntry],
    services: StoreServices,
    started: Callable[[int], None] | None = None,
    done: Callable[[StorePath], None] | None = None,
) -> CopyResult:
    """Copy every entry the store lacks; ``started`` hears how many, ``done`` each one."""
    unique = list({e.path: e for e in entries}.values())
    stored = await asyncio.gather(*(services.path_infos.get_path(e.path) for e in unique))
    missing: list[ClosureEntry] = []
    present: list[StorePath] = []
    for entry, info in zip(unique, stored, strict=True):
        if info is None:
            missing.append(entry)
        else:
            present.append(entry.path)
    if started is not None:
        started(len(missing))
    slots = asyncio.Semaphore(PATHS_IN_FLIGHT)
    copied: list[StorePath] = []

    async def one(entry: ClosureEntry) -> None:
        async with slots:
            try:
                await copy_entry(entry, services)
            except OSError as exc:
                raise CafsError(f"cannot copy {entry.path.absolute}: {exc.strerror}") from exc
        copied.append(entry.path)
        if done is not None:
            done(entry.path)

    try:
        async with asyncio.TaskGroup() as group:
            for entry in missing:
                group.create_task(one(entry))
    except BaseExceptionGroup as errors:
        first = errors.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return CopyResult(copied, present)

"""``objectstore+…``: directories in object storage, readable by tvix and by a lazy mount.

Two kinds of object, both keyed by a directory's digest:

- ``dirs/b3/<first 2 bytes, hex>/<digest hex>``: tvix's layout. One object per
  closure put at once, under its root: a zstd stream of frames, each a
  big-endian ``u32`` length and a canonical Directory, root first. tvix can
  only fetch a directory that was the root of such a put.
- ``directories/b3/<first 2 bytes, hex>/<digest hex>``: one Directory,
  canonical encoding, uncompressed. A mount fetches the one directory it
  needs, whatever closure it came in. tvix ignores these objects.

Every frame and object is checked against its digest, and a closure against
its root, before anything is handed out.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from urllib.parse import SplitResult

import blake3
import zstandard

from cafs import counters
from cafs.castore.closure import RootToLeavesValidator
from cafs.castore.digest import Digest
from cafs.castore.directories.base import (
    DirectoryPutter,
    DirectoryService,
    ValidatingPutter,
    checked_directory,
)
from cafs.castore.directory import Directory
from cafs.castore.maintenance import Cutoff, Found, Live, Problem, Progress, Report, digest_of_key
from cafs.castore.objectstore import ObjectInfo, ObjectStorage, Staged, object_storage_from_url
from cafs.errors import CafsError, ClosureError, IntegrityError

# tvix's frame limit (its comment calls it 1 MiB; the constant is 1,000 MiB).
MAX_FRAME = 1024 * 1024 * 1000
# A closure object expands to at most this much (decompression bombs).
MAX_CLOSURE_BYTES = 4 << 30
ZSTD_LEVEL = 3


PINS = "pins/b3/"


def pin_key(digest: bytes) -> str:
    return f"{PINS}{digest.hex()}"


def _is_dead(info: ObjectInfo, live: set[Digest], cutoff: Cutoff) -> bool:
    digest = digest_of_key(info.key)
    return digest is not None and digest not in live and info.modified <= cutoff.at


def closure_key(digest: bytes) -> str:
    h = digest.hex()
    return f"dirs/b3/{h[:4]}/{h}"


def directory_key(digest: bytes) -> str:
    h = digest.hex()
    return f"directories/b3/{h[:4]}/{h}"


def encode_closure(root_first: list[Directory]) -> bytes:
    """tvix's closure object: zstd of length-prefixed canonical Directories, root first."""
    frames = bytearray()
    for directory in root_first:
        data = directory.canonical_bytes()
        frames += struct.pack(">I", len(data))
        frames += data
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(bytes(frames))


def decode_closure(root: Digest, raw: bytes) -> Iterator[Directory]:
    """The Directories of a closure object, each checked against the root's closure."""
    key = closure_key(root)
    data = _decompress_frames(key, raw)
    validator = RootToLeavesValidator(root)
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise IntegrityError(f"directory closure {key} ends inside a frame header")
        (length,) = struct.unpack_from(">I", view, offset)
        offset += 4
        if length > MAX_FRAME or offset + length > len(view):
            raise IntegrityError(f"directory closure {key} ends inside a frame")
        frame = bytes(view[offset : offset + length])
        offset += length
        digest = Digest(blake3.blake3(frame).digest())
        if not validator.digest_allowed(digest):
            raise IntegrityError(f"directory closure {key} holds unexpected directory {digest}")
        try:
            directory = Directory.from_bytes(frame)
            validator.add(directory)
        except (CafsError, ClosureError) as exc:
            raise IntegrityError(f"directory closure {key} is corrupt: {exc}") from exc
        yield directory
    missing = validator.missing()
    if missing:
        raise IntegrityError(
            f"directory closure {key} lacks {len(missing)} directories, e.g. {min(missing)}"
        )


def _decompress_frames(key: str, raw: bytes) -> bytes:
    """Every zstd frame of ``raw``, each complete: a cut-off object is an error."""
    out = bytearray()
    rest = raw
    try:
        while rest:
            frame = zstandard.ZstdDecompressor().decompressobj()
            out += frame.decompress(rest)
            if not frame.eof:
                raise IntegrityError(f"directory closure {key} is cut off inside a zstd frame")
            if len(out) > MAX_CLOSURE_BYTES:
                raise IntegrityError(
                    f"directory closure {key} expands to more than {MAX_CLOSURE_BYTES} bytes"
                )
            rest = frame.unused_data
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"directory closure {key} is not valid zstd data: {exc}") from exc
    return bytes(out)


class ObjectStoreDirectoryService(DirectoryService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> ObjectStoreDirectoryService:
        """``objectstore+file:///dir``, ``objectstore+memory:///``, ``objectstore+s3://…``."""
        return cls(object_storage_from_url(url, parts))

    def __init__(self, storage: ObjectStorage) -> None:
        self.storage = storage

    async def get(self, digest: Digest) -> Directory | None:
        return await asyncio.to_thread(self._get_sync, digest)

    def _get_sync(self, digest: Digest) -> Directory | None:
        key = directory_key(digest)
        data = self.storage.get_sync(key)
        if data is not None:
            counters.fetched(self.storage.kind, len(data))
            return checked_directory(digest, key, data)
        # Written by tvix: only the root of a closure object can be found.
        raw = self.storage.get_sync(closure_key(digest))
        if raw is None:
            return None
        return next(decode_closure(digest, raw))

    async def get_recursive(self, root: Digest) -> AsyncIterator[Directory]:
        raw = await self.storage.get(closure_key(root))
        if raw is None:
            async for directory in super().get_recursive(root):
                yield directory
            return
        for directory in await asyncio.to_thread(lambda: list(decode_closure(root, raw))):
            yield directory

    async def put(self, directory: Directory) -> Digest:
        # A directory without subdirectories is a closure of its own, readable by tvix.
        await self._store([directory], whole_closure=not any(directory.directories()))
        return directory.digest

    async def put_many(self, directories: list[Directory]) -> None:
        await self._store(directories, whole_closure=False)

    def put_multiple_start(self) -> DirectoryPutter:
        return _ClosurePutter(self)

    async def _store(self, leaves_first: list[Directory], whole_closure: bool) -> None:
        def stage() -> list[Staged]:
            staged: list[Staged] = []
            try:
                for directory in leaves_first:
                    key = directory_key(directory.digest)
                    if not self.storage.refresh_sync(key):
                        staged.append(self.storage.stage(key, directory.canonical_bytes()))
                if whole_closure:
                    root = leaves_first[-1]
                    key = closure_key(root.digest)
                    if not self.storage.refresh_sync(key):
                        data = encode_closure(list(reversed(leaves_first)))
                        staged.append(self.storage.stage(key, data))
            except BaseException:
                self.storage.discard(staged)
                raise
            return staged

        staged = await asyncio.to_thread(stage)
        await self.storage.commit(staged)

    async def pin(self, digest: Digest) -> None:
        staged = await asyncio.to_thread(self.storage.stage, pin_key(digest), b"")
        await self.storage.commit([staged])

    async def unpin(self, digest: Digest) -> bool:
        key = pin_key(digest)
        if not await self.storage.exists(key):
            return False
        await self.storage.delete([key])
        return True

    async def pins(self) -> list[Digest]:
        listed = await asyncio.to_thread(lambda: list(self.storage.list_sync(PINS)))
        return sorted(d for d in (digest_of_key(i.key) for i in listed) if d is not None)

    def _listing(self) -> tuple[list[ObjectInfo], list[ObjectInfo]]:
        """Every single-directory object and every closure object (blocking)."""
        singles = list(self.storage.list_sync("directories/"))
        return singles, list(self.storage.list_sync("dirs/"))

    async def collect(self, live: Live, cutoff: Cutoff, dry_run: bool) -> list[Found]:
        singles, closures = await asyncio.to_thread(self._listing)
        dead_closures = [i for i in closures if _is_dead(i, live.directories, cutoff)]
        dead_singles = [i for i in singles if _is_dead(i, live.directories, cutoff)]
        if not dry_run:
            dead_closures = await self.storage.sweep(dead_closures, cutoff.at)
            dead_singles = await self.storage.sweep(dead_singles, cutoff.at)
        return [Found("closure", i.key, i.size) for i in dead_closures] + [
            Found("directory", i.key, i.size) for i in dead_singles
        ]

    async def verify(self, report: Report, progress: Progress) -> int:
        singles, closures = await asyncio.to_thread(self._listing)
        checked = 0
        for kind, listed, check in (
            ("directory", singles, self._check_single),
            ("closure", closures, self._check_closure),
        ):
            for start in range(0, len(listed), 256):
                batch = listed[start : start + 256]
                problems = await asyncio.to_thread(_each, check, batch)
                for info, problem in zip(batch, problems, strict=True):
                    if problem is not None:
                        report(Problem(kind, info.key, problem))
                checked += len(batch)
                progress(checked)
        return checked

    def _check_single(self, info: ObjectInfo) -> str | None:
        digest = digest_of_key(info.key)
        if digest is None:
            return "not named by a digest"
        data = self.storage.get_sync(info.key)
        if data is None:
            return None
        try:
            directory = checked_directory(digest, info.key, data)
        except CafsError as exc:
            return str(exc)
        for _, child in directory.directories():
            key = directory_key(child.digest)
            if not self.storage.exists_sync(key) and not self.storage.exists_sync(
                closure_key(child.digest)
            ):
                return f"refers to directory {child.digest}, which is missing"
        return None

    def _check_closure(self, info: ObjectInfo) -> str | None:
        digest = digest_of_key(info.key)
        if digest is None:
            return "not named by a digest"
        raw = self.storage.get_sync(info.key)
        if raw is None:
            return None
        try:
            for _ in decode_closure(digest, raw):
                pass
        except CafsError as exc:
            return str(exc)
        return None

    async def remove(self, problems: Sequence[Problem]) -> int:
        keys = [p.key for p in problems if p.kind in ("directory", "closure")]
        await self.storage.delete(keys)
        return len(keys)

    async def connect(self) -> None:
        await self.storage.connect()

    async def close(self) -> None:
        await self.storage.close()


class _ClosurePutter(ValidatingPutter):
    """Validates a closure, then stores each directory and the closure object under its root."""

    def __init__(self, service: ObjectStoreDirectoryService) -> None:
        super().__init__(service)
        self._objects = service

    async def close(self) -> Digest:
        if self._closed:
            raise ValueError("directory putter closed twice")
        self._closed = True
        root, directories = self._validator.finish()
        # finish() returns leaves first with the root last.
        assert directories[-1].digest == root
        await self._objects._store(directories, whole_closure=True)
        return root


def _each(check: Callable[[ObjectInfo], str | None], batch: list[ObjectInfo]) -> list[str | None]:
    return [check(info) for info in batch]

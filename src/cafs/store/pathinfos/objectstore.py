"""``objectstore+…``: one PathInfo object per store path, beside the castore's objects.

``pathinfos/<nixbase32 store path digest>`` holds the canonical
``tvix.store.v1.PathInfo`` encoding, the bytes the other backends keep, so a
whole store (blobs, directories, PathInfos) can live in one bucket. Each
object is validated on read and must describe the path it is filed under.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from urllib.parse import SplitResult

from cafs.castore.maintenance import Problem, Report
from cafs.castore.objectstore import ObjectStorage, object_storage_from_url
from cafs.castore.services import CastoreServices
from cafs.errors import HashFormatError, IntegrityError, ValidationError
from cafs.store import nixbase32
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService, check_store_path_digest, check_stored
from cafs.store.storepath import DIGEST_SIZE

PREFIX = "pathinfos/"


def path_info_key(digest: bytes) -> str:
    return PREFIX + nixbase32.encode(digest)


def decode_path_info(digest: bytes, key: str, data: bytes) -> PathInfo:
    try:
        info = PathInfo.from_bytes(data)
    except ValidationError as exc:
        raise IntegrityError(f"path info {key} is corrupt: {exc}") from exc
    return check_stored(digest, info)


class ObjectStorePathInfoService(PathInfoService):
    @classmethod
    def from_url(
        cls, url: str, parts: SplitResult, castore: CastoreServices | None = None
    ) -> ObjectStorePathInfoService:
        """``objectstore+file:///dir``, ``objectstore+memory:///``, ``objectstore+s3://…``."""
        return cls(object_storage_from_url(url, parts))

    def __init__(self, storage: ObjectStorage) -> None:
        self.storage = storage

    async def get(self, digest: bytes) -> PathInfo | None:
        key = path_info_key(check_store_path_digest(digest))
        data = await self.storage.get(key)
        return None if data is None else decode_path_info(digest, key, data)

    async def put(self, info: PathInfo) -> PathInfo:
        key = path_info_key(info.store_path.digest)
        staged = await asyncio.to_thread(self.storage.stage, key, info.to_bytes())
        await self.storage.commit([staged])
        return info

    async def list(self) -> AsyncIterator[PathInfo]:
        def fail(problem: Problem) -> None:
            raise IntegrityError(f"path info {problem.key}: {problem.reason}")

        async for info in self.verify_each(fail):
            yield info

    async def verify_each(self, report: Report) -> AsyncIterator[PathInfo]:
        """Every PathInfo that decodes and is filed right; each other one is reported."""
        listed = await asyncio.to_thread(lambda: list(self.storage.list_sync(PREFIX)))
        for key in sorted(info.key for info in listed):
            name = key.removeprefix(PREFIX)
            try:
                digest = nixbase32.decode(name)
            except HashFormatError:
                digest = b""
            if len(digest) != DIGEST_SIZE:
                report(Problem("path info", key, "not named by a store path digest"))
                continue
            data = await self.storage.get(key)
            if data is None:  # removed since it was listed
                continue
            try:
                yield decode_path_info(digest, key, data)
            except IntegrityError as exc:
                report(Problem("path info", key, str(exc)))

    async def remove(self, problems: Sequence[Problem]) -> int:
        keys = [p.key for p in problems if p.kind == "path info"]
        await self.storage.delete(keys)
        return len(keys)

    async def connect(self) -> None:
        await self.storage.connect()

    async def close(self) -> None:
        await self.storage.close()

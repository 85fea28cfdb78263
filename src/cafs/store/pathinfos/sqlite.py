"""``sqlite:///path``: PathInfos in a SQLite table (the embedded default).

Rows hold the canonical ``tvix.store.v1.PathInfo`` encoding, the same bytes
tvix's redb backend keeps, and are re-validated on every read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import SplitResult

from cafs.castore.maintenance import Problem, Report
from cafs.castore.services import CastoreServices
from cafs.errors import IntegrityError, ValidationError
from cafs.sqlite import SqliteDatabase, transaction
from cafs.store import nixbase32
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService, check_store_path_digest, check_stored
from cafs.urls import sqlite_database_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS pathinfos (
    digest BLOB PRIMARY KEY,   -- the 20-byte store path digest
    data   BLOB NOT NULL       -- canonical tvix.store.v1.PathInfo encoding
) WITHOUT ROWID;
"""

# Rows fetched per trip to the database thread while listing.
LIST_BATCH = 256


def _decode(digest: bytes, data: bytes) -> PathInfo:
    try:
        info = PathInfo.from_bytes(data)
    except ValidationError as exc:
        raise IntegrityError(
            f"path info stored under {nixbase32.encode(digest)} is corrupt: {exc}"
        ) from exc
    return check_stored(digest, info)


class SqlitePathInfoService(PathInfoService):
    @classmethod
    def from_url(
        cls, url: str, parts: SplitResult, castore: CastoreServices | None = None
    ) -> SqlitePathInfoService:
        """``sqlite:///path``, or ``sqlite://`` for a throwaway database in memory."""
        return cls(sqlite_database_path(url, parts))

    def __init__(self, path: Path | None) -> None:
        self._db = SqliteDatabase(path, SCHEMA, "pathinfo")

    async def get(self, digest: bytes) -> PathInfo | None:
        key = check_store_path_digest(digest)

        def select(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM pathinfos WHERE digest = ?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        data = await self._db.run(select)
        if data is None:
            return None
        return _decode(key, data)

    async def put(self, info: PathInfo) -> PathInfo:
        row = (info.store_path.digest, info.to_bytes())

        def upsert(conn: sqlite3.Connection) -> None:
            def statements(c: sqlite3.Connection) -> None:
                c.execute("INSERT OR REPLACE INTO pathinfos (digest, data) VALUES (?, ?)", row)

            transaction(conn, statements)

        await self._db.run(upsert)
        return info

    async def list(self) -> AsyncIterator[PathInfo]:
        def fail(problem: Problem) -> None:
            raise IntegrityError(problem.reason)

        async for info in self.verify_each(fail):
            yield info

    async def verify_each(self, report: Report) -> AsyncIterator[PathInfo]:
        """Every PathInfo that decodes and is filed right; each other one is reported.

        Keyset pagination: no cursor stays open across awaits, and each batch
        is one short read on the database thread.
        """
        after = b""
        while True:

            def page(conn: sqlite3.Connection, after: bytes = after) -> list[tuple[bytes, bytes]]:
                rows = conn.execute(
                    "SELECT digest, data FROM pathinfos WHERE digest > ? ORDER BY digest LIMIT ?",
                    (after, LIST_BATCH),
                ).fetchall()
                return [(bytes(digest), bytes(data)) for digest, data in rows]

            rows = await self._db.run(page)
            for digest, data in rows:
                try:
                    info = _decode(digest, data)
                except IntegrityError as exc:
                    report(Problem("path info", nixbase32.encode(digest), str(exc)))
                    continue
                yield info
            if len(rows) < LIST_BATCH:
                return
            after = rows[-1][0]

    async def remove(self, problems: Sequence[Problem]) -> int:
        digests = [nixbase32.decode(p.key) for p in problems if p.kind == "path info"]

        def delete(conn: sqlite3.Connection) -> None:
            def statements(c: sqlite3.Connection) -> None:
                c.executemany("DELETE FROM pathinfos WHERE digest = ?", [(d,) for d in digests])

            transaction(conn, statements)

        await self._db.run(delete)
        return len(digests)

    async def connect(self) -> None:
        await self._db.connect()

    async def close(self) -> None:
        await self._db.close()

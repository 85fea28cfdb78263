"""``sqlite:///path``: directories in a SQLite table (the embedded default).

A closure from a putter is written in one transaction: readers see all of it
or none of it. Rows are re-validated and re-hashed on every read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import SplitResult

from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService, check_digest
from cafs.castore.directory import Directory
from cafs.sqlite import SqliteDatabase, transaction
from cafs.urls import sqlite_database_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS directories (
    digest BLOB PRIMARY KEY,   -- BLAKE3 of data
    data   BLOB NOT NULL       -- canonical tvix.castore.v1.Directory encoding
) WITHOUT ROWID;
"""


class SqliteDirectoryService(DirectoryService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> SqliteDirectoryService:
        """``sqlite:///path``, or ``sqlite://`` for a throwaway database in memory."""
        return cls(sqlite_database_path(url, parts))

    def __init__(self, path: Path | None) -> None:
        self._db = SqliteDatabase(path, SCHEMA, "directory")

    async def get(self, digest: Digest) -> Directory | None:
        def select(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT data FROM directories WHERE digest = ?", (bytes(digest),)
            ).fetchone()
            return None if row is None else bytes(row[0])

        data = await self._db.run(select)
        if data is None:
            return None
        return check_digest(digest, Directory.from_bytes(data))

    async def put(self, directory: Directory) -> Digest:
        await self.put_many([directory])
        return directory.digest

    async def put_many(self, directories: list[Directory]) -> None:
        rows = [(bytes(d.digest), d.canonical_bytes()) for d in directories]

        def insert(conn: sqlite3.Connection) -> None:
            def statements(c: sqlite3.Connection) -> None:
                c.executemany(
                    "INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)", rows
                )

            transaction(conn, statements)

        await self._db.run(insert)

    async def close(self) -> None:
        await self._db.close()

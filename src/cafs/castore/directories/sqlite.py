"""``sqlite:///path``: directories in a SQLite table (the embedded default).

A closure from a putter is written in one transaction: readers see all of it
or none of it. Rows are re-validated and re-hashed on every read.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

from cafs.castore.digest import Digest
from cafs.castore.directories.base import DirectoryService, check_digest, checked_directory
from cafs.castore.directory import Directory
from cafs.castore.maintenance import Cutoff, Found, Live, Problem, Progress, Report
from cafs.errors import CafsError
from cafs.sqlite import SqliteDatabase, transaction
from cafs.urls import sqlite_database_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS directories (
    digest  BLOB PRIMARY KEY,   -- BLAKE3 of data
    data    BLOB NOT NULL,      -- canonical tvix.castore.v1.Directory encoding
    written REAL NOT NULL DEFAULT 0  -- Unix time of the last put (gc's grace period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (
    digest BLOB PRIMARY KEY     -- a castore root kept through gc
) WITHOUT ROWID;
"""
UPGRADES = ("ALTER TABLE directories ADD COLUMN written REAL NOT NULL DEFAULT 0",)
Row = tuple[bytes, Any, Any]
# Rows per trip to the database thread while listing.
PAGE = 1024


class SqliteDirectoryService(DirectoryService):
    @classmethod
    def from_url(cls, url: str, parts: SplitResult) -> SqliteDirectoryService:
        """``sqlite:///path``, or ``sqlite://`` for a throwaway database in memory."""
        return cls(sqlite_database_path(url, parts))

    def __init__(self, path: Path | None) -> None:
        self._db = SqliteDatabase(path, SCHEMA, "directory", UPGRADES)

    async def get(self, digest: Digest) -> Directory | None:
        def select(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT CAST(data AS BLOB) FROM directories WHERE digest = ?", (bytes(digest),)
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
        now = time.time()
        rows = [(bytes(d.digest), d.canonical_bytes(), now) for d in directories]

        def insert(conn: sqlite3.Connection) -> None:
            # A directory stored again is dated anew, so a gc running alongside keeps it.
            def statements(c: sqlite3.Connection) -> None:
                c.executemany(
                    "INSERT INTO directories (digest, data, written) VALUES (?, ?, ?) "
                    "ON CONFLICT (digest) DO UPDATE SET written = excluded.written",
                    rows,
                )

            transaction(conn, statements)

        await self._db.run(insert)

    async def pin(self, digest: Digest) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO pins (digest) VALUES (?)", (bytes(digest),))

        await self._db.run(insert)

    async def unpin(self, digest: Digest) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM pins WHERE digest = ?", (bytes(digest),)).rowcount > 0

        return await self._db.run(delete)

    async def pins(self) -> list[Digest]:
        def select(conn: sqlite3.Connection) -> list[Digest]:
            rows = conn.execute("SELECT digest FROM pins ORDER BY digest").fetchall()
            return [Digest(bytes(row[0])) for row in rows]

        return await self._db.run(select)

    async def _pages(self, columns: str) -> AsyncIterator[list[Row]]:
        """Every row's digest and ``columns``, a page per trip to the database thread."""
        after = b""
        while True:

            def page(
                conn: sqlite3.Connection, after: bytes = after
            ) -> list[tuple[bytes, Any, Any]]:
                query = f"SELECT digest, {columns} FROM directories WHERE digest > ? "
                rows = conn.execute(query + "ORDER BY digest LIMIT ?", (after, PAGE)).fetchall()
                return [(bytes(r[0]), r[1], r[2]) for r in rows]

            rows = await self._db.run(page)
            if rows:
                yield rows
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    async def collect(self, live: Live, cutoff: Cutoff, dry_run: bool) -> list[Found]:
        dead: list[tuple[bytes, int]] = []
        async for rows in self._pages("written, length(data)"):
            for digest, written, size in rows:
                if Digest(digest) not in live.directories and written <= cutoff.at:
                    dead.append((digest, size))
        if dry_run or not dead:
            return [Found("directory", Digest(d).hex(), size) for d, size in dead]

        def delete(conn: sqlite3.Connection) -> list[tuple[bytes, int]]:
            # The age is checked again inside the transaction: a row put since stays.
            def statements(c: sqlite3.Connection) -> list[tuple[bytes, int]]:
                gone = []
                for digest, size in dead:
                    query = "DELETE FROM directories WHERE digest = ? AND written <= ?"
                    if c.execute(query, (digest, cutoff.at)).rowcount:
                        gone.append((digest, size))
                return gone

            return transaction(conn, statements)

        deleted = await self._db.run(delete)
        return [Found("directory", Digest(d).hex(), size) for d, size in deleted]

    async def verify(self, report: Report, progress: Progress) -> int:
        checked = 0
        known: set[Digest] = set()
        children: list[tuple[Digest, Digest]] = []
        async for rows in self._pages("CAST(data AS BLOB), 0"):
            for digest_bytes, data, _ in rows:
                digest = Digest(digest_bytes)
                try:
                    directory = checked_directory(digest, digest.hex(), bytes(data))
                except CafsError as exc:
                    report(Problem("directory", digest.hex(), str(exc)))
                else:
                    known.add(digest)
                    children.extend((digest, c.digest) for _, c in directory.directories())
                checked += 1
            progress(checked)
        for parent, child in children:
            if child not in known:
                reason = f"refers to directory {child}, which is missing or corrupt"
                report(Problem("directory", parent.hex(), reason))
        return checked

    async def remove(self, problems: Sequence[Problem]) -> int:
        digests = [bytes.fromhex(p.key) for p in problems if p.kind == "directory"]

        def delete(conn: sqlite3.Connection) -> None:
            def statements(c: sqlite3.Connection) -> None:
                c.executemany("DELETE FROM directories WHERE digest = ?", [(d,) for d in digests])

            transaction(conn, statements)

        await self._db.run(delete)
        return len(digests)

    async def connect(self) -> None:
        await self._db.connect()

    async def close(self) -> None:
        await self._db.close()

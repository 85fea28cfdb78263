"""A SQLite database driven from asyncio through one dedicated thread.

The connection lives on its own thread, so the event loop never waits on
disk and sqlite3 objects never cross threads. WAL mode lets readers in other
processes see every committed transaction while this one writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from cafs.errors import StorageError

T = TypeVar("T")

# Seconds a statement waits on another process's lock before failing.
BUSY_TIMEOUT = 30.0


class SqliteDatabase:
    def __init__(
        self, path: Path | None, schema: str, name: str, upgrades: tuple[str, ...] = ()
    ) -> None:
        """The database at ``path`` (None: in memory), opened on first use or by ``connect``.

        Opening may wait up to ``BUSY_TIMEOUT`` on another process, so it
        happens on the database thread, never in a constructor on the event loop.
        """
        self.path = path
        self._name = name
        self._schema = schema
        self._upgrades = upgrades
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cafs-{name}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def connect(self) -> None:
        """Open (creating if needed) the database now, so a bad one fails before any work."""
        await self.run(lambda conn: None)

    def _connection(self) -> sqlite3.Connection:
        """The open connection, opening it first if needed (on the database thread)."""
        if self._conn is not None:
            return self._conn
        if self._closed:
            raise StorageError(f"{self._name} database is closed")
        try:
            self._open(self._schema)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self._name} database {self.path}: {exc}") from exc
        except OSError as exc:
            raise StorageError(
                f"cannot open {self._name} database {self.path}: {exc.strerror}"
            ) from exc
        assert self._conn is not None
        return self._conn

    def _open(self, schema: str) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            ":memory:" if self.path is None else str(self.path),
            isolation_level=None,  # explicit BEGIN/COMMIT
            check_same_thread=False,
            timeout=BUSY_TIMEOUT,
        )
        # Two processes creating one store at once: switching to WAL and creating
        # the schema may answer "database is locked" without waiting on the busy
        # handler, so the set-up is retried for as long as the busy timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT
        delay = 0.01
        while True:
            try:
                if self.path is not None:
                    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                    if str(mode).lower() != "wal":
                        conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = FULL")
                conn.executescript(schema)
                for statement in self._upgrades:
                    _upgrade(conn, statement)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        self._conn = conn

    def _call(self, func: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        try:
            return func(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"{self._name} database {self.path}: {exc}") from exc

    async def run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``func(connection)`` on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, func)

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self.run(shut)
            self._conn = None
        self._closed = True
        self._executor.shutdown(wait=False)


def _upgrade(conn: sqlite3.Connection, statement: str) -> None:
    """Bring a database made by an older cafs up to the schema (once: a repeat is a no-op)."""
    try:
        conn.execute(statement)
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise


def transaction(conn: sqlite3.Connection, statements: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``statements`` in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = statements(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result

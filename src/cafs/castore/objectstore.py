"""Object storage under a key namespace, with atomic, durable, batched writes.

Backs the ``objectstore+…`` services. Writing goes in two steps so that many
writers share the cost of durability: ``stage`` writes an object's bytes to a
private temporary file (in a worker thread), ``commit`` makes a list of
staged objects visible. Commits that arrive together are flushed together:
one ``syncfs`` makes every staged file durable, then each is renamed into
place (in the order given), then a second ``syncfs`` makes the renames
durable. A crash or a kill at any point leaves either nothing or complete,
durable objects under their final keys, never a partial one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import os
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from cafs.errors import StorageError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Staged:
    """An object written but not yet visible."""

    key: str
    temp: str | None = None  # file stores
    data: bytes | None = None  # memory stores


class ObjectStorage(ABC):
    """A flat key → bytes store. Keys are ``/``-separated relative paths."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def get_sync(self, key: str) -> bytes | None:
        """As ``get``, for callers already on a worker thread."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    def exists_sync(self, key: str) -> bool: ...

    @abstractmethod
    def stage(self, key: str, data: bytes) -> Staged:
        """Write ``data`` where only ``commit`` can make it visible (blocking)."""

    @abstractmethod
    async def commit(self, staged: list[Staged]) -> None:
        """Make staged objects visible, durably, in list order."""

    @abstractmethod
    def discard(self, staged: list[Staged]) -> None:
        """Drop staged objects that will not be committed (blocking)."""

    async def close(self) -> None:  # noqa: B027 - only some stores hold resources
        pass


class MemoryObjectStorage(ObjectStorage):
    """``objectstore+memory:///``: objects in a dict."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self._objects.get(key)

    def get_sync(self, key: str) -> bytes | None:
        return self._objects.get(key)

    async def exists(self, key: str) -> bool:
        return key in self._objects

    def exists_sync(self, key: str) -> bool:
        return key in self._objects

    def stage(self, key: str, data: bytes) -> Staged:
        return Staged(key, data=bytes(data))

    async def commit(self, staged: list[Staged]) -> None:
        for item in staged:
            assert item.data is not None
            self._objects.setdefault(item.key, item.data)

    def discard(self, staged: list[Staged]) -> None:
        pass


def _load_syncfs() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


_SYNCFS = _load_syncfs()
TEMP_DIR = "tmp"


class FileObjectStorage(ObjectStorage):
    """``objectstore+file:///dir``: one file per object under ``dir``.

    Temporary files live in ``dir/tmp`` named after the writing process, so
    leftovers of a killed process are recognised and removed at the next open.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._temp = root / TEMP_DIR
        try:
            self._temp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create object store at {root}: {exc.strerror}") from exc
        self._sweep_dead_temps()
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._pending: list[tuple[list[Staged], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Temporary names: unique per process by a counter, tied to the pid for the sweep.
        self._prefix = f"{self._temp}/{os.getpid()}-{secrets.token_hex(4)}-"
        self._counter = itertools.count()
        self._root_text = str(root)

    def _path(self, key: str) -> str:
        return f"{self._root_text}/{key}"

    def _sweep_dead_temps(self) -> None:
        for entry in os.scandir(self._temp):
            pid_text = entry.name.split("-", 1)[0]
            if not pid_text.isdigit() or _pid_alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                log.info("removed a temporary file left by process %s: %s", pid_text, entry.path)

    def get_sync(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read object {key}: {exc.strerror}") from exc

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self.get_sync, key)

    def exists_sync(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.exists_sync, key)

    def stage(self, key: str, data: bytes) -> Staged:
        temp = f"{self._prefix}{next(self._counter)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise StorageError(f"cannot write object {key}: {exc.strerror}") from exc
        return Staged(key, temp=temp)

    def discard(self, staged: list[Staged]) -> None:
        for item in staged:
            if item.temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(item.temp)

    async def commit(self, staged: list[Staged]) -> None:
        if not staged:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((staged, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_pending())
        await future

    async def _flush_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            items = [item for staged, _ in batch for item in staged]
            try:
                await asyncio.to_thread(self._publish, items)
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    def _sync(self) -> None:
        if _SYNCFS is not None:
            if _SYNCFS(self._root_fd) != 0:  # type: ignore[operator]
                err = ctypes.get_errno()
                raise StorageError(f"syncfs on {self.root} failed: {os.strerror(err)}")
        else:
            os.sync()

    def _publish(self, items: list[Staged]) -> None:
        self._sync()
        try:
            for item in items:
                assert item.temp is not None
                final = self._path(item.key)
                try:
                    os.rename(item.temp, final)
                except FileNotFoundError:
                    # First object under this shard: make the directory, once.
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                    os.rename(item.temp, final)
        except OSError as exc:
            self.discard(items)
            raise StorageError(f"cannot publish objects under {self.root}: {exc}") from exc
        self._sync()

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        with contextlib.suppress(OSError):
            os.close(self._root_fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

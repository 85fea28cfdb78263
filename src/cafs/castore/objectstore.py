"""Object storage under a key namespace, with atomic, durable, batched writes.

Backs the ``objectstore+…`` services. Writing goes in two steps so that many
writers share the cost of durability: ``stage`` writes an object's bytes to a
private temporary file (in a worker thread), ``commit`` makes a list of
staged objects visible. Commits that arrive together are flushed together:
one ``syncfs`` makes every staged file durable, then each is renamed into
place (in the order given), then a second ``syncfs`` makes the renames
durable. A crash or a kill at any point leaves either nothing or complete,
durable objects under their final keys, never a partial one.

Three kinds: ``objectstore+file:///dir`` (files, above), ``objectstore+memory:///``
and the cloud stores of the ``obstore`` library (``objectstore+s3://``, ``+gs://``,
``+az://``, ``+http(s)://``), where a put is atomic by itself.
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
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult

from cafs.errors import InvalidAddressError, StorageError
from cafs.urls import check_no_query, local_path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, its size and when it was last written (Unix seconds)."""

    key: str
    size: int
    modified: float


@dataclass(slots=True)
class Staged:
    """An object written but not yet visible."""

    key: str
    temp: str | None = None  # file stores
    data: bytes | None = None  # memory stores


class ObjectStorage(ABC):
    """A flat key → bytes store. Keys are ``/``-separated relative paths."""

    kind = "objectstore"
    """What the metrics call this backend: ``file``, ``memory``, ``s3``…"""

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
    def refresh_sync(self, key: str) -> bool:
        """True if the object exists and now counts as just written (blocking).

        A writer that finds an object it would write calls this instead of
        writing it again: the object is then as young as a new one, so a
        garbage collection running alongside keeps it for its grace period.
        False means the writer must write the object.
        """

    @abstractmethod
    def stage(self, key: str, data: bytes) -> Staged:
        """Write ``data`` where only ``commit`` can make it visible (blocking)."""

    @abstractmethod
    async def commit(self, staged: list[Staged]) -> None:
        """Make staged objects visible, durably, in list order."""

    @abstractmethod
    def discard(self, staged: list[Staged]) -> None:
        """Drop staged objects that will not be committed (blocking)."""

    @abstractmethod
    def list_sync(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a ``/``-ended folder), in no order."""

    @abstractmethod
    async def delete(self, keys: Sequence[str]) -> None:
        """Remove objects; a key already gone is not an error."""

    @abstractmethod
    async def touch(self, keys: Sequence[str]) -> None:
        """Mark objects as just used, for least-recently-used eviction (one call for many)."""

    @abstractmethod
    async def sweep(self, candidates: Sequence[ObjectInfo], cutoff: float) -> list[ObjectInfo]:
        """Delete each candidate unless it was written or refreshed after ``cutoff``.

        The age is checked again at the moment of deletion, so an object that
        a writer refreshed after it was listed is kept. Returns what was deleted.
        """

    async def connect(self) -> None:  # noqa: B027 - only some stores prepare anything
        """Prepare the store (create folders, sweep leftovers) off the event loop."""

    async def close(self) -> None:  # noqa: B027 - only some stores hold resources
        pass

    def describe(self) -> str:
        """Where the objects are, for messages."""
        return type(self).__name__


class MemoryObjectStorage(ObjectStorage):
    """``objectstore+memory:///``: objects in a dict."""

    kind = "memory"

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._modified: dict[str, float] = {}

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
            self._objects[item.key] = item.data
            self._modified[item.key] = time.time()

    def discard(self, staged: list[Staged]) -> None:
        pass

    def list_sync(self, prefix: str) -> Iterator[ObjectInfo]:
        for key, data in list(self._objects.items()):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(data), self._modified.get(key, 0.0))

    async def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._objects.pop(key, None)
            self._modified.pop(key, None)

    async def touch(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.refresh_sync(key)

    def refresh_sync(self, key: str) -> bool:
        if key not in self._objects:
            return False
        self._modified[key] = time.time()
        return True

    async def sweep(self, candidates: Sequence[ObjectInfo], cutoff: float) -> list[ObjectInfo]:
        deleted = []
        for info in candidates:
            if info.key in self._objects and self._modified.get(info.key, 0.0) <= cutoff:
                del self._objects[info.key]
                self._modified.pop(info.key, None)
                deleted.append(info)
        return deleted

    def put_raw(self, key: str, data: bytes) -> None:
        """Overwrite an object as it is, for tests that corrupt a store."""
        self._objects[key] = data


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

    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._temp = root / TEMP_DIR
        self._root_fd: int | None = None
        self._prepare_lock = threading.Lock()
        self._pending: list[tuple[list[Staged], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Temporary names: unique per process by a counter, tied to the pid for the sweep.
        self._prefix = f"{self._temp}/{os.getpid()}-{secrets.token_hex(4)}-"
        self._counter = itertools.count()
        self._root_text = str(root)

    def _path(self, key: str) -> str:
        return f"{self._root_text}/{key}"

    def describe(self) -> str:
        return str(self.root)

    async def connect(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> int:
        """Create the store's folders and sweep dead writers' leftovers, once (blocking)."""
        with self._prepare_lock:
            if self._root_fd is None:
                try:
                    self._temp.mkdir(parents=True, exist_ok=True)
                    self._sweep_dead_temps()
                    self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
                except OSError as exc:
                    raise StorageError(
                        f"cannot create object store at {self.root}: {exc.strerror}"
                    ) from exc
            return self._root_fd

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
        self._prepare()
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
        root_fd = self._prepare()
        if _SYNCFS is not None:
            if _SYNCFS(root_fd) != 0:  # type: ignore[operator]
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
        if self._root_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._root_fd)
            self._root_fd = None

    def list_sync(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = self._path(prefix.rstrip("/")) if prefix else self._root_text
        start = len(self._root_text) + 1
        pending = [folder]
        while pending:
            current = pending.pop()
            try:
                entries = list(os.scandir(current))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot list {current}: {exc.strerror}") from exc
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path != str(self._temp):
                        pending.append(entry.path)
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing
                yield ObjectInfo(entry.path[start:], stat.st_size, stat.st_mtime)

    async def delete(self, keys: Sequence[str]) -> None:
        def remove() -> None:
            for key in keys:
                try:
                    os.unlink(self._path(key))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise StorageError(f"cannot delete object {key}: {exc.strerror}") from exc

        await asyncio.to_thread(remove)

    async def touch(self, keys: Sequence[str]) -> None:
        def utime() -> None:
            for key in keys:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(self._path(key))

        await asyncio.to_thread(utime)

    def refresh_sync(self, key: str) -> bool:
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot refresh object {key}: {exc.strerror}") from exc
        return True

    async def sweep(self, candidates: Sequence[ObjectInfo], cutoff: float) -> list[ObjectInfo]:
        return await asyncio.to_thread(self._sweep_sync, candidates, cutoff)

    def _sweep_sync(self, candidates: Sequence[ObjectInfo], cutoff: float) -> list[ObjectInfo]:
        """Move each object aside, check its age there, then delete or restore it.

        A writer refreshing the object after the move finds it gone and
        writes it again; one that refreshed it just before the move made it
        young, and it is put back.
        """
        self._prepare()
        deleted = []
        trash = f"{self._prefix}gc"
        for info in candidates:
            path = self._path(info.key)
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot delete object {info.key}: {exc.strerror}") from exc
            try:
                young = os.stat(trash).st_mtime > cutoff
                if young:
                    os.rename(trash, path)
                else:
                    os.unlink(trash)
                    deleted.append(info)
            except OSError as exc:
                raise StorageError(f"cannot delete object {info.key}: {exc.strerror}") from exc
        if deleted:
            self._sync()
        return deleted

    def put_raw(self, key: str, data: bytes) -> None:
        """Overwrite an object as it is, for tests that corrupt a store (blocking)."""
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CLOUD_SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "http", "https")


def object_storage_from_url(url: str, parts: SplitResult) -> ObjectStorage:
    """The storage an ``objectstore+…`` URL names; the services on it add their own layout."""
    inner = parts.scheme.removeprefix("objectstore+")
    if inner == "file":
        check_no_query(url, parts)
        return FileObjectStorage(local_path(url, parts, "file"))
    if inner == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise InvalidAddressError(url, "objectstore+memory:/// takes no host and no path")
        check_no_query(url, parts)
        return MemoryObjectStorage()
    if inner in CLOUD_SCHEMES:
        from cafs.castore.cloud import CloudObjectStorage

        return CloudObjectStorage(url, parts)
    known = ", ".join(f"objectstore+{s}://" for s in ("file", "memory", *CLOUD_SCHEMES))
    raise InvalidAddressError(url, f"unknown object store scheme {inner!r} (known: {known})")

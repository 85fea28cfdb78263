"""``objectstore+s3://``, ``+gs://``, ``+az://``, ``+http(s)://``: objects in cloud storage.

Built on ``obstore``, the Python bindings of the Rust ``object_store`` crate
that tvix uses, so endpoints, credentials and the standard ``AWS_*`` (and
``GOOGLE_*``, ``AZURE_*``) variables mean what they mean to tvix. As tvix
does, every query pair of the URL is an option of the store (``endpoint``,
``region``, ``access_key_id``, ``allow_http``…); ``deadline=SECONDS`` bounds
each request, retries included.

A put is atomic in these stores, so staging only holds the bytes; a commit
puts them, group by group in list order, so that a blob index, a closure or a
PathInfo never becomes visible before the objects it names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import SplitResult, urlunsplit

import obstore
from obstore.exceptions import BaseError, NotFoundError, UnknownConfigurationKeyError

from cafs.castore.objectstore import ObjectInfo, ObjectStorage, Staged
from cafs.errors import InvalidAddressError, StorageError
from cafs.urls import deadline_option, query_options

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 30.0
# An object written less than this long ago is not written again by a writer
# that needs it; gc's grace period must be longer than this plus the longest write.
FRESH_FOR = 600.0
# Puts of one commit in flight at once.
PUT_CONCURRENCY = 32
# The HTTP client's options, as object_store names them; any may carry tvix's ``aws_`` prefix.
CLIENT_OPTIONS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "timeout",
        "user_agent",
    }
)
_TRUE = {"1", "true", "yes", "on"}
# A missing object: obstore raises the built-in FileNotFoundError (older releases its own).
MISSING = (FileNotFoundError, NotFoundError)


class CloudObjectStorage(ObjectStorage):
    """One obstore store under one prefix."""

    def __init__(self, url: str, parts: SplitResult) -> None:
        self.url = url
        self.kind = parts.scheme.removeprefix("objectstore+")
        inner = parts._replace(scheme=parts.scheme.removeprefix("objectstore+"), query="")
        self._where = urlunsplit(inner)
        options = query_options(url, parts)
        deadline = DEFAULT_DEADLINE
        if "deadline" in options:
            deadline = deadline_option(url, options.pop("deadline"))
        self.deadline = deadline
        client: dict[str, Any] = {"timeout": timedelta(seconds=deadline)}
        config: dict[str, Any] = {}
        for key, value in options.items():
            name = key.lower().removeprefix("aws_")
            if name in CLIENT_OPTIONS:
                client[name] = value.lower() in _TRUE if name.startswith("allow") else value
            else:
                config[key] = value
        retry = {
            "max_retries": 10,
            "retry_timeout": timedelta(seconds=deadline),
            "backoff": {
                "init_backoff": timedelta(milliseconds=50),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        }
        try:
            build: Any = obstore.store.from_url  # one call for every kind of store
            self._store = build(
                self._where, config=config or None, client_options=client, retry_config=retry
            )
        except UnknownConfigurationKeyError as exc:
            raise InvalidAddressError(
                url, f"unknown object store option: {_first_line(exc)}"
            ) from None
        except (BaseError, ValueError, TypeError) as exc:
            raise InvalidAddressError(url, _first_line(exc)) from None
        except BaseException as exc:
            # A configuration the Rust side cannot take panics (a BaseException).
            if type(exc).__name__ != "PanicException":
                raise
            raise InvalidAddressError(url, f"object store refused its options: {exc}") from None

    def describe(self) -> str:
        return self._where

    def _error(self, action: str, key: str, exc: BaseException) -> StorageError:
        return StorageError(f"cannot {action} {key} in {self._where}: {_first_line(exc)}")

    def get_sync(self, key: str) -> bytes | None:
        try:
            return obstore.get(self._store, key).bytes().to_bytes()
        except MISSING:
            return None
        except (BaseError, OSError) as exc:
            raise self._error("read", key, exc) from exc

    async def get(self, key: str) -> bytes | None:
        try:
            result = await obstore.get_async(self._store, key)
            return (await result.bytes_async()).to_bytes()
        except MISSING:
            return None
        except (BaseError, OSError) as exc:
            raise self._error("read", key, exc) from exc

    def exists_sync(self, key: str) -> bool:
        try:
            obstore.head(self._store, key)
        except MISSING:
            return False
        except (BaseError, OSError) as exc:
            raise self._error("look up", key, exc) from exc
        return True

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self._store, key)
        except MISSING:
            return False
        except (BaseError, OSError) as exc:
            raise self._error("look up", key, exc) from exc
        return True

    def refresh_sync(self, key: str) -> bool:
        # An object is only dated by writing it: one written lately counts as
        # fresh, an older one is written again.
        try:
            meta = obstore.head(self._store, key)
        except MISSING:
            return False
        except (BaseError, OSError) as exc:
            raise self._error("look up", key, exc) from exc
        return time.time() - meta["last_modified"].timestamp() < FRESH_FOR

    def stage(self, key: str, data: bytes) -> Staged:
        return Staged(key, data=bytes(data))

    def discard(self, staged: list[Staged]) -> None:
        pass

    async def commit(self, staged: list[Staged]) -> None:
        # Consecutive objects of one kind go up together; the kinds in order.
        group: list[Staged] = []
        for item in staged:
            if group and _kind(group[-1].key) != _kind(item.key):
                await self._put_all(group)
                group = []
            group.append(item)
        await self._put_all(group)

    async def _put_all(self, items: list[Staged]) -> None:
        limit = asyncio.Semaphore(PUT_CONCURRENCY)

        async def put(item: Staged) -> None:
            assert item.data is not None
            async with limit:
                try:
                    await obstore.put_async(self._store, item.key, item.data)
                except (BaseError, OSError) as exc:
                    raise self._error("write", item.key, exc) from exc

        await asyncio.gather(*(put(item) for item in items))

    def list_sync(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            for batch in obstore.list(self._store, prefix or None, chunk_size=1000):
                for meta in batch:
                    yield ObjectInfo(meta["path"], meta["size"], meta["last_modified"].timestamp())
        except (BaseError, OSError) as exc:
            raise self._error("list", prefix or "/", exc) from exc

    async def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = list(keys[start : start + 1000])
            try:
                await obstore.delete_async(self._store, batch)
            except MISSING:
                pass
            except (BaseError, OSError) as exc:
                raise self._error("delete", batch[0], exc) from exc

    async def sweep(self, candidates: Sequence[ObjectInfo], cutoff: float) -> list[ObjectInfo]:
        # No rename here: each candidate's age is read again just before it goes.
        deleted: list[ObjectInfo] = []
        limit = asyncio.Semaphore(PUT_CONCURRENCY)

        async def one(info: ObjectInfo) -> None:
            async with limit:
                try:
                    meta = await obstore.head_async(self._store, info.key)
                    if meta["last_modified"].timestamp() > cutoff:
                        return
                    await obstore.delete_async(self._store, info.key)
                except MISSING:
                    return
                except (BaseError, OSError) as exc:
                    raise self._error("delete", info.key, exc) from exc
                deleted.append(info)

        await asyncio.gather(*(one(info) for info in candidates))
        return deleted

    async def touch(self, keys: Sequence[str]) -> None:
        # Rewriting an object to date it costs a download and an upload: cloud
        # stores are far stores, evicted by gc rather than by recency.
        return None


def _kind(key: str) -> str:
    return key.split("/", 1)[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

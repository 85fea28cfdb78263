"""``nix+http://``, ``nix+https://``: a Nix binary cache as a read-only PathInfoService.

A lookup fetches ``<hash>.narinfo``, then the NAR it names, and ingests the
NAR into the blob and directory services it was given, so the PathInfo it
returns points at contents the caller can read. Nothing is remembered: every
lookup downloads again (as tvix does), so the service is meant to sit behind
``cache://`` with a near PathInfoService that keeps what it returned.

Nothing from the cache is trusted beyond what can be checked: the narinfo
must describe the path asked for, be signed by a trusted key when keys are
configured, and the NAR must have the size and SHA-256 the narinfo claims
(and the download the FileSize/FileHash, when given). A check that fails is
an error and no PathInfo; the blobs and directories ingested on the way stay
behind, harmless content that no path names.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

import aiohttp

import cafs
from cafs.castore.blobs.base import BlobService
from cafs.castore.directories.base import DirectoryService
from cafs.castore.nodes import Node
from cafs.castore.services import CastoreServices
from cafs.errors import (
    CafsError,
    IntegrityError,
    InvalidAddressError,
    NarError,
    NarInfoError,
    SignatureError,
    StorageError,
    ValidationError,
)
from cafs.store import nixbase32
from cafs.store.nar.compression import CompressionError, check_compression, decompressing
from cafs.store.nar.ingest import ByteSource, ingest_nar
from cafs.store.narinfo import NarInfo
from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService, check_store_path_digest
from cafs.store.signatures import Signature, VerifyingKey
from cafs.urls import deadline_option

log = logging.getLogger(__name__)

SCHEMES = ("nix+http", "nix+https")
KEYS_OPTION = "trusted-public-keys"
DEADLINE_OPTION = "deadline"
DEFAULT_DEADLINE = 30.0
"""Seconds a connection may take, and one socket read may wait (``?deadline=SECONDS``):
a slow multi-gigabyte NAR is fine, a stalled one is not."""
MAX_NARINFO_BYTES = 2 * 1024 * 1024
READ_SIZE = 256 * 1024
OK_STATUSES = range(200, 300)
MISSING_STATUSES = (404, 403)
"""Statuses that mean "not in this cache": S3 buckets answer 403 for a missing key."""


class ReadOnlyCacheError(ValidationError):
    """A request a binary cache read over HTTP cannot serve (tvix: InvalidRequest)."""


@dataclass(frozen=True)
class NixHttpAddress:
    """What a ``nix+http(s)://`` URL says: where the cache is, and which keys to trust."""

    base_url: str
    """The cache's directory, ending in ``/``, without ``nix+`` or the query."""
    trusted_keys: tuple[VerifyingKey, ...] | None
    """None: narinfos are not checked; else one signature must verify with one of these."""
    deadline: float = DEFAULT_DEADLINE


def parse_address(url: str, parts: SplitResult) -> NixHttpAddress:
    """``nix+http(s)://host[:port][/path]?trusted-public-keys=…``, checked.

    The path is always the cache's directory, with or without a trailing
    slash (tvix's URL join would drop a last segment written without one).
    Values are %-decoded with ``+`` kept as ``+`` (base64 has it): keys are
    separated by ``%20`` (a space) or by repeating the option.
    """
    if parts.scheme not in SCHEMES:
        raise InvalidAddressError(url, f"expected {' or '.join(SCHEMES)}")
    if not parts.hostname:
        raise InvalidAddressError(url, f"{parts.scheme}:// needs a host")
    if parts.fragment:
        raise InvalidAddressError(url, f"{parts.scheme}:// takes no #fragment")
    keys: list[VerifyingKey] | None = None
    deadline = DEFAULT_DEADLINE
    unknown: set[str] = set()
    for pair in parts.query.split("&") if parts.query else []:
        key, _, value = pair.partition("=")
        if unquote(key) == DEADLINE_OPTION:
            deadline = deadline_option(url, unquote(value))
            continue
        if unquote(key) != KEYS_OPTION:
            unknown.add(unquote(key))
            continue
        keys = [] if keys is None else keys
        for text in unquote(value).split():
            try:
                keys.append(VerifyingKey.parse(text))
            except SignatureError as exc:
                raise InvalidAddressError(url, f"{KEYS_OPTION}: {exc}") from None
    if unknown:
        raise InvalidAddressError(
            url,
            f"unsupported option(s): {', '.join(sorted(unknown))} "
            f"(only {KEYS_OPTION} and {DEADLINE_OPTION})",
        )
    if keys is not None and not keys:
        raise InvalidAddressError(url, f"{KEYS_OPTION} is given without a key")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    base = urlunsplit((parts.scheme.removeprefix("nix+"), parts.netloc, path, "", ""))
    return NixHttpAddress(base, None if keys is None else tuple(keys), deadline)


def shown(url: str) -> str:
    """``url`` without a user name or password, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _names(items: Iterable[VerifyingKey | Signature]) -> str:
    return ", ".join(sorted({item.name for item in items}))


class NixHttpPathInfoService(PathInfoService):
    """Reads PathInfos from a Nix binary cache, ingesting each NAR on the way.

    ``blobs`` and ``directories`` must be (or feed) the services the caller
    reads contents from; they are not closed here, their owner closes them.
    Concurrent lookups of one path share one download.
    """

    @classmethod
    def from_url(
        cls, url: str, parts: SplitResult, castore: CastoreServices | None = None
    ) -> NixHttpPathInfoService:
        """``nix+http(s)://host/path?trusted-public-keys=…``: see ``parse_address``."""
        address = parse_address(url, parts)
        if castore is None:
            raise InvalidAddressError(
                url, f"{parts.scheme}:// needs blob and directory services to ingest NARs into"
            )
        return cls(address, castore.blobs, castore.directories)

    def __init__(
        self,
        address: NixHttpAddress,
        blobs: BlobService,
        directories: DirectoryService,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        self.address = address
        self.blobs = blobs
        self.directories = directories
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=connect_timeout or address.deadline,
            sock_read=read_timeout or address.deadline,
        )
        self._session: aiohttp.ClientSession | None = None
        self._pending: dict[bytes, asyncio.Future[PathInfo | None]] = {}

    @property
    def url(self) -> str:
        return shown(self.address.base_url)

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": f"cafs/{cafs.__version__}"},
                trust_env=True,  # http(s)_proxy and netrc, as Nix's curl honours them
            )
        return self._session

    async def connect(self) -> None:
        self._http()

    async def close(self) -> None:
        for pending in list(self._pending.values()):
            pending.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the interface ------------------------------------------------------------------

    async def get(self, digest: bytes) -> PathInfo | None:
        digest = check_store_path_digest(digest)
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda done: self._finished(digest, done))
        return await asyncio.shield(pending)

    def _finished(self, digest: bytes, done: asyncio.Future[PathInfo | None]) -> None:
        if self._pending.get(digest) is done:
            del self._pending[digest]
        if not done.cancelled():
            done.exception()  # retrieved: a caller that went away is not an unhandled error

    async def put(self, info: PathInfo) -> PathInfo:
        raise ReadOnlyCacheError(
            f"cannot add {info.store_path.absolute}: {self.url} is a binary cache read over "
            "HTTP, put is not supported"
        )

    async def list(self) -> AsyncIterator[PathInfo]:
        raise ReadOnlyCacheError(
            f"{self.url} is a binary cache read over HTTP: listing its paths is not supported"
        )
        yield  # pragma: no cover - makes this an async generator

    # -- fetching -----------------------------------------------------------------------

    async def _fetch(self, digest: bytes) -> PathInfo | None:
        narinfo_url = f"{self.address.base_url}{nixbase32.encode(digest)}.narinfo"
        narinfo = await self._narinfo(narinfo_url)
        if narinfo is None:
            return None
        where = shown(narinfo_url)
        if narinfo.store_path.digest != digest:
            raise IntegrityError(
                f"{where} describes {narinfo.store_path.absolute}, "
                f"not the path with hash {nixbase32.encode(digest)}"
            )
        self._check_signatures(narinfo, where)
        compression = narinfo.compression or "none"
        try:
            check_compression(compression)
        except CafsError as exc:
            raise StorageError(f"{where}: {exc}") from None
        nar_url = urljoin(self.address.base_url, narinfo.url)
        if urlsplit(nar_url).scheme not in ("http", "https"):
            raise StorageError(f"{where}: the NAR URL {narinfo.url!r} is not an HTTP URL")
        node = await self._ingest(nar_url, narinfo, compression)
        return PathInfo(
            store_path=narinfo.store_path,
            node=node,
            references=tuple(narinfo.references),
            nar_size=narinfo.nar_size,
            nar_sha256=narinfo.nar_hash.digest,
            signatures=tuple(narinfo.signatures),
            deriver=narinfo.deriver,
            ca=narinfo.ca,
        )

    async def _narinfo(self, url: str) -> NarInfo | None:
        where = shown(url)
        log.debug("GET %s", where)
        try:
            async with self._http().get(url) as response:
                if response.status in MISSING_STATUSES:
                    return None
                _check_status(response, where)
                data = await response.content.read(MAX_NARINFO_BYTES + 1)
                while len(data) <= MAX_NARINFO_BYTES:
                    more = await response.content.read(MAX_NARINFO_BYTES + 1 - len(data))
                    if not more:
                        break
                    data += more
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StorageError(f"GET {where} failed: {_reason(exc)}") from None
        if len(data) > MAX_NARINFO_BYTES:
            raise IntegrityError(f"{where} is over {MAX_NARINFO_BYTES} bytes: not a narinfo")
        # The cache's fault, not the caller's: an integrity error, not a validation error.
        try:
            return NarInfo.parse(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise IntegrityError(f"{where} is not UTF-8 text: not a narinfo") from None
        except NarInfoError as exc:
            raise IntegrityError(f"{where} is not a valid narinfo: {exc}") from None

    def _check_signatures(self, narinfo: NarInfo, where: str) -> None:
        keys = self.address.trusted_keys
        if keys is None or narinfo.verify(keys):
            return
        path = narinfo.store_path.absolute
        trusted = _names(keys)
        if not narinfo.signatures:
            raise IntegrityError(
                f"{where}: {path} is not signed, and {KEYS_OPTION} ({trusted}) requires a signature"
            )
        trusted_names = {key.name for key in keys}
        if not any(sig.name in trusted_names for sig in narinfo.signatures):
            raise IntegrityError(
                f"{where}: {path} is signed only by untrusted keys ({_names(narinfo.signatures)}; "
                f"{KEYS_OPTION}: {trusted})"
            )
        raise IntegrityError(
            f"{where}: the signature of {path} by {_names(narinfo.signatures)} does not verify "
            "(a wrong key, or the narinfo was altered)"
        )

    async def _ingest(self, url: str, narinfo: NarInfo, compression: str) -> Node:
        """Stream the NAR at ``url`` into castore; its root node once every check passed."""
        where = shown(url)
        path = narinfo.store_path.absolute
        log.info(
            "downloading the NAR of %s from %s (%s, NarSize %d)",
            path, where, compression, narinfo.nar_size,
        )  # fmt: skip
        started = time.monotonic()
        download = _Download(where, narinfo)
        try:
            async with self._http().get(url) as response:
                _check_status(response, where)
                download.body = response.content
                source = _bounded_nar(decompressing(download.read, compression), where, narinfo)
                ingested = await ingest_nar(source, self.blobs, self.directories)
                if narinfo.file_size is not None or narinfo.file_hash is not None:
                    while await download.read(READ_SIZE):
                        pass  # the whole file counts for FileSize and FileHash
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StorageError(f"GET {where} failed: {_reason(exc)}") from None
        except (NarError, CompressionError) as exc:
            raise IntegrityError(f"the NAR of {path} from {where} is corrupt: {exc}") from None
        _check_nar(narinfo, where, ingested.nar_size, ingested.nar_sha256)
        download.check()
        seconds = max(time.monotonic() - started, 1e-6)
        log.info(
            "downloaded the NAR of %s: %d bytes (%d as %s) in %.1f s, %.1f MB/s",
            path, ingested.nar_size, download.size, compression, seconds,
            download.size / seconds / 1e6,
        )  # fmt: skip
        return ingested.node


class _Download:
    """The body of a NAR download, read in pieces, counted and hashed as it arrives."""

    def __init__(self, where: str, narinfo: NarInfo) -> None:
        self.where = where
        self.narinfo = narinfo
        self.body: aiohttp.StreamReader | None = None
        self.size = 0
        self._hasher = hashlib.sha256()

    async def read(self, n: int) -> bytes:
        assert self.body is not None
        try:
            data = await self.body.read(n)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StorageError(
                f"download of {self.where} failed after {self.size} bytes: {_reason(exc)}"
            ) from None
        self.size += len(data)
        expected = self.narinfo.file_size
        if expected is not None and self.size > expected:
            raise IntegrityError(
                f"{self.where} is larger than the FileSize of {self.narinfo.store_path.absolute} "
                f"({expected} bytes): refused"
            )
        self._hasher.update(data)
        return data

    def check(self) -> None:
        """The whole file against FileSize and FileHash, where the narinfo gives them."""
        path = self.narinfo.store_path.absolute
        expected_size = self.narinfo.file_size
        if expected_size is not None and self.size != expected_size:
            raise IntegrityError(
                f"{self.where} is {self.size} bytes, the FileSize of {path} is {expected_size}: "
                "refused"
            )
        expected = self.narinfo.file_hash
        if expected is not None and self._hasher.digest() != expected.digest:
            raise IntegrityError(
                f"{self.where} has sha256:{nixbase32.encode(self._hasher.digest())}, the FileHash "
                f"of {path} is {expected.to_nix_string()}: refused"
            )


def _bounded_nar(source: ByteSource, where: str, narinfo: NarInfo) -> ByteSource:
    """``source``, failing as soon as it gives more than NarSize bytes (no endless download)."""
    read = 0

    async def bounded(n: int) -> bytes:
        nonlocal read
        data = await source(n)
        read += len(data)
        if read > narinfo.nar_size:
            raise IntegrityError(
                f"the NAR from {where} is larger than the NarSize of "
                f"{narinfo.store_path.absolute} ({narinfo.nar_size} bytes): refused"
            )
        return data

    return bounded


def _check_nar(narinfo: NarInfo, where: str, size: int, sha256: bytes) -> None:
    path = narinfo.store_path.absolute
    if size != narinfo.nar_size:
        raise IntegrityError(
            f"the NAR from {where} is {size} bytes, the NarSize of {path} is "
            f"{narinfo.nar_size}: refused"
        )
    if sha256 != narinfo.nar_hash.digest:
        raise IntegrityError(
            f"the NAR from {where} has sha256:{nixbase32.encode(sha256)}, the NarHash of {path} "
            f"is {narinfo.nar_hash.to_nix_string()}: refused"
        )


def _check_status(response: aiohttp.ClientResponse, where: str) -> None:
    if response.status not in OK_STATUSES:
        raise StorageError(f"GET {where}: HTTP {response.status} {response.reason or ''}".strip())


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

"""nar-bridge: a store served as a Nix binary cache over HTTP.

Nix clients (``nix copy --from``, substituters) ask for ``<hash>.narinfo``
and then for the NAR its ``URL`` names. Nothing is stored as NAR here: the
narinfo comes from the PathInfo (signed on the fly with a configured key),
and the NAR is rendered from castore as it is sent, any byte range of it,
in bounded memory. The URL carries the root node itself, as tvix's
nar-bridge writes it (``nar/tvix-castore/<base64url of the node>?narsize=N``),
so a NAR needs no lookup.

With ``allow_put``, ``nix copy --to http://…`` works too: Nix uploads each
NAR (compressed as the client chose), then its narinfo. The NAR is ingested
as it streams in, and checked against the file hash its URL names; the
narinfo is accepted only if its NarHash, NarSize (and FileHash/FileSize)
match an upload, and only then is a PathInfo stored. A bad request gets a
4xx status with a one-line reason and stores no PathInfo.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cafs.castore.nodes import Node, node_from_proto, node_to_proto
from cafs.errors import CafsError, NarError, NarInfoError
from cafs.gen.tvix.castore.v1 import castore_pb2
from cafs.store import nixbase32
from cafs.store.nar.compression import (
    SNIFF_BYTES,
    SUFFIXES,
    CompressionError,
    Compressor,
    decompressing,
    sniff,
)
from cafs.store.nar.ingest import ingest_nar
from cafs.store.nar.render import FileRange, render_nar, render_nar_pieces
from cafs.store.narinfo import NarInfo
from cafs.store.pathinfo import PathInfo
from cafs.store.services import StoreServices
from cafs.store.signatures import SigningKey

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9000"
DEFAULT_PRIORITY = 39
NARINFO_TYPE = "text/x-nix-narinfo"
NAR_TYPE = "application/x-nix-nar"
MAX_NARINFO_BYTES = 2 * 1024 * 1024
MAX_NODE_BYTES = 4096
UPLOADS_REMEMBERED = 1000
"""Uploaded NARs waiting for their narinfo (Nix sends the narinfo right after)."""
IMMUTABLE = "public, max-age=31536000, immutable"

NARINFO_NAME = re.compile(r"^([0-9a-df-np-sv-z]{32})\.narinfo$")
UPLOADED_NAR = re.compile(r"^nar/([0-9a-df-np-sv-z]{52})\.nar(\.[a-z0-9]+)?$")


class BadRequest(CafsError):
    """A request the bridge refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """A NAR received by PUT, waiting for the narinfo that describes it."""

    url: str
    node: Node
    nar_size: int
    nar_sha256: bytes
    file_sha256: bytes
    file_size: int


@dataclass(frozen=True)
class BridgeOptions:
    priority: int = DEFAULT_PRIORITY
    signing_key: SigningKey | None = None
    allow_put: bool = False
    compression: str = "none"
    """How NARs are served: ``none``, or ``zstd`` (compressed as they are sent)."""


def nar_url(node: Node, nar_size: int, compression: str = "none") -> str:
    """Where a narinfo points for ``node``'s NAR: the node itself, base64url without padding."""
    encoded = node_to_proto(b"", node).SerializeToString(deterministic=True)
    b64 = base64.urlsafe_b64encode(encoded).rstrip(b"=").decode()
    return f"nar/tvix-castore/{b64}{SUFFIXES[compression]}?narsize={nar_size}"


def node_of_url(encoded: str) -> Node:
    """The node named by a ``nar/tvix-castore/…`` URL; BadRequest if it names none."""
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest(404, "the NAR URL does not hold a base64url node") from None
    if len(raw) > MAX_NODE_BYTES:
        raise BadRequest(400, f"the node in the NAR URL is over {MAX_NODE_BYTES} bytes")
    message = castore_pb2.Node()
    try:
        message.ParseFromString(raw)
        name, node = node_from_proto(message)
    except Exception as exc:
        raise BadRequest(404, f"the NAR URL does not hold a valid node: {exc}") from None
    if name:
        raise BadRequest(400, "the node in the NAR URL must have an empty name")
    return node


class NarBridge:
    """The HTTP handlers over one set of store services."""

    def __init__(self, services: StoreServices, options: BridgeOptions | None = None) -> None:
        self.services = services
        self.options = options or BridgeOptions()
        self.uploads: OrderedDict[bytes, Upload] = OrderedDict()

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_NARINFO_BYTES)
        app.router.add_get("/", self._hello)
        app.router.add_get("/nix-cache-info", self._cache_info)
        app.router.add_route("PUT", "/nix-cache-info", self._put_cache_info)
        app.router.add_get("/nar/tvix-castore/{node}", self._get_nar)
        app.router.add_route("PUT", "/nar/{file}", self._put_nar)
        app.router.add_get("/nar/{file}", self._get_uploaded)
        app.router.add_get("/{name}", self._get_narinfo)
        app.router.add_route("PUT", "/{name}", self._put_narinfo)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            log.info("%s %s: %d %s", request.method, request.path, exc.status, exc)
            return web.Response(status=exc.status, text=f"{exc}\n")
        except web.HTTPException:
            raise
        except (NarInfoError, CompressionError) as exc:
            log.info("%s %s: 400 %s", request.method, request.path, exc)
            return web.Response(status=400, text=f"{exc}\n")
        except CafsError as exc:
            log.warning("%s %s: 500 %s", request.method, request.path, exc)
            return web.Response(status=500, text=f"{exc}\n")

    # -- reading ------------------------------------------------------------------------

    async def _hello(self, request: web.Request) -> web.Response:
        return web.Response(text="Hello from nar-bridge (cafs)\n")

    async def _cache_info(self, request: web.Request) -> web.Response:
        text = f"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {self.options.priority}\n"
        return web.Response(text=text, content_type="text/x-nix-cache-info")

    async def _get_narinfo(self, request: web.Request) -> web.Response:
        found = NARINFO_NAME.match(request.match_info["name"])
        if found is None:
            raise BadRequest(404, "not found")
        info = await self.services.path_infos.get(nixbase32.decode(found.group(1)))
        if info is None:
            raise BadRequest(404, f"{found.group(1)}.narinfo: no such store path here")
        narinfo = info.to_narinfo(nar_url(info.node, info.nar_size, self.options.compression))
        if self.options.compression != "none":
            narinfo.compression = self.options.compression
        else:
            # What is sent is the NAR itself; Nix shows this as the download size.
            narinfo.file_size = info.nar_size
        if self.options.signing_key is not None:
            narinfo.sign(self.options.signing_key)
        if request.method == "HEAD":
            return web.Response(content_type=NARINFO_TYPE)
        return web.Response(text=narinfo.render(), content_type=NARINFO_TYPE)

    async def _get_nar(self, request: web.Request) -> web.StreamResponse:
        encoded = request.match_info["node"]
        compression = "none"
        for name, suffix in SUFFIXES.items():
            if suffix and encoded.endswith(suffix):
                encoded, compression = encoded[: -len(suffix)], name
        if compression not in ("none", self.options.compression):
            raise BadRequest(404, f"NARs are not served as {compression} here")
        node = node_of_url(encoded)
        text = request.query.get("narsize", "")
        if not text.isdigit():
            raise BadRequest(400, "the NAR URL needs ?narsize=N")
        nar_size = int(text)
        headers = {"Cache-Control": IMMUTABLE, "Content-Type": NAR_TYPE}
        if compression != "none":
            return await self._send_compressed(request, node, compression, headers)
        start, end, partial = _range(request, nar_size)
        response = web.StreamResponse(status=206 if partial else 200, headers=headers)
        response.content_length = end - start
        response.headers["Accept-Ranges"] = "bytes"
        if partial:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{nar_size}"
        if request.method == "HEAD":
            await response.prepare(request)  # the size is the URL's word, unchecked
            return response
        # The NAR's size is known before its first byte: one that is not the
        # narsize promised is refused, not sent cut short or too long.
        pieces = render_nar_pieces(node, self.services.blobs, self.services.directories, start,
                                   end, expected_size=nar_size, file_ranges=True)  # fmt: skip
        try:
            first = await anext(pieces)
        except NarError as exc:
            await pieces.aclose()
            raise BadRequest(400, f"{request.path}: {exc} (narsize in the URL)") from None
        await response.prepare(request)
        # A blob that turns out shorter than its node claims fails the render
        # here, which cuts the connection: no response that looks complete.
        await self._send_piece(request, response, first)
        async for piece in pieces:
            await self._send_piece(request, response, piece)
        await response.write_eof()
        return response

    @staticmethod
    async def _send_piece(
        request: web.Request, response: web.StreamResponse, piece: bytes | FileRange
    ) -> None:
        if isinstance(piece, bytes):
            await response.write(piece)
            return
        # A plain copy of a verified blob: the kernel copies it to the socket
        # (asyncio reads and writes it itself where sendfile cannot go, as over TLS).
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        with await asyncio.to_thread(piece.open) as source:
            sent = await asyncio.get_running_loop().sendfile(
                transport, source, piece.offset, piece.length
            )
        if sent != piece.length:
            raise NarError(f"cannot render NAR: blob {piece.node.digest}: its plain copy is short")

    async def _send_compressed(
        self, request: web.Request, node: Node, compression: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        compressor = Compressor(compression)
        async for piece in render_nar(node, self.services.blobs, self.services.directories):
            block = compressor.compress(piece)
            if block:
                await response.write(block)
        await response.write(compressor.flush())
        await response.write_eof()
        return response

    async def _get_uploaded(self, request: web.Request) -> web.Response:
        """HEAD of a NAR uploaded lately: Nix asks before it uploads one again."""
        path = f"nar/{request.match_info['file']}"
        if request.method == "HEAD" and any(u.url == path for u in self.uploads.values()):
            return web.Response(content_type=NAR_TYPE)
        raise BadRequest(404, f"{path}: not here (NARs are served under nar/tvix-castore/)")

    # -- writing (nix copy --to) -------------------------------------------------------------

    def _check_put(self) -> None:
        if not self.options.allow_put:
            raise BadRequest(403, "uploads are off (start nar-bridge with --allow-put)")

    async def _put_cache_info(self, request: web.Request) -> web.Response:
        self._check_put()
        return web.Response(text="")

    async def _put_nar(self, request: web.Request) -> web.Response:
        self._check_put()
        path = f"nar/{request.match_info['file']}"
        found = UPLOADED_NAR.match(path)
        if found is None:
            raise BadRequest(
                400, f"{path}: not a NAR name (nar/<nixbase32 sha256>.nar[.xz|.bz2|.zst])"
            )
        file_sha256 = nixbase32.decode(found.group(1))
        hasher = hashlib.sha256()
        file_size = 0

        async def compressed(n: int) -> bytes:
            nonlocal file_size
            data = await request.content.read(n)
            hasher.update(data)
            file_size += len(data)
            return data

        # The compression is told by the first bytes: Nix names a gzip upload
        # plain ".nar", and a suffix is only a hint.
        head = b""
        while len(head) < SNIFF_BYTES:
            more = await compressed(SNIFF_BYTES - len(head))
            if not more:
                break
            head += more
        compression = sniff(head)
        if compression is None:
            hint = (found.group(2) or "").lstrip(".") or "unknown"
            raise BadRequest(
                400,
                f"{path}: neither a NAR nor xz, bzip2, zstd or gzip ({hint}); "
                "upload with ?compression=xz, zstd or none",
            )
        pending = head

        async def rest(n: int) -> bytes:
            nonlocal pending
            if pending:
                piece, pending = pending[:n], pending[n:]
                return piece
            return await compressed(n)

        source = decompressing(rest, compression)
        try:
            ingested = await ingest_nar(source, self.services.blobs, self.services.directories)
        except (NarError, CompressionError) as exc:
            raise BadRequest(400, f"{path}: {exc}") from exc
        if hasher.digest() != file_sha256:
            raise BadRequest(
                400,
                f"{path}: the upload hashes to {nixbase32.encode(hasher.digest())}, "
                "not to the hash its name gives",
            )
        upload = Upload(path, ingested.node, ingested.nar_size, ingested.nar_sha256,
                        file_sha256, file_size)  # fmt: skip
        self.uploads[ingested.nar_sha256] = upload
        self.uploads.move_to_end(ingested.nar_sha256)
        while len(self.uploads) > UPLOADS_REMEMBERED:
            self.uploads.popitem(last=False)
        log.info("received %s: NAR of %d bytes", path, ingested.nar_size)
        return web.Response(text="")

    async def _put_narinfo(self, request: web.Request) -> web.Response:
        self._check_put()
        name = request.match_info["name"]
        found = NARINFO_NAME.match(name)
        if found is None:
            raise BadRequest(400, f"{name}: uploads are NARs under nar/ and <hash>.narinfo files")
        body = await request.read()
        try:
            narinfo = NarInfo.parse(body.decode())
        except UnicodeDecodeError:
            raise BadRequest(400, f"{name}: the narinfo is not UTF-8") from None
        if nixbase32.encode(narinfo.store_path.digest) != found.group(1):
            raise BadRequest(400, f"{name} describes another store path ({narinfo.store_path})")
        upload = self.uploads.get(narinfo.nar_hash.digest)
        if upload is None:
            raise BadRequest(400, f"{name}: no NAR with its NarHash was uploaded (send it first)")
        problems = []
        if narinfo.nar_size != upload.nar_size:
            problems.append(f"NarSize {narinfo.nar_size}, the NAR has {upload.nar_size}")
        if narinfo.url.split("?")[0] != upload.url:
            problems.append(f"URL {narinfo.url}, the NAR was uploaded as {upload.url}")
        if narinfo.file_hash is not None and narinfo.file_hash.digest != upload.file_sha256:
            problems.append("FileHash differs from the uploaded file's")
        if narinfo.file_size is not None and narinfo.file_size != upload.file_size:
            problems.append(f"FileSize {narinfo.file_size}, the upload had {upload.file_size}")
        if problems:
            raise BadRequest(400, f"{name}: " + "; ".join(problems))
        info = PathInfo(
            store_path=narinfo.store_path,
            node=upload.node,
            references=tuple(narinfo.references),
            nar_size=upload.nar_size,
            nar_sha256=upload.nar_sha256,
            signatures=tuple(narinfo.signatures),
            deriver=narinfo.deriver,
            ca=narinfo.ca,
        )
        await self.services.path_infos.put(info)
        log.info("stored %s", narinfo.store_path)
        return web.Response(text="")


def _range(request: web.Request, size: int) -> tuple[int, int, bool]:
    """The byte range asked for, as [start, end), and whether one was; 416 if none of it exists."""
    try:
        wanted = request.http_range
    except ValueError:
        raise BadRequest(416, "malformed Range header") from None
    start, stop = wanted.start, wanted.stop
    if start is None and stop is None:
        return 0, size, False
    if start is not None and start < 0:  # "bytes=-N": the last N bytes
        start, stop = max(size + start, 0), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, stop, True

"""The compressions of NARs in Nix binary caches, streamed with bounded memory.

Nix names a NAR's compression in the narinfo (``Compression: xz``) and in
the file name (``.nar.xz``). Decompression runs on a worker thread through
the standard file objects of each format, each read giving at most what was
asked for, so a small file that expands to gigabytes is never held at once.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import lzma
import zlib
from typing import IO, Protocol

import zstandard

from cafs.errors import CafsError
from cafs.store.nar.ingest import ByteSource

SUFFIXES = {"none": "", "xz": ".xz", "bzip2": ".bz2", "zstd": ".zst", "gzip": ".gz"}
"""Compression name (as a narinfo writes it) → NAR file name suffix."""
DECOMPRESSED = ("none", "xz", "bzip2", "zstd", "gzip")


MAGICS = {
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x1f\x8b": "gzip",
}
"""The first bytes of each format cafs decompresses."""
NAR_START = b"\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1"
"""The first bytes of every NAR (the length-prefixed magic string)."""
SNIFF_BYTES = len(NAR_START)


def sniff(head: bytes) -> str | None:
    """The compression a stream starting with ``head`` is in ("none" for a plain NAR)."""
    if head.startswith(NAR_START[: len(head)]) and head:
        return "none"
    return next((name for magic, name in MAGICS.items() if head.startswith(magic)), None)


class CompressionError(CafsError):
    """A compressed stream that is corrupt, truncated, or in an unknown format."""


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def check_compression(name: str) -> str:
    """``name`` if cafs can decompress it; CompressionError naming the ones it can."""
    if name not in DECOMPRESSED:
        raise CompressionError(
            f"unsupported compression {name!r} (supported: {', '.join(DECOMPRESSED)})"
        )
    return name


def decompressing(source: ByteSource, compression: str) -> ByteSource:
    """``source`` decompressed as ``compression`` (a narinfo's name for it)."""
    check_compression(compression)
    if compression == "none":
        return source
    loop = asyncio.get_running_loop()

    async def pull(n: int) -> bytes:
        return await source(n)

    class _Compressed(io.RawIOBase):
        """The compressed bytes, pulled from the async source by the worker thread."""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            data = asyncio.run_coroutine_threadsafe(pull(len(buffer)), loop).result()
            buffer[: len(data)] = data
            return len(data)

    raw: IO[bytes] = io.BufferedReader(_Compressed(), 1 << 16)
    reader = _open(compression, raw)

    def read_sync(n: int) -> bytes:
        try:
            return reader.read(n)
        except (lzma.LZMAError, OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            raise CompressionError(f"the {compression} stream is corrupt: {exc}") from exc

    async def read(n: int) -> bytes:
        return await asyncio.to_thread(read_sync, n)

    return read


def _open(compression: str, raw: IO[bytes]) -> _Reader:
    if compression == "xz":
        return lzma.LZMAFile(raw)
    if compression == "bzip2":
        return bz2.BZ2File(raw)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


class Compressor:
    """Streaming compression for serving NARs (``zstd`` or ``none``)."""

    def __init__(self, compression: str, level: int = 3) -> None:
        if compression not in ("none", "zstd"):
            raise CompressionError(f"cafs serves NARs as none or zstd, not {compression!r}")
        self.compression = compression
        self._zstd = (
            zstandard.ZstdCompressor(level=level).compressobj() if compression == "zstd" else None
        )

    def compress(self, data: bytes) -> bytes:
        return data if self._zstd is None else self._zstd.compress(data)

    def flush(self) -> bytes:
        return b"" if self._zstd is None else self._zstd.flush()

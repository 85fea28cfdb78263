"""BLAKE3 digests: the addresses of blobs and directories."""

from __future__ import annotations

import base64
import binascii
from typing import Self

import blake3

DIGEST_SIZE = 32

# Inputs at least this large are hashed with BLAKE3's own thread pool.
_MULTITHREAD_THRESHOLD = 1 << 20


class Digest(bytes):
    """A 32-byte BLAKE3 digest.

    A ``bytes`` subclass so it can be used as a dict key, compared and handed
    to protobuf directly; construction refuses any other length. ``str()``
    gives the display form ``b3:<standard padded base64>`` used in logs,
    xattrs and the CLI.
    """

    __slots__ = ()

    def __new__(cls, value: bytes | bytearray | memoryview) -> Self:
        if len(value) != DIGEST_SIZE:
            from cafs.errors import InvalidDigestError

            raise InvalidDigestError(f"invalid digest length: {len(value)} bytes, expected 32")
        return super().__new__(cls, value)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Digest:
        """The BLAKE3 digest of ``data`` (multi-threaded for large inputs)."""
        return cls(blake3_digest(data))

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse the display form (``b3:`` or ``blake3-`` + base64) or 64 hex digits."""
        from cafs.errors import InvalidDigestError

        for prefix in ("b3:", "blake3-"):
            if text.startswith(prefix):
                try:
                    raw = base64.b64decode(text[len(prefix) :], validate=True)
                except binascii.Error:
                    raise InvalidDigestError(f"invalid digest {text!r}: bad base64") from None
                if len(raw) != DIGEST_SIZE:
                    raise InvalidDigestError(
                        f"invalid digest {text!r}: {len(raw)} bytes, expected 32"
                    )
                return cls(raw)
        if len(text) == 2 * DIGEST_SIZE:
            try:
                return cls(bytes.fromhex(text))
            except ValueError:
                pass
        raise InvalidDigestError(
            f"invalid digest {text!r}: expected b3:<base64>, blake3-<base64> or 64 hex digits"
        )

    def __str__(self) -> str:
        return "b3:" + base64.b64encode(self).decode("ascii")

    def __repr__(self) -> str:
        return f"Digest({self})"


def blake3_digest(data: bytes | bytearray | memoryview) -> bytes:
    """Raw BLAKE3 of ``data``; large inputs use every core (the GIL is released)."""
    if len(data) >= _MULTITHREAD_THRESHOLD:
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()
    return blake3.blake3(data).digest()


EMPTY_DIGEST = Digest.of(b"")
"""The digest of the empty blob, which is also the digest of the empty Directory."""

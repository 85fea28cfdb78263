"""Nix's base-32 encoding of hashes (store path digests, ``sha256:`` strings).

Not RFC 4648: the alphabet omits ``e o t u``, and the string is written from the
last 5-bit group to the first, so the bytes read little-endian.
"""

from __future__ import annotations

from cafs.errors import HashFormatError

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUES = {c: i for i, c in enumerate(ALPHABET)}


def encoded_length(n: int) -> int:
    """Characters needed for ``n`` bytes."""
    return (8 * n + 4) // 5


def decoded_length(n: int) -> int:
    """Bytes held by ``n`` characters."""
    return 5 * n // 8


def encode(data: bytes) -> str:
    value = int.from_bytes(data, "little")
    length = encoded_length(len(data))
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(length)))


def decode(text: str) -> bytes:
    """The bytes of ``text``; raises on a bad length, character or non-zero padding bits."""
    n = decoded_length(len(text))
    if encoded_length(n) != len(text):
        raise HashFormatError(f"invalid nixbase32 length {len(text)}: {text!r}")
    value = 0
    for position, char in enumerate(text):
        digit = _VALUES.get(char)
        if digit is None:
            raise HashFormatError(
                f"invalid nixbase32 character {char!r} at position {position} in {text!r}"
            )
        value = (value << 5) | digit
    if value >> (8 * n):
        raise HashFormatError(f"invalid nixbase32 string {text!r}: bits beyond the last byte")
    return value.to_bytes(n, "little")


def decode_fixed(text: str, size: int) -> bytes:
    """Like ``decode``, for a string that must hold exactly ``size`` bytes."""
    if len(text) != encoded_length(size):
        raise HashFormatError(
            f"invalid nixbase32 length {len(text)} for {size} bytes, "
            f"expected {encoded_length(size)}: {text!r}"
        )
    return decode(text)

"""Nix hashes (``sha256:…``) and content addresses (``fixed:r:sha256:…``).

A content address says how a store path's digest was derived from its
contents: the NAR of the tree (``fixed:r:``, recursive), the flat bytes of a
single file (``fixed:``), or the bytes of a text file (``text:``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Literal

from cafs.errors import HashFormatError
from cafs.store import nixbase32

HashAlgo = Literal["md5", "sha1", "sha256", "sha512"]
DIGEST_SIZES: dict[str, int] = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}


def _algo(text: str) -> HashAlgo:
    if text not in DIGEST_SIZES:
        raise HashFormatError(f"unknown hash algorithm {text!r}")
    return text  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class NixHash:
    """A digest with the name of the algorithm that made it."""

    algo: HashAlgo
    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != DIGEST_SIZES[self.algo]:
            raise HashFormatError(
                f"{self.algo} digest must be {DIGEST_SIZES[self.algo]} bytes, "
                f"got {len(self.digest)}"
            )

    @classmethod
    def of(cls, algo: HashAlgo, data: bytes) -> NixHash:
        return cls(algo, hashlib.new(algo, data).digest())

    @classmethod
    def parse(cls, text: str) -> NixHash:
        """``algo:digest`` (nixbase32, hex or base64) or SRI ``algo-base64``."""
        if ":" in text:
            algo_text, _, encoded = text.partition(":")
            algo = _algo(algo_text)
            return cls(algo, decode_digest(algo, encoded))
        algo_text, dash, encoded = text.partition("-")
        if not dash:
            raise HashFormatError(f"invalid hash {text!r}: expected 'algo:digest' or SRI form")
        algo = _algo(algo_text)
        digest = _b64(encoded)
        if digest is None or len(digest) != DIGEST_SIZES[algo]:
            raise HashFormatError(f"invalid SRI hash {text!r}")
        return cls(algo, digest)

    def to_nix_string(self) -> str:
        """``algo:<nixbase32>``, the form of narinfo files and ``nix-store -q --hash``."""
        return f"{self.algo}:{nixbase32.encode(self.digest)}"

    def to_sri(self) -> str:
        return f"{self.algo}-{base64.b64encode(self.digest).decode()}"

    def __str__(self) -> str:
        return self.to_nix_string()


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_digest(algo: HashAlgo, encoded: str) -> bytes:
    """A digest written in nixbase32, hex or base64, told apart by length as Nix does."""
    size = DIGEST_SIZES[algo]
    if len(encoded) == 2 * size:
        try:
            return bytes.fromhex(encoded)
        except ValueError as exc:
            raise HashFormatError(f"invalid hex {algo} digest {encoded!r}") from exc
    if len(encoded) == nixbase32.encoded_length(size):
        return nixbase32.decode(encoded)
    digest = _b64(encoded)
    if digest is not None and len(digest) == size:
        return digest
    raise HashFormatError(f"invalid {algo} digest {encoded!r}: wrong length or encoding")


CAKind = Literal["nar", "flat", "text"]


@dataclass(frozen=True, slots=True)
class CAHash:
    """A content address: how the store path digest follows from the contents."""

    kind: CAKind
    hash: NixHash

    def __post_init__(self) -> None:
        if self.kind == "text" and self.hash.algo != "sha256":
            raise HashFormatError("a text content address must use sha256")

    @classmethod
    def parse(cls, text: str) -> CAHash:
        """The narinfo ``CA:`` form: ``text:sha256:…``, ``fixed:r:algo:…``, ``fixed:algo:…``."""
        if text.startswith("text:"):
            nix_hash = NixHash.parse(text[len("text:") :])
            if nix_hash.algo != "sha256":
                raise HashFormatError(f"invalid content address {text!r}: text needs sha256")
            return cls("text", nix_hash)
        if text.startswith("fixed:r:"):
            return cls("nar", NixHash.parse(text[len("fixed:r:") :]))
        if text.startswith("fixed:"):
            return cls("flat", NixHash.parse(text[len("fixed:") :]))
        raise HashFormatError(f"invalid content address {text!r}")

    def to_nix_string(self) -> str:
        prefix = {"text": "text:", "nar": "fixed:r:", "flat": "fixed:"}[self.kind]
        return prefix + self.hash.to_nix_string()

    def __str__(self) -> str:
        return self.to_nix_string()

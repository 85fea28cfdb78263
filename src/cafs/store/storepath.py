"""Store paths: ``/nix/store/<nixbase32 of 20 bytes>-<name>``, and how Nix computes them.

The digest part is what Nix looks a path up by (a narinfo is
``<nixbase32>.narinfo``); the name is for people, restricted to a small
alphabet so a store path is safe in any shell or URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cafs.errors import HashFormatError, StorePathError
from cafs.store import nixbase32
from cafs.store.hashes import CAHash

STORE_DIR = "/nix/store"
DIGEST_SIZE = 20
ENCODED_DIGEST_SIZE = nixbase32.encoded_length(DIGEST_SIZE)  # 32
MAX_NAME_LENGTH = 211
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-_?=.")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the name part of a store path, or None."""
    if not name:
        return "the name is empty"
    if len(name.encode()) > MAX_NAME_LENGTH:
        return f"the name is {len(name.encode())} bytes long, the limit is {MAX_NAME_LENGTH}"
    for position, char in enumerate(name):
        if char not in NAME_CHARS:
            return f"character {char!r} at position {position} is not allowed in a name"
    return None


@dataclass(frozen=True, slots=True)
class StorePath:
    """A store path, kept as its 20-byte digest and its name."""

    digest: bytes
    name: str

    def __post_init__(self) -> None:
        if len(self.digest) != DIGEST_SIZE:
            raise StorePathError(
                f"a store path digest is {DIGEST_SIZE} bytes, got {len(self.digest)}"
            )
        problem = name_problem(self.name)
        if problem is not None:
            raise StorePathError(f"invalid store path name {self.name!r}: {problem}")

    @classmethod
    def from_basename(cls, basename: str | bytes) -> StorePath:
        """Parse ``<hash>-<name>``; the absolute form is refused."""
        if isinstance(basename, bytes):
            try:
                basename = basename.decode()
            except UnicodeDecodeError as exc:
                raise StorePathError(f"invalid store path {basename!r}: not UTF-8") from exc
        if len(basename) < ENCODED_DIGEST_SIZE + 2:
            raise StorePathError(
                f"invalid store path {basename!r}: too short, a store path basename is "
                f"a {ENCODED_DIGEST_SIZE}-character hash, '-' and a name"
            )
        try:
            digest = nixbase32.decode_fixed(basename[:ENCODED_DIGEST_SIZE], DIGEST_SIZE)
        except HashFormatError as exc:
            raise StorePathError(f"invalid store path {basename!r}: bad hash part: {exc}") from exc
        if basename[ENCODED_DIGEST_SIZE] != "-":
            raise StorePathError(
                f"invalid store path {basename!r}: expected '-' after the hash part"
            )
        return cls(digest, basename[ENCODED_DIGEST_SIZE + 1 :])

    @classmethod
    def from_absolute(cls, path: str | bytes) -> StorePath:
        """Parse ``/nix/store/<hash>-<name>``."""
        store_path, rest = cls.from_absolute_full(path)
        text = path.decode(errors="surrogateescape") if isinstance(path, bytes) else path
        if rest or text.endswith("/"):
            raise StorePathError(f"invalid store path {path!r}: a path below a store path")
        return store_path

    @classmethod
    def from_absolute_full(cls, path: str | bytes) -> tuple[StorePath, str]:
        """Split ``/nix/store/<hash>-<name>/sub/path`` into the store path and ``sub/path``."""
        if isinstance(path, bytes):
            path = path.decode(errors="surrogateescape")
        prefix = STORE_DIR + "/"
        if not path.startswith(prefix):
            raise StorePathError(f"invalid store path {path!r}: not in {STORE_DIR}")
        basename, _, rest = path[len(prefix) :].partition("/")
        return cls.from_basename(basename), rest

    @classmethod
    def parse(cls, text: str) -> StorePath:
        """An absolute store path or a basename, whichever ``text`` is."""
        if text.startswith("/"):
            return cls.from_absolute(text.rstrip("/") if text != "/" else text)
        return cls.from_basename(text)

    @property
    def hash_part(self) -> str:
        return nixbase32.encode(self.digest)

    @property
    def basename(self) -> str:
        return f"{self.hash_part}-{self.name}"

    @property
    def absolute(self) -> str:
        return f"{STORE_DIR}/{self.basename}"

    def __str__(self) -> str:
        return self.absolute

    def __lt__(self, other: StorePath) -> bool:
        # Nix orders store paths as strings, which is nixbase32 order.
        return (self.hash_part, self.name) < (other.hash_part, other.name)

    def __le__(self, other: StorePath) -> bool:
        return self == other or self < other

    def __gt__(self, other: StorePath) -> bool:
        return other < self

    def __ge__(self, other: StorePath) -> bool:
        return self == other or other < self


def compress_hash(digest: bytes, size: int) -> bytes:
    """Fold ``digest`` to ``size`` bytes by XOR, as Nix shortens sha256 to 20 bytes."""
    out = bytearray(size)
    for i, byte in enumerate(digest):
        out[i % size] ^= byte
    return bytes(out)


def make_store_path(kind: str, inner_sha256: bytes, name: str) -> StorePath:
    """The store path of fingerprint ``<kind>:sha256:<hex>:/nix/store:<name>``."""
    problem = name_problem(name)
    if problem is not None:
        raise StorePathError(f"invalid store path name {name!r}: {problem}")
    fingerprint = f"{kind}:sha256:{inner_sha256.hex()}:{STORE_DIR}:{name}"
    return StorePath(compress_hash(hashlib.sha256(fingerprint.encode()).digest(), 20), name)


def _with_references(kind: str, references: Iterable[StorePath], self_reference: bool) -> str:
    # Nix keeps references in a sorted set of absolute paths.
    parts = [kind, *sorted({ref.absolute for ref in references})]
    if self_reference:
        parts.append("self")
    return ":".join(parts)


def text_store_path(name: str, content: bytes, references: Iterable[StorePath] = ()) -> StorePath:
    """Where ``builtins.toFile``/``text`` content lands."""
    kind = _with_references("text", references, False)
    return make_store_path(kind, hashlib.sha256(content).digest(), name)


def ca_store_path(
    name: str,
    ca: CAHash,
    references: Iterable[StorePath] = (),
    self_reference: bool = False,
) -> StorePath:
    """The store path of content-addressed contents, as ``nix-store --add`` computes it."""
    references = list(references)
    if ca.kind == "text":
        if self_reference:
            raise StorePathError("a text store path cannot refer to itself")
        kind = _with_references("text", references, False)
        return make_store_path(kind, ca.hash.digest, name)
    if ca.kind == "nar" and ca.hash.algo == "sha256":
        kind = _with_references("source", references, self_reference)
        return make_store_path(kind, ca.hash.digest, name)
    if references or self_reference:
        raise StorePathError(
            f"a fixed-output path with {ca.hash.algo} content address cannot have references"
        )
    method = "r:" if ca.kind == "nar" else ""
    inner = f"fixed:out:{method}{ca.hash.algo}:{ca.hash.digest.hex()}:"
    return make_store_path("output:out", hashlib.sha256(inner.encode()).digest(), name)

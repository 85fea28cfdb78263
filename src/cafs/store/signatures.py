"""Nix's Ed25519 keys and signatures in their ``name:base64`` text form.

A binary cache signs the fingerprint of a path (see ``narinfo.fingerprint``);
the name before the colon tells a client which of its trusted keys to try.
Public keys look like ``cache.nixos.org-1:<base64 of 32 bytes>``, signatures
like ``cache.nixos.org-1:<base64 of 64 bytes>``, and the secret key files that
``nix-store --generate-binary-cache-key`` writes hold
``name:<base64 of secret seed ‖ public key>``.

Verification is strict in the sense of ed25519-dalek's ``verify_strict``,
which tvix uses: besides what OpenSSL checks, a public key or signature point
of small order is refused, so a signature cannot be valid for every message
or under several keys.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from cafs.errors import SignatureError

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
SECRET_KEY_SIZE = 32


def _b64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a key or signature, or None.

    Allowed are Unicode letters and digits (``str.isalnum``), ``-`` and ``.``,
    close to Rust's ``char::is_alphanumeric`` that tvix uses.
    """
    if not name:
        return "the name is empty"
    for position, char in enumerate(name):
        if not (char.isalnum() or char in "-."):
            return f"character {char!r} at position {position} is not allowed in a key name"
    return None


def _split(text: str, what: str) -> tuple[str, str]:
    """``name`` and ``base64`` of ``name:base64``; ``text`` may be shown in errors."""
    name, colon, encoded = text.partition(":")
    if not colon:
        raise SignatureError(f"invalid {what} {text!r}: expected 'name:base64'")
    problem = name_problem(name)
    if problem is not None:
        raise SignatureError(f"invalid {what} name {name!r}: {problem}")
    return name, encoded


def _decode(encoded: str, size: int, what: str, shown: str) -> bytes:
    """The ``size`` bytes of padded base64 ``encoded``, refusing any other spelling.

    Requiring the canonical encoding keeps ``parse`` and ``to_nix_string``
    exact inverses. ``shown`` is what errors may quote (never a secret).
    """
    expected = _b64_length(size)
    if len(encoded) != expected:
        raise SignatureError(
            f"invalid {what} {shown}: the base64 part is {len(encoded)} characters, "
            f"expected {expected} ({size} bytes)"
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"invalid {what} {shown}: bad base64") from exc
    if len(data) != size or base64.b64encode(data).decode() != encoded:
        raise SignatureError(f"invalid {what} {shown}: bad base64")
    return data


def _as_bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


# --- small-order point detection (the part of verify_strict OpenSSL lacks) ---------------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493  # the order of the base point
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_Point = tuple[int, int]


def _decompress(encoded: bytes) -> _Point | None:
    """The affine point of a 32-byte encoding, or None when it is not on the curve."""
    y = int.from_bytes(encoded, "little")
    sign = y >> 255
    y = (y & ((1 << 255) - 1)) % _P
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx == (-u) % _P and u != 0:
        x = x * _SQRT_M1 % _P
    elif vxx != u:
        return None
    if x & 1 != sign:
        x = (_P - x) % _P
    return x, y


def _has_small_order(point: _Point) -> bool:
    """Whether 8·point is the neutral element, by three projective doublings."""
    x, y = point
    z = 1
    for _ in range(3):
        # Doubling on -x² + y² = 1 + d·x²·y² in projective coordinates (no inversions).
        b = (x + y) * (x + y) % _P
        c = x * x % _P
        d = y * y % _P
        f = (d - c) % _P
        j = (f - 2 * z * z) % _P
        x, y, z = (b - c - d) * j % _P, -f * (c + d) % _P, f * j % _P
    return x == 0 and y == z


@functools.lru_cache(maxsize=256)
def _weak_public_key(key: bytes) -> bool:
    point = _decompress(key)
    return point is None or _has_small_order(point)


# --- signatures -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    """A named Ed25519 signature, as on a narinfo ``Sig:`` line."""

    name: str
    data: bytes

    def __post_init__(self) -> None:
        problem = name_problem(self.name)
        if problem is not None:
            raise SignatureError(f"invalid signature name {self.name!r}: {problem}")
        if len(self.data) != SIGNATURE_SIZE:
            raise SignatureError(f"a signature is {SIGNATURE_SIZE} bytes, got {len(self.data)}")

    @classmethod
    def parse(cls, text: str) -> Signature:
        """``name:base64``; the base64 part must be 88 characters (64 bytes, padded)."""
        name, encoded = _split(text, "signature")
        return cls(name, _decode(encoded, SIGNATURE_SIZE, "signature", repr(text)))

    def to_nix_string(self) -> str:
        return f"{self.name}:{base64.b64encode(self.data).decode()}"

    def verify(self, fingerprint: str | bytes, key: VerifyingKey) -> bool:
        """Whether ``key`` made this signature over ``fingerprint``; the names are not compared."""
        return key.verify_bytes(fingerprint, self.data)

    def __str__(self) -> str:
        return self.to_nix_string()


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A named Ed25519 public key, as in Nix's ``trusted-public-keys``."""

    name: str
    key: bytes

    def __post_init__(self) -> None:
        problem = name_problem(self.name)
        if problem is not None:
            raise SignatureError(f"invalid public key name {self.name!r}: {problem}")
        if len(self.key) != PUBLIC_KEY_SIZE:
            raise SignatureError(f"a public key is {PUBLIC_KEY_SIZE} bytes, got {len(self.key)}")
        if _decompress(self.key) is None:
            raise SignatureError(f"public key {self.name!r} is not a point on Ed25519")

    @classmethod
    def parse(cls, text: str) -> VerifyingKey:
        """``name:base64``; the base64 part must be 44 characters (32 bytes, padded)."""
        name, encoded = _split(text, "public key")
        return cls(name, _decode(encoded, PUBLIC_KEY_SIZE, "public key", repr(text)))

    def to_nix_string(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def verify(self, fingerprint: str | bytes, signature: Signature) -> bool:
        """Whether ``signature`` carries this key's name and is valid over ``fingerprint``.

        The name check is what lets a client hold several keys: a signature
        only counts for the key it says made it.
        """
        return signature.name == self.name and self.verify_bytes(fingerprint, signature.data)

    def verify_bytes(self, message: str | bytes, signature: bytes) -> bool:
        """Whether the 64 bytes ``signature`` are valid over ``message``, names aside."""
        if len(signature) != SIGNATURE_SIZE or _weak_public_key(self.key):
            return False
        if int.from_bytes(signature[32:], "little") >= _L:
            return False
        r_point = _decompress(signature[:32])
        if r_point is None or _has_small_order(r_point):
            return False
        try:
            # OpenSSL compares R byte for byte, so a non-canonical R fails here.
            Ed25519PublicKey.from_public_bytes(self.key).verify(signature, _as_bytes(message))
        except InvalidSignature:
            return False
        return True

    def __str__(self) -> str:
        return self.to_nix_string()


class SigningKey:
    """A named Ed25519 secret key that signs narinfo fingerprints.

    Not a dataclass so that neither ``repr`` nor errors ever show the secret.
    """

    __slots__ = ("_name", "_private", "_verifying_key")

    def __init__(self, name: str, secret: bytes) -> None:
        """``secret`` is the 32-byte seed (the first half of Nix's secret key)."""
        problem = name_problem(name)
        if problem is not None:
            raise SignatureError(f"invalid secret key name {name!r}: {problem}")
        if len(secret) != SECRET_KEY_SIZE:
            raise SignatureError(f"a secret key seed is {SECRET_KEY_SIZE} bytes, got {len(secret)}")
        self._name = name
        self._private = Ed25519PrivateKey.from_private_bytes(secret)
        public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._verifying_key = VerifyingKey(name, public)

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """Nix's secret key text ``name:base64(seed ‖ public)``, surrounding whitespace ignored.

        The public half is checked against the seed, so a key file pasted
        together from two keys is refused instead of signing with a key
        nobody trusts.
        """
        text = text.strip()
        name, colon, encoded = text.partition(":")
        if not colon:
            raise SignatureError("invalid secret key: expected 'name:base64'")
        problem = name_problem(name)
        if problem is not None:
            raise SignatureError(f"invalid secret key name {name!r}: {problem}")
        data = _decode(encoded, SECRET_KEY_SIZE + PUBLIC_KEY_SIZE, "secret key", f"named {name!r}")
        key = cls(name, data[:SECRET_KEY_SIZE])
        if key.verifying_key.key != data[SECRET_KEY_SIZE:]:
            raise SignatureError(
                f"invalid secret key named {name!r}: its public half does not match the secret"
            )
        return key

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        """A fresh random key, like ``nix-store --generate-binary-cache-key``."""
        private = Ed25519PrivateKey.generate()
        return cls(name, private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @property
    def name(self) -> str:
        return self._name

    @property
    def verifying_key(self) -> VerifyingKey:
        return self._verifying_key

    def sign(self, fingerprint: str | bytes) -> Signature:
        """The signature over ``fingerprint`` (deterministic, as Ed25519 is)."""
        return Signature(self._name, self._private.sign(_as_bytes(fingerprint)))

    def to_nix_string(self) -> str:
        """The secret key text Nix reads; keep it secret."""
        seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = base64.b64encode(seed + self._verifying_key.key).decode()
        return f"{self._name}:{encoded}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return self.to_nix_string() == other.to_nix_string()

    def __hash__(self) -> int:
        return hash(self._verifying_key)

    def __repr__(self) -> str:
        return f"SigningKey(name={self._name!r}, public={self._verifying_key.to_nix_string()!r})"


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Read a secret key file as written by ``nix-store --generate-binary-cache-key``."""
    with open(path, encoding="utf-8") as file:
        text = file.read()
    try:
        return SigningKey.parse(text)
    except SignatureError as exc:
        raise SignatureError(f"{os.fspath(path)}: {exc}") from exc

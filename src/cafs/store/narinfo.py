"""Narinfo files: what a Nix binary cache says about one store path.

The text is one ``Key: value`` line per field. Parsing follows tvix's
nix-compat rules; rendering puts the fields back in Nix's order and, through
``NarInfoFlag``, in the spelling the input used, so that parse-then-render
gives back the same bytes for everything Nix and cache.nixos.org write.
Only the fingerprint (path, NAR hash and size, references) is signed; the
rest (URL, compression, file hash) is cache bookkeeping a client cannot trust.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cafs.errors import HashFormatError, NarInfoError, SignatureError, StorePathError
from cafs.store import nixbase32
from cafs.store.hashes import CAHash, NixHash
from cafs.store.signatures import Signature, SigningKey, VerifyingKey
from cafs.store.storepath import STORE_DIR, StorePath

_SIZE = re.compile(r"0|[1-9][0-9]*")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_SIZE = 2**64 - 1
_REQUIRED = ("StorePath", "URL", "NarHash", "NarSize", "References")
_SINGLE = frozenset(
    {*_REQUIRED, "Compression", "FileHash", "FileSize", "Deriver", "System", "CA"}
)  # every known key but Sig, which repeats


class NarInfoFlag(enum.Flag):
    """Quirks of the parsed text, kept so ``render`` can reproduce it."""

    #: Lines with keys this parser does not know were dropped (render cannot restore them).
    UNKNOWN_FIELDS = enum.auto()
    #: There was no Compression line; Nix then assumes bzip2, and so does ``compression``.
    COMPRESSION_DEFAULT = enum.auto()
    #: The References were not in strictly ascending order (old cache.nixos.org entries).
    REFERENCES_OUT_OF_ORDER = enum.auto()
    #: NarHash was written as 64 hex digits instead of nixbase32.
    NAR_HASH_HEX = enum.auto()


NO_FLAGS = NarInfoFlag(0)


def fingerprint(
    store_path: StorePath,
    nar_sha256: bytes,
    nar_size: int,
    references: Iterable[StorePath],
) -> str:
    """The text a binary cache signs for a path.

    References are joined in the order given: the narinfo's own order is
    what cache.nixos.org signed, even where that order is not sorted.
    """
    if len(nar_sha256) != 32:
        raise NarInfoError(f"a NAR sha256 digest is 32 bytes, got {len(nar_sha256)}")
    refs = ",".join(ref.absolute for ref in references)
    return f"1;{store_path.absolute};sha256:{nixbase32.encode(nar_sha256)};{nar_size};{refs}"


def _check_text(field_name: str, value: str) -> None:
    if not value:
        raise NarInfoError(f"narinfo field {field_name} may not be empty")
    if "\n" in value or "\r" in value:
        raise NarInfoError(f"narinfo field {field_name} may not contain a line break")


def _check_size(field_name: str, value: int) -> None:
    if not 0 <= value <= _MAX_SIZE:
        raise NarInfoError(f"narinfo field {field_name} must fit in 64 bits, got {value}")


@dataclass(kw_only=True)
class NarInfo:
    """The fields of a narinfo file, with Nix's types.

    ``deriver`` is the store path of the ``.drv`` file exactly as the narinfo
    line names it, so its name ends in ``.drv``. (The PathInfo proto stores
    the deriver's name without that suffix; converting is the PathInfo
    layer's job.)
    """

    store_path: StorePath
    url: str
    #: None stands for ``Compression: none``.
    compression: str | None = None
    file_hash: NixHash | None = None
    file_size: int | None = None
    nar_hash: NixHash
    nar_size: int
    references: list[StorePath] = field(default_factory=list)
    deriver: StorePath | None = None
    system: str | None = None
    signatures: list[Signature] = field(default_factory=list)
    ca: CAHash | None = None
    flags: NarInfoFlag = NO_FLAGS

    def __post_init__(self) -> None:
        _check_text("URL", self.url)
        if self.compression is not None:
            _check_text("Compression", self.compression)
            if self.compression == "none":
                raise NarInfoError("write compression=None rather than 'none'")
        if self.file_hash is not None and self.file_hash.algo != "sha256":
            raise NarInfoError(f"FileHash must be sha256, got {self.file_hash.algo}")
        if self.file_size is not None:
            _check_size("FileSize", self.file_size)
        if self.nar_hash.algo != "sha256":
            raise NarInfoError(f"NarHash must be sha256, got {self.nar_hash.algo}")
        _check_size("NarSize", self.nar_size)
        if self.deriver is not None and not self.deriver.name.endswith(".drv"):
            raise NarInfoError(f"Deriver {self.deriver.basename!r} must end in '.drv'")
        if self.system is not None:
            _check_text("System", self.system)

    @classmethod
    def parse(cls, text: str) -> NarInfo:
        """Parse narinfo text; raises NarInfoError naming the line or field at fault.

        Lines end in ``\\n`` (a ``\\r`` before it is dropped, the final newline
        is optional). Each line is ``Key: value``; the value starts after
        exactly one space, so an empty reference list is ``References: ``.
        """
        return _Parser().parse(text)

    def render(self) -> str:
        """The narinfo text, fields in Nix's order, each line ending in ``\\n``."""
        lines = [f"StorePath: {self.store_path.absolute}", f"URL: {self.url}"]
        if not (NarInfoFlag.COMPRESSION_DEFAULT in self.flags and self.compression == "bzip2"):
            lines.append(f"Compression: {self.compression or 'none'}")
        if self.file_hash is not None:
            lines.append(f"FileHash: {self.file_hash.to_nix_string()}")
        if self.file_size is not None:
            lines.append(f"FileSize: {self.file_size}")
        if NarInfoFlag.NAR_HASH_HEX in self.flags:
            lines.append(f"NarHash: sha256:{self.nar_hash.digest.hex()}")
        else:
            lines.append(f"NarHash: {self.nar_hash.to_nix_string()}")
        lines.append(f"NarSize: {self.nar_size}")
        lines.append("References: " + " ".join(ref.basename for ref in self.references))
        if self.deriver is not None:
            lines.append(f"Deriver: {self.deriver.basename}")
        if self.system is not None:
            lines.append(f"System: {self.system}")
        lines.extend(f"Sig: {sig.to_nix_string()}" for sig in self.signatures)
        if self.ca is not None:
            lines.append(f"CA: {self.ca.to_nix_string()}")
        return "".join(line + "\n" for line in lines)

    def __str__(self) -> str:
        return self.render()

    def fingerprint(self) -> str:
        """The text the ``Sig`` lines sign."""
        return fingerprint(self.store_path, self.nar_hash.digest, self.nar_size, self.references)

    def sign(self, key: SigningKey) -> Signature:
        """Sign the fingerprint with ``key`` and append the signature."""
        signature = key.sign(self.fingerprint())
        self.signatures.append(signature)
        return signature

    def verify(self, keys: Iterable[VerifyingKey]) -> bool:
        """Whether at least one signature is valid under a key of the same name.

        This is the check a Nix client applies with its ``trusted-public-keys``.
        """
        by_name: dict[str, list[VerifyingKey]] = {}
        for key in keys:
            by_name.setdefault(key.name, []).append(key)
        message = self.fingerprint().encode()
        return any(
            key.verify(message, sig) for sig in self.signatures for key in by_name.get(sig.name, ())
        )


class _Parser:
    """One parse of one narinfo text; holds the fields seen so far."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.flags = NO_FLAGS
        self.store_path: StorePath | None = None
        self.url: str | None = None
        self.compression: str | None = None
        self.file_hash: NixHash | None = None
        self.file_size: int | None = None
        self.nar_hash: NixHash | None = None
        self.nar_size: int | None = None
        self.references: list[StorePath] | None = None
        self.deriver: StorePath | None = None
        self.system: str | None = None
        self.signatures: list[Signature] = []
        self.ca: CAHash | None = None

    def parse(self, text: str) -> NarInfo:
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        for number, line in enumerate(lines, start=1):
            where = f"narinfo line {number}"
            key, value = self._split(where, line.removesuffix("\r"))
            where = f"{where} ({key})"
            if key in self.seen and key in _SINGLE:
                raise NarInfoError(f"{where}: duplicate field {key}")
            self.seen.add(key)
            try:
                self._field(key, value)
            except (HashFormatError, StorePathError, SignatureError, NarInfoError) as exc:
                raise NarInfoError(f"{where}: {exc}") from exc
        missing = [key for key in _REQUIRED if key not in self.seen]
        if (
            missing
            or self.store_path is None
            or self.url is None
            or self.nar_hash is None
            or self.nar_size is None
            or self.references is None
        ):
            raise NarInfoError(f"narinfo is missing required field(s): {', '.join(missing)}")
        compression: str | None = self.compression
        if compression is None:
            self.flags |= NarInfoFlag.COMPRESSION_DEFAULT
            compression = "bzip2"
        elif compression == "none":
            compression = None
        return NarInfo(
            store_path=self.store_path,
            url=self.url,
            compression=compression,
            file_hash=self.file_hash,
            file_size=self.file_size,
            nar_hash=self.nar_hash,
            nar_size=self.nar_size,
            references=self.references,
            deriver=self.deriver,
            system=self.system,
            signatures=self.signatures,
            ca=self.ca,
            flags=self.flags,
        )

    @staticmethod
    def _split(where: str, line: str) -> tuple[str, str]:
        key, colon, rest = line.partition(":")
        if not colon:
            raise NarInfoError(f"{where}: expected 'Key: value', got {line!r}")
        if not rest.startswith(" "):
            raise NarInfoError(f"{where} ({key}): expected a space after the colon, got {line!r}")
        return key, rest[1:]

    def _field(self, key: str, value: str) -> None:
        match key:
            case "StorePath":
                self.store_path = _store_path(value)
            case "URL":
                self.url = _text(value)
            case "Compression":
                self.compression = _text(value)
            case "FileHash":
                self.file_hash = _file_hash(value)
            case "FileSize":
                self.file_size = _size(value)
            case "NarHash":
                self.nar_hash, hex_form = _nar_hash(value)
                if hex_form:
                    self.flags |= NarInfoFlag.NAR_HASH_HEX
            case "NarSize":
                self.nar_size = _size(value)
            case "References":
                self.references, in_order = _references(value)
                if not in_order:
                    self.flags |= NarInfoFlag.REFERENCES_OUT_OF_ORDER
            case "Deriver":
                self.deriver = _deriver(value)
            case "System":
                self.system = _text(value)
            case "Sig":
                try:
                    self.signatures.append(Signature.parse(value))
                except SignatureError as exc:
                    raise NarInfoError(f"signature #{len(self.signatures)}: {exc}") from exc
            case "CA":
                self.ca = _ca(value)
            case _:
                self.flags |= NarInfoFlag.UNKNOWN_FIELDS


def _store_path(value: str) -> StorePath:
    prefix = STORE_DIR + "/"
    if not value.startswith(prefix):
        raise NarInfoError(f"expected an absolute path in {STORE_DIR}, got {value!r}")
    return StorePath.from_basename(value[len(prefix) :])


def _text(value: str) -> str:
    if not value:
        raise NarInfoError("the value may not be empty")
    if "\r" in value:
        raise NarInfoError(f"the value may not contain a carriage return: {value!r}")
    return value


def _size(value: str) -> int:
    if not _SIZE.fullmatch(value) or int(value) > _MAX_SIZE:
        raise NarInfoError(f"expected a size (a 64-bit decimal number), got {value!r}")
    return int(value)


def _file_hash(value: str) -> NixHash:
    if not value.startswith("sha256:"):
        raise NarInfoError(f"expected 'sha256:<nixbase32>', got {value!r}")
    return NixHash("sha256", nixbase32.decode_fixed(value[len("sha256:") :], 32))


def _nar_hash(value: str) -> tuple[NixHash, bool]:
    """The hash, and whether it was written in hex."""
    if not value.startswith("sha256:"):
        raise NarInfoError(f"expected 'sha256:<nixbase32 or hex>', got {value!r}")
    encoded = value[len("sha256:") :]
    if len(encoded) == 64:
        if not _HEX_SHA256.fullmatch(encoded):
            raise NarInfoError(f"invalid lowercase hex sha256 {encoded!r}")
        return NixHash("sha256", bytes.fromhex(encoded)), True
    return NixHash("sha256", nixbase32.decode_fixed(encoded, 32)), False


def _references(value: str) -> tuple[list[StorePath], bool]:
    """The references, and whether they were strictly ascending (as Nix writes them)."""
    if not value:
        return [], True
    references = []
    in_order = True
    previous = ""
    for index, basename in enumerate(value.split(" ")):
        if previous >= basename:
            in_order = False
        previous = basename
        try:
            references.append(StorePath.from_basename(basename))
        except StorePathError as exc:
            raise NarInfoError(f"reference #{index}: {exc}") from exc
    return references, in_order


def _deriver(value: str) -> StorePath:
    deriver = StorePath.from_basename(value)
    if not deriver.name.endswith(".drv"):
        raise NarInfoError(f"the deriver {value!r} must end in '.drv'")
    return deriver


def _ca(value: str) -> CAHash:
    ca = CAHash.parse(value)
    if ca.to_nix_string() != value:
        raise NarInfoError(
            f"expected 'text:sha256:…' or 'fixed:[r:]<algo>:…' in nixbase32, got {value!r}"
        )
    return ca

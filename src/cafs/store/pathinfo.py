"""PathInfo: what the store knows about one store path, and its tvix wire form.

A PathInfo ties a store path to the castore node holding its contents, plus
the Nix facts a binary cache serves in a narinfo (NAR hash and size,
references, signatures, deriver, content address).

Deriver convention: the model keeps the deriver as the real ``.drv`` store
path (``<hash>-foo.drv``), so rendering a narinfo ``Deriver:`` line needs no
fix-up. The ``tvix.store.v1`` message stores the name without ``.drv``; the
suffix is added in :meth:`PathInfo.from_proto` and removed in
:meth:`PathInfo.to_proto`, and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cafs.castore.nodes import Node, display_name, node_from_proto, node_to_proto
from cafs.errors import PathInfoValidationError, SignatureError, StorePathError, ValidationError
from cafs.gen.tvix.store.v1 import pathinfo_pb2
from cafs.store import narinfo, nixbase32
from cafs.store.hashes import DIGEST_SIZES, CAHash, CAKind, HashAlgo, NixHash
from cafs.store.signatures import Signature
from cafs.store.storepath import DIGEST_SIZE, StorePath

NAR_SHA256_SIZE = 32
SIGNATURE_SIZE = 64
DRV_SUFFIX = ".drv"
U64_MAX = (1 << 64) - 1

_CA_PROTO = pathinfo_pb2.NARInfo.CA
# The NARInfo.CA.Hash enum, as (kind, algo) pairs; the numbers are wire format.
CA_KINDS: dict[int, tuple[CAKind, HashAlgo]] = {
    _CA_PROTO.NAR_SHA256: ("nar", "sha256"),
    _CA_PROTO.NAR_SHA1: ("nar", "sha1"),
    _CA_PROTO.NAR_SHA512: ("nar", "sha512"),
    _CA_PROTO.NAR_MD5: ("nar", "md5"),
    _CA_PROTO.TEXT_SHA256: ("text", "sha256"),
    _CA_PROTO.FLAT_SHA1: ("flat", "sha1"),
    _CA_PROTO.FLAT_MD5: ("flat", "md5"),
    _CA_PROTO.FLAT_SHA256: ("flat", "sha256"),
    _CA_PROTO.FLAT_SHA512: ("flat", "sha512"),
}
CA_ENUM: dict[tuple[CAKind, HashAlgo], int] = {pair: number for number, pair in CA_KINDS.items()}


def _invalid(reason: str) -> PathInfoValidationError:
    return PathInfoValidationError(f"invalid path info: {reason}")


@dataclass(frozen=True, slots=True)
class PathInfo:
    """One store path with its root node and narinfo facts.

    ``deriver``, when set, is the ``.drv`` store path itself (see the module
    docstring for how that maps to the wire).
    """

    store_path: StorePath
    node: Node
    references: tuple[StorePath, ...]
    nar_size: int
    nar_sha256: bytes
    signatures: tuple[Signature, ...] = ()
    deriver: StorePath | None = None
    ca: CAHash | None = None

    def __post_init__(self) -> None:
        # Only the rules the wire form cannot express otherwise; the rest is
        # guaranteed by the field types (StorePath, Node, CAHash validate themselves).
        if len(self.nar_sha256) != NAR_SHA256_SIZE:
            raise _invalid(
                f"nar_sha256 must be {NAR_SHA256_SIZE} bytes, got {len(self.nar_sha256)}"
            )
        if not 0 <= self.nar_size <= U64_MAX:
            raise _invalid(f"nar_size {self.nar_size} does not fit in 64 bits")
        if self.deriver is not None and not self.deriver.name.endswith(DRV_SUFFIX):
            raise _invalid(f"deriver {self.deriver.basename!r} does not end in {DRV_SUFFIX!r}")
        for index, signature in enumerate(self.signatures):
            if len(signature.data) != SIGNATURE_SIZE:
                raise _invalid(
                    f"signature {index} is {len(signature.data)} bytes, expected {SIGNATURE_SIZE}"
                )

    # --- wire form -------------------------------------------------------------

    @classmethod
    def from_proto(cls, msg: pathinfo_pb2.PathInfo) -> PathInfo:
        """Validate a message in the order tvix does, so the first error reported matches."""
        if not msg.HasField("narinfo"):
            raise _invalid("the narinfo field is missing")
        info = msg.narinfo

        for index, digest in enumerate(msg.references):
            if len(digest) != DIGEST_SIZE:
                raise _invalid(
                    f"reference {index} has a digest of {len(digest)} bytes, expected {DIGEST_SIZE}"
                )
        if len(info.reference_names) != len(msg.references):
            raise _invalid(
                f"{len(msg.references)} reference digest(s) but {len(info.reference_names)} "
                "reference name(s)"
            )
        references: list[StorePath] = []
        for index, (digest, name) in enumerate(
            zip(msg.references, info.reference_names, strict=True)
        ):
            try:
                reference = StorePath.from_basename(name)
            except StorePathError as exc:
                raise _invalid(
                    f"reference name {index} ({name!r}) is not a store path basename: {exc}"
                ) from exc
            if reference.digest != digest:
                raise _invalid(
                    f"reference name {index} ({name!r}) has digest {reference.digest.hex()}, "
                    f"but reference {index} is {bytes(digest).hex()}"
                )
            references.append(reference)

        if not msg.HasField("node"):
            raise _invalid("no root node is present")
        try:
            node_name, node = node_from_proto(msg.node)
        except ValidationError as exc:
            raise _invalid(f"invalid root node: {exc}") from exc
        try:
            store_path = StorePath.from_basename(node_name)
        except StorePathError as exc:
            raise _invalid(
                f"root node name {display_name(node_name)!r} is not a store path basename: {exc}"
            ) from exc

        if len(info.nar_sha256) != NAR_SHA256_SIZE:
            raise _invalid(
                f"nar_sha256 must be {NAR_SHA256_SIZE} bytes, got {len(info.nar_sha256)}"
            )

        deriver = None
        if info.HasField("deriver"):
            deriver = _deriver_from_proto(info.deriver)

        signatures: list[Signature] = []
        for index, sig in enumerate(info.signatures):
            if len(sig.data) != SIGNATURE_SIZE:
                raise _invalid(
                    f"signature {index} is {len(sig.data)} bytes, expected {SIGNATURE_SIZE}"
                )
            # Stricter than tvix, which leaves names unchecked: a name Nix could
            # not read back from a ``Sig:`` line is refused here.
            try:
                signatures.append(Signature(sig.name, sig.data))
            except SignatureError as exc:
                raise _invalid(f"signature {index}: {exc}") from exc

        ca = _ca_from_proto(info.ca) if info.HasField("ca") else None

        return cls(
            store_path=store_path,
            node=node,
            references=tuple(references),
            nar_size=info.nar_size,
            nar_sha256=bytes(info.nar_sha256),
            signatures=tuple(signatures),
            deriver=deriver,
            ca=ca,
        )

    def to_proto(self) -> pathinfo_pb2.PathInfo:
        msg = pathinfo_pb2.PathInfo(
            node=node_to_proto(self.store_path.basename.encode(), self.node),
            references=[ref.digest for ref in self.references],
        )
        info = msg.narinfo
        info.nar_size = self.nar_size
        info.nar_sha256 = self.nar_sha256
        for signature in self.signatures:
            info.signatures.add(name=signature.name, data=signature.data)
        info.reference_names.extend(ref.basename for ref in self.references)
        if self.deriver is not None:
            info.deriver.name = self.deriver.name.removesuffix(DRV_SUFFIX)
            info.deriver.digest = self.deriver.digest
        if self.ca is not None:
            info.ca.type = CA_ENUM[(self.ca.kind, self.ca.hash.algo)]  # type: ignore[assignment]
            info.ca.digest = self.ca.hash.digest
        return msg

    @classmethod
    def from_bytes(cls, data: bytes) -> PathInfo:
        try:
            msg = pathinfo_pb2.PathInfo.FromString(data)
        except DecodeError as exc:
            raise _invalid(f"cannot decode the message: {exc}") from exc
        return cls.from_proto(msg)

    def to_bytes(self) -> bytes:
        """The canonical encoding (field order, defaults omitted), as tvix writes it."""
        return self.to_proto().SerializeToString(deterministic=True)

    # --- narinfo -------------------------------------------------------------

    def fingerprint(self) -> str:
        """The string narinfo signatures are made over."""
        return narinfo.fingerprint(self.store_path, self.nar_sha256, self.nar_size, self.references)

    def to_narinfo(self, url: str | None = None) -> narinfo.NarInfo:
        """The narinfo of an uncompressed binary cache serving this path's NAR at ``url``."""
        return narinfo.NarInfo(
            store_path=self.store_path,
            url=url if url is not None else f"nar/{nixbase32.encode(self.nar_sha256)}.nar",
            compression=None,
            nar_hash=NixHash("sha256", self.nar_sha256),
            nar_size=self.nar_size,
            references=list(self.references),
            deriver=self.deriver,
            signatures=list(self.signatures),
            ca=self.ca,
        )

    def with_signature(self, signature: Signature) -> PathInfo:
        """A copy with ``signature`` appended (existing ones are kept, as tvix does)."""
        return dataclasses.replace(self, signatures=(*self.signatures, signature))


def _deriver_from_proto(msg: pathinfo_pb2.StorePath) -> StorePath:
    try:
        bare = StorePath(bytes(msg.digest), msg.name)
    except StorePathError as exc:
        raise _invalid(f"invalid deriver field: {exc}") from exc
    try:
        return StorePath(bare.digest, bare.name + DRV_SUFFIX)
    except StorePathError as exc:
        raise _invalid(
            f"invalid deriver field: {msg.name!r} is too long to carry the {DRV_SUFFIX!r} suffix"
        ) from exc


def _ca_from_proto(msg: pathinfo_pb2.NARInfo.CA) -> CAHash:
    pair = CA_KINDS.get(msg.type)
    if pair is None:
        raise _invalid(f"invalid ca field: unknown hash type {msg.type}")
    kind, algo = pair
    if len(msg.digest) != DIGEST_SIZES[algo]:
        raise _invalid(
            f"invalid ca field: a {algo} digest is {DIGEST_SIZES[algo]} bytes, "
            f"got {len(msg.digest)}"
        )
    return CAHash(kind, NixHash(algo, bytes(msg.digest)))

"""PathInfo: the validation vectors of tvix, the canonical wire form, the CA and deriver mapping."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from cafs.castore.digest import Digest
from cafs.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from cafs.errors import PathInfoValidationError
from cafs.gen.tvix.castore.v1 import castore_pb2
from cafs.gen.tvix.store.v1 import pathinfo_pb2
from cafs.store.hashes import DIGEST_SIZES, CAHash, CAKind, HashAlgo, NixHash
from cafs.store.pathinfo import PathInfo
from cafs.store.signatures import Signature
from cafs.store.storepath import StorePath

DUMMY_NAME = "00000000000000000000000000000000-dummy"
DUMMY_PATH = StorePath(bytes(20), "dummy")

# vectors.md §9: the store fixture PATH_INFO as tvix encodes it.
PATH_INFO_HEX = (
    "0a4c0a4a0a2630303030303030303030303030303030303030303030303030303030303030302d64756d6d79"
    "1220000000000000000000000000000000000000000000000000000000000000000012140000000000000000"
    "0000000000000000000000001a6e122000000000000000000000000000000000000000000000000000000000"
    "00000000222630303030303030303030303030303030303030303030303030303030303030302d64756d6d79"
    "322212200000000000000000000000000000000000000000000000000000000000000000"
)
PATH_INFO = PathInfo(
    store_path=DUMMY_PATH,
    node=DirectoryNode(Digest(bytes(32)), 0),
    references=(DUMMY_PATH,),
    nar_size=0,
    nar_sha256=bytes(32),
    ca=CAHash("nar", NixHash("sha256", bytes(32))),
)

# vectors.md §6: a real signature (64 bytes) to carry around.
SIGNATURE = Signature(
    "cache.nixos.org-1",
    bytes.fromhex(
        "4ec4d36f75864d92a986f61d0475f0a3ac1e5482e64f2b548cb07ebdc5fcf5f3"
        "a38d189c08798a0384423cc54b923e93309e06317dc73d5591743d6191e29905"
    ),
)


def proto_path_info() -> pathinfo_pb2.PathInfo:
    """PROTO_PATH_INFO of the tvix tests, the base every vector mutates."""
    return pathinfo_pb2.PathInfo(
        node=castore_pb2.Node(
            directory=castore_pb2.DirectoryNode(name=DUMMY_NAME.encode(), digest=bytes(32))
        ),
        references=[bytes(20)],
        narinfo=pathinfo_pb2.NARInfo(
            nar_size=0,
            nar_sha256=bytes(32),
            reference_names=[DUMMY_NAME],
            ca=pathinfo_pb2.NARInfo.CA(type=pathinfo_pb2.NARInfo.CA.NAR_SHA256, digest=bytes(32)),
        ),
    )


def test_base_vector_is_valid() -> None:
    assert PathInfo.from_proto(proto_path_info()) == PATH_INFO


def test_deriver_vector_gets_drv_suffix() -> None:
    msg = proto_path_info()
    msg.narinfo.deriver.name = "dummy"
    msg.narinfo.deriver.digest = bytes(20)
    info = PathInfo.from_proto(msg)
    # tvix's DUMMY_PATH on the wire; the model holds the .drv path itself.
    assert info.deriver == StorePath(bytes(20), "dummy.drv")
    assert info.to_proto() == msg


def _node_none(msg: pathinfo_pb2.PathInfo) -> None:
    msg.ClearField("node")


def _node_kind_unset(msg: pathinfo_pb2.PathInfo) -> None:
    msg.node.CopyFrom(castore_pb2.Node())
    msg.node.SetInParent()


def _directory(name: bytes, digest: bytes) -> Callable[[pathinfo_pb2.PathInfo], None]:
    def mutate(msg: pathinfo_pb2.PathInfo) -> None:
        msg.node.CopyFrom(
            castore_pb2.Node(directory=castore_pb2.DirectoryNode(name=name, digest=digest))
        )

    return mutate


def _file(name: bytes, digest: bytes) -> Callable[[pathinfo_pb2.PathInfo], None]:
    def mutate(msg: pathinfo_pb2.PathInfo) -> None:
        msg.node.CopyFrom(castore_pb2.Node(file=castore_pb2.FileNode(name=name, digest=digest)))

    return mutate


def _symlink(name: bytes, target: bytes) -> Callable[[pathinfo_pb2.PathInfo], None]:
    def mutate(msg: pathinfo_pb2.PathInfo) -> None:
        msg.node.CopyFrom(
            castore_pb2.Node(symlink=castore_pb2.SymlinkNode(name=name, target=target))
        )

    return mutate


def _narinfo_none(msg: pathinfo_pb2.PathInfo) -> None:
    msg.ClearField("narinfo")


def _nar_sha256_beef(msg: pathinfo_pb2.PathInfo) -> None:
    msg.narinfo.nar_sha256 = bytes.fromhex("beef")


def _no_reference_names(msg: pathinfo_pb2.PathInfo) -> None:
    del msg.narinfo.reference_names[:]


def _extra_short_reference(msg: pathinfo_pb2.PathInfo) -> None:
    msg.references.append(bytes.fromhex("ffff"))


def _absolute_reference_name(msg: pathinfo_pb2.PathInfo) -> None:
    msg.narinfo.reference_names[0] = "/nix/store/" + DUMMY_NAME


def _reference_digest_mismatch(msg: pathinfo_pb2.PathInfo) -> None:
    msg.references[0] = b"\xff" * 20


def _deriver_without_digest(msg: pathinfo_pb2.PathInfo) -> None:
    msg.narinfo.deriver.name = "foo"
    msg.narinfo.deriver.digest = b""


# vectors.md §8, one row each (the OK row is test_deriver_vector_gets_drv_suffix).
@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        pytest.param(_node_none, "no root node is present", id="NoNodePresent"),
        pytest.param(_node_kind_unset, "invalid root node: .*no node kind", id="NoNodeSet"),
        pytest.param(
            _directory(DUMMY_NAME.encode(), b""),
            "invalid root node: .*invalid digest length 0",
            id="directory-InvalidDigestLen",
        ),
        pytest.param(
            _directory(b"invalid", bytes(32)),
            "root node name 'invalid' is not a store path basename: .*too short",
            id="directory-InvalidNodeName",
        ),
        pytest.param(
            _file(DUMMY_NAME.encode(), b""),
            "invalid root node: .*invalid digest length 0",
            id="file-InvalidDigestLen",
        ),
        pytest.param(
            _file(b"invalid", bytes(32)),
            "root node name 'invalid' is not a store path basename: .*too short",
            id="file-InvalidNodeName",
        ),
        pytest.param(
            _symlink(b"invalid", b"foo"),
            "root node name 'invalid' is not a store path basename: .*too short",
            id="symlink-InvalidNodeName",
        ),
        pytest.param(_narinfo_none, "the narinfo field is missing", id="NarInfoFieldMissing"),
        pytest.param(
            _nar_sha256_beef, "nar_sha256 must be 32 bytes, got 2", id="InvalidNarSha256DigestLen"
        ),
        pytest.param(
            _no_reference_names,
            r"1 reference digest\(s\) but 0 reference name\(s\)",
            id="InconsistentNumberOfReferences",
        ),
        pytest.param(
            _extra_short_reference,
            "reference 1 has a digest of 2 bytes, expected 20",
            id="InvalidReferenceDigestLen",
        ),
        pytest.param(
            _absolute_reference_name,
            "reference name 0 .*/nix/store/.* is not a store path basename",
            id="InvalidNarinfoReferenceName",
        ),
        pytest.param(
            _reference_digest_mismatch,
            f"reference name 0 .* has digest {'00' * 20}, but reference 0 is {'ff' * 20}",
            id="InconsistentNarinfoReferenceNameDigest",
        ),
        pytest.param(
            _deriver_without_digest,
            "invalid deriver field: .*digest is 20 bytes, got 0",
            id="InvalidDeriverField",
        ),
    ],
)
def test_validation_vectors(mutate: Callable[[pathinfo_pb2.PathInfo], None], error: str) -> None:
    msg = proto_path_info()
    mutate(msg)
    with pytest.raises(PathInfoValidationError, match=error):
        PathInfo.from_proto(msg)


def test_checks_run_in_tvix_order() -> None:
    # Each message breaks two rules; the one tvix checks first is reported.
    msg = proto_path_info()
    msg.ClearField("node")
    msg.references[0] = b"\x01"
    with pytest.raises(PathInfoValidationError, match="reference 0 has a digest of 1 bytes"):
        PathInfo.from_proto(msg)

    msg = proto_path_info()
    msg.narinfo.nar_sha256 = b""
    msg.node.directory.name = b"invalid"
    with pytest.raises(PathInfoValidationError, match="root node name"):
        PathInfo.from_proto(msg)

    msg = proto_path_info()
    msg.narinfo.ca.digest = b""
    msg.narinfo.signatures.add(name="k", data=b"short")
    with pytest.raises(PathInfoValidationError, match="signature 0 is 5 bytes"):
        PathInfo.from_proto(msg)


def test_signature_length_checked() -> None:
    msg = proto_path_info()
    msg.narinfo.signatures.add(name="k", data=bytes(63))
    with pytest.raises(PathInfoValidationError, match="signature 0 is 63 bytes, expected 64"):
        PathInfo.from_proto(msg)


def test_signature_name_checked() -> None:
    # Stricter than tvix (it leaves names alone): the name must survive a narinfo Sig line.
    msg = proto_path_info()
    msg.narinfo.signatures.add(name="has space", data=bytes(64))
    with pytest.raises(PathInfoValidationError, match="signature 0: invalid signature name"):
        PathInfo.from_proto(msg)


def test_ca_unknown_enum_and_wrong_digest_length() -> None:
    msg = proto_path_info()
    msg.narinfo.ca.type = 9  # type: ignore[assignment]
    with pytest.raises(PathInfoValidationError, match="unknown hash type 9"):
        PathInfo.from_proto(msg)
    msg = proto_path_info()
    msg.narinfo.ca.type = pathinfo_pb2.NARInfo.CA.FLAT_MD5
    with pytest.raises(PathInfoValidationError, match="md5 digest is 16 bytes, got 32"):
        PathInfo.from_proto(msg)


def test_wire_encoding_matches_tvix() -> None:
    assert PATH_INFO.to_bytes().hex() == PATH_INFO_HEX
    assert PathInfo.from_bytes(bytes.fromhex(PATH_INFO_HEX)) == PATH_INFO


def test_from_bytes_refuses_garbage() -> None:
    with pytest.raises(PathInfoValidationError, match="cannot decode"):
        PathInfo.from_bytes(b"\xff\xff\xff")


def test_unknown_fields_are_dropped() -> None:
    # Field 15, varint 1: a newer peer's extension must not survive re-encoding.
    data = bytes.fromhex(PATH_INFO_HEX) + b"\x78\x01"
    assert PathInfo.from_bytes(data).to_bytes().hex() == PATH_INFO_HEX


CA_VECTORS: list[tuple[int, CAKind, HashAlgo]] = [
    (0, "nar", "sha256"),
    (1, "nar", "sha1"),
    (2, "nar", "sha512"),
    (3, "nar", "md5"),
    (4, "text", "sha256"),
    (5, "flat", "sha1"),
    (6, "flat", "md5"),
    (7, "flat", "sha256"),
    (8, "flat", "sha512"),
]


@pytest.mark.parametrize(("number", "kind", "algo"), CA_VECTORS)
def test_ca_enum_mapping(number: int, kind: CAKind, algo: HashAlgo) -> None:
    digest = bytes(range(DIGEST_SIZES[algo]))
    info = dataclasses.replace(PATH_INFO, ca=CAHash(kind, NixHash(algo, digest)))
    msg = info.to_proto()
    assert msg.narinfo.HasField("ca")
    assert msg.narinfo.ca.type == number
    assert msg.narinfo.ca.digest == digest
    assert PathInfo.from_proto(msg) == info


def test_ca_presence() -> None:
    msg = proto_path_info()
    msg.narinfo.ca.Clear()
    msg.narinfo.ca.digest = bytes(32)  # present, type unset
    assert PathInfo.from_proto(msg).ca == CAHash("nar", NixHash("sha256", bytes(32)))
    msg.narinfo.ClearField("ca")
    assert PathInfo.from_proto(msg).ca is None
    no_ca = dataclasses.replace(PATH_INFO, ca=None)
    assert not no_ca.to_proto().narinfo.HasField("ca")
    assert PathInfo.from_bytes(no_ca.to_bytes()) == no_ca


def test_deriver_round_trip() -> None:
    drv = StorePath.from_basename("2dzpn70c1hawczwhg9aavqk18zp9zsva-gcc-3.4.6.drv")
    info = dataclasses.replace(PATH_INFO, deriver=drv)
    msg = info.to_proto()
    assert msg.narinfo.deriver.name == "gcc-3.4.6"
    assert msg.narinfo.deriver.digest == drv.digest
    assert PathInfo.from_bytes(info.to_bytes()).deriver == drv


def test_deriver_must_be_a_drv() -> None:
    with pytest.raises(PathInfoValidationError, match=r"does not end in '\.drv'"):
        dataclasses.replace(PATH_INFO, deriver=DUMMY_PATH)


def test_deriver_name_too_long_for_suffix() -> None:
    msg = proto_path_info()
    msg.narinfo.deriver.name = "x" * 211  # a valid name, but not once .drv is added
    msg.narinfo.deriver.digest = bytes(20)
    with pytest.raises(PathInfoValidationError, match=r"too long to carry the '\.drv' suffix"):
        PathInfo.from_proto(msg)


def test_signatures_round_trip() -> None:
    other = Signature("test1", bytes(range(64)))
    info = PATH_INFO.with_signature(SIGNATURE).with_signature(other)
    assert info.signatures == (SIGNATURE, other)
    msg = info.to_proto()
    assert [(s.name, s.data) for s in msg.narinfo.signatures] == [
        (SIGNATURE.name, SIGNATURE.data),
        (other.name, other.data),
    ]
    assert PathInfo.from_bytes(info.to_bytes()) == info
    assert PATH_INFO.signatures == ()  # with_signature copies


@pytest.mark.parametrize(
    "node",
    [
        FileNode(Digest(bytes(range(32))), 12, executable=True),
        SymlinkNode(b"/nix/store/somewhereelse"),
        DirectoryNode(Digest(bytes(range(32))), 8),
    ],
)
def test_every_node_kind_round_trips(node: DirectoryNode | FileNode | SymlinkNode) -> None:
    info = dataclasses.replace(PATH_INFO, node=node, references=())
    msg = info.to_proto()
    assert msg.node.WhichOneof("node") in ("file", "symlink", "directory")
    assert PathInfo.from_bytes(info.to_bytes()) == info


def test_model_refuses_bad_nar_fields() -> None:
    with pytest.raises(PathInfoValidationError, match="nar_sha256 must be 32 bytes"):
        dataclasses.replace(PATH_INFO, nar_sha256=b"\0")
    with pytest.raises(PathInfoValidationError, match="does not fit in 64 bits"):
        dataclasses.replace(PATH_INFO, nar_size=-1)


def test_fingerprint() -> None:
    # vectors.md §6, the keyfile-signing wrapper on the store fixture PATH_INFO.
    assert PATH_INFO.fingerprint() == (
        "1;/nix/store/00000000000000000000000000000000-dummy;"
        "sha256:0000000000000000000000000000000000000000000000000000;0;"
        "/nix/store/00000000000000000000000000000000-dummy"
    )

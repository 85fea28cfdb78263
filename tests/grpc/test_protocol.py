"""The daemon's gRPC protocol, call by call, with the raw generated stubs.

Every status code asserted here is tvix's (reference survey §1.8-§1.10); the
digests and NAR hashes are the known answers of vectors.md (§1-§3, §9). One
daemon per module: the stores are content-addressed, so tests share it and
use data of their own wherever absence matters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import blake3
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cafs.castore.closure import RootToLeavesValidator
from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import DirectoryNode, FileNode, SymlinkNode, node_to_proto
from cafs.gen.tvix.castore.v1 import castore_pb2, rpc_blobstore_pb2, rpc_directory_pb2
from cafs.gen.tvix.castore.v1.rpc_blobstore_pb2_grpc import BlobServiceStub
from cafs.gen.tvix.castore.v1.rpc_directory_pb2_grpc import DirectoryServiceStub
from cafs.gen.tvix.store.v1 import pathinfo_pb2, rpc_pathinfo_pb2
from cafs.gen.tvix.store.v1.rpc_pathinfo_pb2_grpc import PathInfoServiceStub
from cafs.rpc.channel import parse_channel_url
from cafs.store.hashes import CAHash, NixHash
from cafs.store.pathinfo import PathInfo
from cafs.store.storepath import StorePath
from tests.daemon import MEMORY_SERVICES, Daemon, running_daemon, socket_path
from tests.fixtures import (
    DIRECTORY_A,
    DIRECTORY_B,
    DIRECTORY_C,
    DIRECTORY_COMPLICATED,
    DIRECTORY_D,
    DIRECTORY_WITH_KEEP,
    EMPTY_DIGEST,
    HELLOWORLD_BLOB,
    HELLOWORLD_DIGEST,
)

MiB = 1 << 20
TVIX_MAX_MESSAGE = 4 * MiB
"""tonic's default limit: a Read message any tvix client accepts is no larger."""
TIMEOUT = 60.0

# vectors.md §1, §2.1 (tvix size convention) and §3.
EMPTY_HEX = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
HELLOWORLD_HEX = "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
DIRECTORY_C_HEX = "78eb200ae0cc95d4ea954655fbcf91e285013a261310e161927f2401d2bca803"
DIRECTORY_D_HEX = "76cd8b55b37333961c1778ba997e57df92e219926ae5a66c414b810331a77603"
COMPLICATED_HEX = "424a7f6ce08d805d15b428062faae96299a1675d708c3a39261afe38cdd04feb"
NAR_HELLOWORLD = (128, "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040")
NAR_SYMLINK = (136, "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1")
NAR_COMPLICATED = (840, "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a")

# vectors.md §8: the PathInfo every tvix validation vector mutates.
DUMMY_NAME = "00000000000000000000000000000000-dummy"


# --- daemons and channels ---------------------------------------------------


def channel_target(url: str) -> str:
    return parse_channel_url(url).target


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """On a unix socket; chunked blobs, so Stat has chunks to list."""
    tmp = tmp_path_factory.mktemp("protocol")
    with running_daemon(
        tmp / "home",
        socket_path(tmp),
        "--blob-service-addr",
        "objectstore+memory:///",
        "--directory-service-addr",
        "sqlite://",
        "--path-info-service-addr",
        "memory://",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    assert daemon.url.startswith("grpc+unix:///")
    with grpc.insecure_channel(channel_target(daemon.url)) as opened:
        yield opened


@pytest.fixture(scope="module")
def blobs(channel: grpc.Channel) -> BlobServiceStub:
    return BlobServiceStub(channel)


@pytest.fixture(scope="module")
def directories(channel: grpc.Channel) -> DirectoryServiceStub:
    return DirectoryServiceStub(channel)


@pytest.fixture(scope="module")
def path_infos(channel: grpc.Channel) -> PathInfoServiceStub:
    return PathInfoServiceStub(channel)


# --- helpers ------------------------------------------------------------------


def fails_with(call: Callable[[], object], code: grpc.StatusCode, *fragments: str) -> str:
    """Run ``call``, which must fail with ``code`` and a message holding every fragment."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = cast(grpc.Call, raised.value)
    details = error.details() or ""
    assert error.code() == code, f"{error.code()}: {details}"
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"
    return details


def put_blob(stub: BlobServiceStub, data: bytes, piece: int = MiB) -> bytes:
    pieces = (
        rpc_blobstore_pb2.BlobChunk(data=data[i : i + piece]) for i in range(0, len(data), piece)
    )
    return stub.Put(pieces, timeout=TIMEOUT).digest


def read_messages(stub: BlobServiceStub, digest: bytes) -> list[bytes]:
    request = rpc_blobstore_pb2.ReadBlobRequest(digest=digest)
    return [m.data for m in stub.Read(request, timeout=TIMEOUT)]


def put_directories(stub: DirectoryServiceStub, closure: Iterable[Directory]) -> bytes:
    messages = [d.to_proto() for d in closure]
    return stub.Put(iter(messages), timeout=TIMEOUT).root_digest


def get_directories(
    stub: DirectoryServiceStub, digest: bytes, recursive: bool
) -> list[castore_pb2.Directory]:
    request = rpc_directory_pb2.GetDirectoryRequest(digest=digest, recursive=recursive)
    return list(stub.Get(request, timeout=TIMEOUT))


def unique_directory(tag: str) -> Directory:
    """A directory no other test stores (the tag and some randomness name its entry)."""
    return Directory([(f"{tag}-{os.urandom(8).hex()}".encode(), SymlinkNode(b"target"))])


def path_info(digest: bytes, name: str, node: FileNode | SymlinkNode) -> PathInfo:
    """A valid PathInfo referring to itself, with a NAR SHA-256 CA."""
    path = StorePath(digest, name)
    nar_sha256 = bytes.fromhex(NAR_HELLOWORLD[1])
    return PathInfo(
        store_path=path,
        node=node,
        references=(path,),
        nar_size=NAR_HELLOWORLD[0],
        nar_sha256=nar_sha256,
        ca=CAHash("nar", NixHash("sha256", nar_sha256)),
    )


def proto_path_info() -> pathinfo_pb2.PathInfo:
    """PROTO_PATH_INFO of the tvix tests (vectors.md §8)."""
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


def store_complicated(blobs: BlobServiceStub, directories: DirectoryServiceStub) -> bytes:
    """The complicated tree (vectors.md §2.1): its empty blob and its two directories."""
    assert put_blob(blobs, b"") == EMPTY_DIGEST
    return put_directories(directories, [DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED])


# --- BlobService ----------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_blob_wrong_digest_length_is_invalid_argument(blobs: BlobServiceStub, length: int) -> None:
    digest = b"\x01" * length
    fails_with(
        lambda: blobs.Stat(rpc_blobstore_pb2.StatBlobRequest(digest=digest), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid digest length",
    )
    fails_with(
        lambda: read_messages(blobs, digest),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid digest length",
    )


def test_absent_blob_is_not_found(blobs: BlobServiceStub) -> None:
    digest = Digest(os.urandom(32))
    fails_with(
        lambda: blobs.Stat(rpc_blobstore_pb2.StatBlobRequest(digest=digest), timeout=TIMEOUT),
        grpc.StatusCode.NOT_FOUND,
        "not found",
        str(digest),
    )
    fails_with(
        lambda: read_messages(blobs, digest), grpc.StatusCode.NOT_FOUND, "not found", str(digest)
    )


def test_put_answers_the_blake3_digest(blobs: BlobServiceStub) -> None:
    assert put_blob(blobs, HELLOWORLD_BLOB).hex() == HELLOWORLD_HEX
    # The same bytes cut into other messages are the same blob.
    assert put_blob(blobs, HELLOWORLD_BLOB, piece=5).hex() == HELLOWORLD_HEX
    assert b"".join(read_messages(blobs, HELLOWORLD_DIGEST)) == HELLOWORLD_BLOB
    stat = blobs.Stat(rpc_blobstore_pb2.StatBlobRequest(digest=HELLOWORLD_DIGEST), timeout=TIMEOUT)
    assert sum(c.size for c in stat.chunks) in (0, len(HELLOWORLD_BLOB))


def test_empty_put_is_the_empty_blob(blobs: BlobServiceStub) -> None:
    # No message at all, and one empty message: both are the empty blob.
    assert blobs.Put(iter([]), timeout=TIMEOUT).digest.hex() == EMPTY_HEX
    empty = iter([rpc_blobstore_pb2.BlobChunk(data=b"")])
    assert blobs.Put(empty, timeout=TIMEOUT).digest.hex() == EMPTY_HEX
    blobs.Stat(rpc_blobstore_pb2.StatBlobRequest(digest=EMPTY_DIGEST), timeout=TIMEOUT)
    assert b"".join(read_messages(blobs, EMPTY_DIGEST)) == b""


def test_chunked_blob_stat_read_and_chunks(blobs: BlobServiceStub) -> None:
    data = os.urandom(6 * MiB + 12345)
    digest = put_blob(blobs, data, piece=MiB - 7)
    assert digest == blake3.blake3(data).digest()

    # Chunks are listed whether or not they were asked for (tvix ignores send_chunks).
    for send_chunks in (True, False):
        request = rpc_blobstore_pb2.StatBlobRequest(digest=digest, send_chunks=send_chunks)
        stat = blobs.Stat(request, timeout=TIMEOUT)
        assert len(stat.chunks) >= 2
        assert sum(c.size for c in stat.chunks) == len(data)
        assert stat.bao == b""

    # Each chunk is a blob of its own: readable, hashing to its digest, in order.
    offset = 0
    for chunk in stat.chunks:
        assert len(chunk.digest) == 32
        messages = read_messages(blobs, chunk.digest)
        content = b"".join(messages)
        assert len(content) == chunk.size
        assert blake3.blake3(content).digest() == chunk.digest
        assert content == data[offset : offset + chunk.size]
        offset += chunk.size
        inner = blobs.Stat(rpc_blobstore_pb2.StatBlobRequest(digest=chunk.digest))
        assert sum(c.size for c in inner.chunks) in (0, chunk.size)

    # The whole blob comes back in bounded messages.
    messages = read_messages(blobs, digest)
    assert len(messages) >= 2
    assert max(len(m) for m in messages) <= TVIX_MAX_MESSAGE
    assert b"".join(messages) == data


# --- DirectoryService -----------------------------------------------------------


def test_directory_get_without_by_what_is_invalid_argument(
    directories: DirectoryServiceStub,
) -> None:
    for recursive in (False, True):
        request = rpc_directory_pb2.GetDirectoryRequest(recursive=recursive)
        fails_with(
            lambda request=request: list(directories.Get(request, timeout=TIMEOUT)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "by_what",
        )


@pytest.mark.parametrize("length", [0, 20, 31, 33])
@pytest.mark.parametrize("recursive", [False, True])
def test_directory_get_wrong_digest_length_is_invalid_argument(
    directories: DirectoryServiceStub, length: int, recursive: bool
) -> None:
    fails_with(
        lambda: get_directories(directories, b"\x02" * length, recursive),
        grpc.StatusCode.INVALID_ARGUMENT,
        "digest length",
    )


def test_absent_directory(directories: DirectoryServiceStub) -> None:
    digest = Digest(os.urandom(32))
    fails_with(
        lambda: get_directories(directories, digest, recursive=False),
        grpc.StatusCode.NOT_FOUND,
        "not found",
        str(digest),
    )
    # Recursively, an absent root is an empty stream that ends OK.
    assert get_directories(directories, digest, recursive=True) == []


@pytest.mark.parametrize(
    ("closure", "root"),
    [
        pytest.param([DIRECTORY_A], DIRECTORY_A, id="A"),
        pytest.param([DIRECTORY_A, DIRECTORY_B], DIRECTORY_B, id="A,B"),
        pytest.param([DIRECTORY_A, DIRECTORY_A, DIRECTORY_C], DIRECTORY_C, id="A,A,C"),
        pytest.param([DIRECTORY_A, DIRECTORY_C], DIRECTORY_C, id="A,C"),
        pytest.param([DIRECTORY_A, DIRECTORY_B, DIRECTORY_B, DIRECTORY_D], DIRECTORY_D, id="dups"),
    ],
)
def test_directory_put_valid_closures(
    directories: DirectoryServiceStub, closure: list[Directory], root: Directory
) -> None:
    assert put_directories(directories, closure) == root.digest
    assert get_directories(directories, root.digest, recursive=False) == [root.to_proto()]


def test_directory_root_digests_match_vectors(directories: DirectoryServiceStub) -> None:
    assert put_directories(directories, [DIRECTORY_A, DIRECTORY_C]).hex() == DIRECTORY_C_HEX
    assert (
        put_directories(directories, [DIRECTORY_A, DIRECTORY_B, DIRECTORY_D]).hex()
        == DIRECTORY_D_HEX
    )


@pytest.mark.parametrize(
    ("closure", "root"),
    [
        pytest.param([DIRECTORY_A, DIRECTORY_B, DIRECTORY_D], DIRECTORY_D, id="D"),
        pytest.param([DIRECTORY_A, DIRECTORY_C], DIRECTORY_C, id="C"),
        pytest.param([DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED], DIRECTORY_COMPLICATED, id="cx"),
    ],
)
def test_directory_get_recursive_is_root_first_each_once(
    directories: DirectoryServiceStub, closure: list[Directory], root: Directory
) -> None:
    put_directories(directories, closure)
    received = get_directories(directories, root.digest, recursive=True)
    assert received[0] == root.to_proto()
    validator = RootToLeavesValidator(root.digest)
    for message in received:
        validator.add(Directory.from_proto(message))  # raises on a repeat or a stray
    assert not validator.missing()
    assert {Directory.from_proto(m).digest for m in received} == {d.digest for d in closure}
    assert len(received) == len({d.digest for d in closure})


def test_directory_put_parent_before_child_is_internal(
    directories: DirectoryServiceStub,
) -> None:
    # [B]: B refers to A, which was not sent earlier in the stream.
    fails_with(
        lambda: put_directories(directories, [DIRECTORY_B]),
        grpc.StatusCode.INTERNAL,
        str(DIRECTORY_A.digest),
    )
    # Even though the server has A, the child must come in the same stream.
    put_directories(directories, [DIRECTORY_A])
    fails_with(
        lambda: put_directories(directories, [DIRECTORY_B]),
        grpc.StatusCode.INTERNAL,
        str(DIRECTORY_A.digest),
    )


def test_directory_put_disconnected_roots_is_internal(
    directories: DirectoryServiceStub,
) -> None:
    # [A, C, B]: B and C both refer to A, but nothing joins them.
    fails_with(
        lambda: put_directories(directories, [DIRECTORY_A, DIRECTORY_C, DIRECTORY_B]),
        grpc.StatusCode.INTERNAL,
        "root",
    )
    # Nothing of a rejected closure is stored.
    fresh = unique_directory("unconnected")
    fails_with(
        lambda: put_directories(directories, [fresh, DIRECTORY_A]),
        grpc.StatusCode.INTERNAL,
        "root",
    )
    fails_with(
        lambda: get_directories(directories, fresh.digest, recursive=False),
        grpc.StatusCode.NOT_FOUND,
    )


def test_directory_put_wrong_child_size_is_internal(directories: DirectoryServiceStub) -> None:
    child = DIRECTORY_WITH_KEEP
    parent = Directory([(b"keep", DirectoryNode(child.digest, child.size + 42))])
    fails_with(
        lambda: put_directories(directories, [child, parent]),
        grpc.StatusCode.INTERNAL,
        "size",
    )
    fails_with(
        lambda: get_directories(directories, parent.digest, recursive=False),
        grpc.StatusCode.NOT_FOUND,
    )


def _file(name: bytes, digest: bytes = EMPTY_DIGEST) -> castore_pb2.FileNode:
    return castore_pb2.FileNode(name=name, digest=digest, size=0)


INVALID_DIRECTORIES = {
    "unsorted": (castore_pb2.Directory(files=[_file(b"b"), _file(b"a")]), "'a'"),
    "duplicate": (castore_pb2.Directory(files=[_file(b"a"), _file(b"a")]), "duplicate"),
    "duplicate-across-lists": (
        castore_pb2.Directory(
            files=[_file(b"x")],
            symlinks=[castore_pb2.SymlinkNode(name=b"x", target=b"t")],
        ),
        "duplicate",
    ),
    "short-file-digest": (castore_pb2.Directory(files=[_file(b"f", bytes(31))]), "'f'"),
    "short-directory-digest": (
        castore_pb2.Directory(
            directories=[castore_pb2.DirectoryNode(name=b"d", digest=bytes(33), size=0)]
        ),
        "'d'",
    ),
    "slash-in-name": (castore_pb2.Directory(files=[_file(b"a/b")]), "'a/b'"),
    "dot-name": (castore_pb2.Directory(files=[_file(b"..")]), "'..'"),
    "empty-name": (castore_pb2.Directory(files=[_file(b"")]), "empty"),
    "empty-symlink-target": (
        castore_pb2.Directory(symlinks=[castore_pb2.SymlinkNode(name=b"s", target=b"")]),
        "'s'",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_DIRECTORIES))
def test_directory_put_invalid_directory_is_internal(
    directories: DirectoryServiceStub, case: str
) -> None:
    invalid, fragment = INVALID_DIRECTORIES[case]
    fresh = unique_directory(case)
    # The invalid one after a valid one: the whole stream is refused, nothing stored.
    fails_with(
        lambda: directories.Put(iter([fresh.to_proto(), invalid]), timeout=TIMEOUT),
        grpc.StatusCode.INTERNAL,
        fragment,
    )
    fails_with(
        lambda: get_directories(directories, fresh.digest, recursive=False),
        grpc.StatusCode.NOT_FOUND,
    )


def test_directory_put_empty_stream_is_invalid_argument(
    directories: DirectoryServiceStub,
) -> None:
    fails_with(
        lambda: directories.Put(iter([]), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "got no directories",
    )


# --- PathInfoService ------------------------------------------------------------


def test_path_info_get_without_by_what_is_unimplemented(path_infos: PathInfoServiceStub) -> None:
    fails_with(
        lambda: path_infos.Get(rpc_pathinfo_pb2.GetPathInfoRequest(), timeout=TIMEOUT),
        grpc.StatusCode.UNIMPLEMENTED,
        "by_what needs to be specified",
    )


@pytest.mark.parametrize("length", [0, 19, 21, 32])
def test_path_info_get_wrong_digest_length_is_invalid_argument(
    path_infos: PathInfoServiceStub, length: int
) -> None:
    request = rpc_pathinfo_pb2.GetPathInfoRequest(by_output_hash=b"\x03" * length)
    assert request.WhichOneof("by_what") == "by_output_hash"
    fails_with(
        lambda: path_infos.Get(request, timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid output digest length",
    )


def test_path_info_miss_is_not_found(path_infos: PathInfoServiceStub) -> None:
    request = rpc_pathinfo_pb2.GetPathInfoRequest(by_output_hash=os.urandom(20))
    fails_with(
        lambda: path_infos.Get(request, timeout=TIMEOUT),
        grpc.StatusCode.NOT_FOUND,
        "PathInfo not found",
    )


def _clear(field: str) -> Callable[[pathinfo_pb2.PathInfo], None]:
    return lambda msg: msg.ClearField(field)


def _node_kind_unset(msg: pathinfo_pb2.PathInfo) -> None:
    msg.ClearField("node")
    msg.node.SetInParent()


INVALID_PATH_INFOS: dict[str, tuple[Callable[[pathinfo_pb2.PathInfo], Any], str]] = {
    "narinfo-missing": (_clear("narinfo"), "narinfo"),
    "reference-digest-length": (lambda m: m.references.append(b"\xff\xff"), "reference 1"),
    "reference-count": (lambda m: m.narinfo.ClearField("reference_names"), "reference"),
    "reference-name-absolute": (
        lambda m: m.narinfo.reference_names.__setitem__(0, "/nix/store/" + DUMMY_NAME),
        "reference name 0",
    ),
    "node-unset": (_clear("node"), "root node"),
    "node-kind-unset": (_node_kind_unset, "root node"),
    "node-digest-length": (
        lambda m: setattr(m.node.directory, "digest", b""),
        "root node",
    ),
    "node-name": (lambda m: setattr(m.node.directory, "name", b"invalid"), "invalid"),
    "nar-sha256-length": (lambda m: setattr(m.narinfo, "nar_sha256", b"\xbe\xef"), "nar_sha256"),
    "signature-length": (
        lambda m: m.narinfo.signatures.add(name="cache.example.com-1", data=b"\x00" * 63),
        "signature 0",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_PATH_INFOS))
def test_path_info_put_invalid_is_invalid_argument(
    path_infos: PathInfoServiceStub, case: str
) -> None:
    mutate, fragment = INVALID_PATH_INFOS[case]
    message = proto_path_info()
    mutate(message)
    details = fails_with(
        lambda: path_infos.Put(message, timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        fragment,
    )
    assert details.startswith("Invalid path info: ")
    assert "invalid path info" not in details[len("Invalid path info: ") :].lower()


def test_path_info_put_get_list(path_infos: PathInfoServiceStub) -> None:
    # The tvix base vector is valid as it is.
    base = proto_path_info()
    assert path_infos.Put(base, timeout=TIMEOUT) == base

    info = path_info(os.urandom(20), "hello", FileNode(HELLOWORLD_DIGEST, len(HELLOWORLD_BLOB)))
    sent = info.to_proto()
    stored = path_infos.Put(sent, timeout=TIMEOUT)
    assert PathInfo.from_proto(stored) == info
    request = rpc_pathinfo_pb2.GetPathInfoRequest(by_output_hash=info.store_path.digest)
    assert path_infos.Get(request, timeout=TIMEOUT) == stored
    listed = list(path_infos.List(rpc_pathinfo_pb2.ListPathInfoRequest(), timeout=TIMEOUT))
    assert stored in listed
    assert base in listed
    assert all(PathInfo.from_proto(m) for m in listed)


def test_calculate_nar_named_node_is_invalid_argument(path_infos: PathInfoServiceStub) -> None:
    named = node_to_proto(b"hello", FileNode(HELLOWORLD_DIGEST, len(HELLOWORLD_BLOB)))
    fails_with(
        lambda: path_infos.CalculateNAR(named, timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid root node",
    )


def test_calculate_nar_unset_node_is_invalid_argument(path_infos: PathInfoServiceStub) -> None:
    fails_with(
        lambda: path_infos.CalculateNAR(castore_pb2.Node(), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid root node",
    )
    # An anonymous node that is itself invalid (digest of the wrong length).
    short = castore_pb2.Node(file=castore_pb2.FileNode(digest=bytes(31), size=1))
    fails_with(
        lambda: path_infos.CalculateNAR(short, timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid root node",
    )


def _nar(response: rpc_pathinfo_pb2.CalculateNARResponse) -> tuple[int, str]:
    return response.nar_size, response.nar_sha256.hex()


def test_calculate_nar_known_answers(
    blobs: BlobServiceStub, directories: DirectoryServiceStub, path_infos: PathInfoServiceStub
) -> None:
    assert put_blob(blobs, HELLOWORLD_BLOB) == HELLOWORLD_DIGEST
    helloworld = node_to_proto(b"", FileNode(HELLOWORLD_DIGEST, len(HELLOWORLD_BLOB)))
    assert _nar(path_infos.CalculateNAR(helloworld, timeout=TIMEOUT)) == NAR_HELLOWORLD

    symlink = node_to_proto(b"", SymlinkNode(b"/nix/store/somewhereelse"))
    assert _nar(path_infos.CalculateNAR(symlink, timeout=TIMEOUT)) == NAR_SYMLINK

    root = store_complicated(blobs, directories)
    assert root.hex() == COMPLICATED_HEX
    complicated = node_to_proto(b"", DirectoryNode(Digest(root), DIRECTORY_COMPLICATED.size))
    assert complicated.directory.size == 8
    assert _nar(path_infos.CalculateNAR(complicated, timeout=TIMEOUT)) == NAR_COMPLICATED


def test_calculate_nar_of_absent_contents_is_data_loss(
    directories: DirectoryServiceStub, path_infos: PathInfoServiceStub
) -> None:
    # tvix: every rendering failure is a StorageError, DATA_LOSS "storage error: ...".
    digest = Digest(os.urandom(32))
    file = node_to_proto(b"", FileNode(digest, 5))
    fails_with(
        lambda: path_infos.CalculateNAR(file, timeout=TIMEOUT),
        grpc.StatusCode.DATA_LOSS,
        "storage error",
        str(digest),
    )
    directory = node_to_proto(b"", DirectoryNode(digest, 2))
    fails_with(
        lambda: path_infos.CalculateNAR(directory, timeout=TIMEOUT),
        grpc.StatusCode.DATA_LOSS,
        "storage error",
        str(digest),
    )
    # A stored directory whose file's blob is absent.
    holder = Directory([(b"file", FileNode(digest, 5))])
    put_directories(directories, [holder])
    stored = node_to_proto(b"", holder.as_node())
    fails_with(
        lambda: path_infos.CalculateNAR(stored, timeout=TIMEOUT),
        grpc.StatusCode.DATA_LOSS,
        str(digest),
    )


# --- snix method names ------------------------------------------------------------


class Snix:
    """Callables for the ``snix.*`` method paths, over the tvix message classes."""

    def __init__(self, channel: grpc.Channel) -> None:
        def method(kind: str, path: str, request: Any, response: Any) -> Any:
            make = getattr(channel, kind)
            return make(
                path,
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

        blob = "/snix.castore.v1.BlobService/"
        directory = "/snix.castore.v1.DirectoryService/"
        store = "/snix.store.v1.PathInfoService/"
        self.stat = method(
            "unary_unary",
            blob + "Stat",
            rpc_blobstore_pb2.StatBlobRequest,
            rpc_blobstore_pb2.StatBlobResponse,
        )
        self.read = method(
            "unary_stream",
            blob + "Read",
            rpc_blobstore_pb2.ReadBlobRequest,
            rpc_blobstore_pb2.BlobChunk,
        )
        self.put_blob = method(
            "stream_unary",
            blob + "Put",
            rpc_blobstore_pb2.BlobChunk,
            rpc_blobstore_pb2.PutBlobResponse,
        )
        self.get_directory = method(
            "unary_stream",
            directory + "Get",
            rpc_directory_pb2.GetDirectoryRequest,
            castore_pb2.Directory,
        )
        self.put_directories = method(
            "stream_unary",
            directory + "Put",
            castore_pb2.Directory,
            rpc_directory_pb2.PutDirectoryResponse,
        )
        self.get_path_info = method(
            "unary_unary",
            store + "Get",
            rpc_pathinfo_pb2.GetPathInfoRequest,
            pathinfo_pb2.PathInfo,
        )
        self.put_path_info = method(
            "unary_unary", store + "Put", pathinfo_pb2.PathInfo, pathinfo_pb2.PathInfo
        )
        self.calculate_nar = method(
            "unary_unary",
            store + "CalculateNAR",
            castore_pb2.Node,
            rpc_pathinfo_pb2.CalculateNARResponse,
        )
        self.list_path_infos = method(
            "unary_stream",
            store + "List",
            rpc_pathinfo_pb2.ListPathInfoRequest,
            pathinfo_pb2.PathInfo,
        )


def test_snix_method_paths(channel: grpc.Channel) -> None:
    snix = Snix(channel)
    data = os.urandom(2 * MiB)
    pieces = [
        rpc_blobstore_pb2.BlobChunk(data=data[:MiB]),
        rpc_blobstore_pb2.BlobChunk(data=data[MiB:]),
    ]
    digest = snix.put_blob(iter(pieces), timeout=TIMEOUT).digest
    assert digest == blake3.blake3(data).digest()
    stat = snix.stat(rpc_blobstore_pb2.StatBlobRequest(digest=digest), timeout=TIMEOUT)
    assert sum(c.size for c in stat.chunks) == len(data)
    read = snix.read(rpc_blobstore_pb2.ReadBlobRequest(digest=digest), timeout=TIMEOUT)
    assert b"".join(m.data for m in read) == data
    # The same semantics, status codes included.
    fails_with(
        lambda: snix.stat(rpc_blobstore_pb2.StatBlobRequest(digest=b"\x00"), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid digest length",
    )

    closure = [DIRECTORY_A, DIRECTORY_B, DIRECTORY_D]
    response = snix.put_directories(iter([d.to_proto() for d in closure]), timeout=TIMEOUT)
    assert response.root_digest.hex() == DIRECTORY_D_HEX
    request = rpc_directory_pb2.GetDirectoryRequest(digest=DIRECTORY_D.digest, recursive=True)
    received = list(snix.get_directory(request, timeout=TIMEOUT))
    assert received[0] == DIRECTORY_D.to_proto()
    assert len(received) == 3
    fails_with(
        lambda: snix.put_directories(iter([DIRECTORY_B.to_proto()]), timeout=TIMEOUT),
        grpc.StatusCode.INTERNAL,
    )

    info = path_info(os.urandom(20), "snix", SymlinkNode(b"/nix/store/somewhereelse"))
    stored = snix.put_path_info(info.to_proto(), timeout=TIMEOUT)
    assert PathInfo.from_proto(stored) == info
    get = rpc_pathinfo_pb2.GetPathInfoRequest(by_output_hash=info.store_path.digest)
    assert snix.get_path_info(get, timeout=TIMEOUT) == stored
    assert stored in list(
        snix.list_path_infos(rpc_pathinfo_pb2.ListPathInfoRequest(), timeout=TIMEOUT)
    )
    fails_with(
        lambda: snix.get_path_info(rpc_pathinfo_pb2.GetPathInfoRequest(), timeout=TIMEOUT),
        grpc.StatusCode.UNIMPLEMENTED,
    )
    symlink = node_to_proto(b"", SymlinkNode(b"/nix/store/somewhereelse"))
    assert _nar(snix.calculate_nar(symlink, timeout=TIMEOUT)) == NAR_SYMLINK


# --- health -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "service",
    [
        "",
        "tvix.castore.v1.BlobService",
        "tvix.castore.v1.DirectoryService",
        "tvix.store.v1.PathInfoService",
        "snix.castore.v1.BlobService",
        "snix.store.v1.PathInfoService",
    ],
)
def test_health_serving(channel: grpc.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="no.such.Service")
    fails_with(lambda: health.Check(request, timeout=TIMEOUT), grpc.StatusCode.NOT_FOUND)


# --- TCP ------------------------------------------------------------------------------


def test_tcp_daemon_on_an_ephemeral_port(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "home", "127.0.0.1:0", *MEMORY_SERVICES) as tcp:
        assert tcp.url.startswith("grpc+http://127.0.0.1:")
        port = int(tcp.url.rsplit(":", 1)[1])
        assert 0 < port < 65536
        with grpc.insecure_channel(channel_target(tcp.url)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status
            assert status == health_pb2.HealthCheckResponse.SERVING

            blobs = BlobServiceStub(channel)
            data = os.urandom(5 * MiB)
            digest = put_blob(blobs, data)
            assert digest == blake3.blake3(data).digest()
            messages = read_messages(blobs, digest)
            assert max(len(m) for m in messages) <= TVIX_MAX_MESSAGE
            assert b"".join(messages) == data
            stat = blobs.Stat(rpc_blobstore_pb2.StatBlobRequest(digest=digest), timeout=TIMEOUT)
            assert sum(c.size for c in stat.chunks) in (0, len(data))

            directories = DirectoryServiceStub(channel)
            root = store_complicated(blobs, directories)
            assert root.hex() == COMPLICATED_HEX
            received = get_directories(directories, root, recursive=True)
            assert Directory.from_proto(received[0]) == DIRECTORY_COMPLICATED
            assert len(received) == 2

            path_infos = PathInfoServiceStub(channel)
            node = DirectoryNode(Digest(root), DIRECTORY_COMPLICATED.size)
            assert _nar(path_infos.CalculateNAR(node_to_proto(b"", node))) == NAR_COMPLICATED
            fails_with(
                lambda: path_infos.Get(rpc_pathinfo_pb2.GetPathInfoRequest()),
                grpc.StatusCode.UNIMPLEMENTED,
            )
        assert tcp.process.poll() is None

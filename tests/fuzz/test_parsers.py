"""Parsers of data from outside: protobufs, narinfo, store paths, NARs, keys and signatures.

Each is fed random bytes and mutations of valid inputs; it must answer with
its own error class (a ``CafsError``) or a value, never another exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cafs.castore.blobs.memory import MemoryBlobService
from cafs.castore.directories.memory import MemoryDirectoryService
from cafs.castore.directory import Directory
from cafs.errors import CafsError
from cafs.store.nar.ingest import bytes_source, ingest_nar
from cafs.store.narinfo import NarInfo
from cafs.store.pathinfo import PathInfo
from cafs.store.signatures import Signature, SigningKey, VerifyingKey
from cafs.store.storepath import StorePath
from tests.fixtures import DIRECTORY_COMPLICATED
from tests.fuzz.conftest import PROFILE
from tests.unit.store.test_nar import COMPLICATED_NAR

NARINFO = """StorePath: /nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432
URL: nar/1094wph9z4nwlgvsd53abfz8i117ykiv5dwnq9nnhz846s7xqd7d.nar.xz
Compression: xz
FileHash: sha256:1094wph9z4nwlgvsd53abfz8i117ykiv5dwnq9nnhz846s7xqd7d
FileSize: 114980
NarHash: sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6
NarSize: 464152
References: 7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27
Deriver: 10dx1q4ivjb115y3h90mipaaz533nr0d-net-tools-1.60_p20170221182432.drv
Sig: cache.nixos.org-1:sn5s/RrqEI+YG6/PjwdbPjcAC7rcta7sJU4mFOawGvJBLsWkyLtBrT2EuFt/\
LJjWkTZ+ZWOI9NTtjo/woMdvAg==
"""


FUZZ = settings.get_profile(PROFILE)


def mutations(seed: bytes, data: st.DataObject) -> bytes:
    """``seed`` with a few bytes flipped, cut, repeated or inserted."""
    out = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        at = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del out[at : at + data.draw(st.integers(1, 64))]
        elif kind == "insert":
            out[at:at] = data.draw(st.binary(max_size=16))
        elif kind == "dup":
            out[at:at] = out[at : at + data.draw(st.integers(1, 32))]
    return bytes(out)


def refused_or_parsed(parse: object, value: object) -> None:
    with contextlib.suppress(CafsError):
        parse(value)  # type: ignore[operator]


@FUZZ
@given(st.binary(max_size=512))
@example(b"\x0a\x00")
def test_directory_messages(data: bytes) -> None:
    refused_or_parsed(Directory.from_bytes, data)


@FUZZ
@given(st.data())
def test_directory_mutations(data: st.DataObject) -> None:
    refused_or_parsed(
        Directory.from_bytes, mutations(DIRECTORY_COMPLICATED.canonical_bytes(), data)
    )


@FUZZ
@given(st.binary(max_size=512))
def test_pathinfo_messages(data: bytes) -> None:
    refused_or_parsed(PathInfo.from_bytes, data)


@FUZZ
@given(st.text(max_size=400))
def test_narinfo_text(text: str) -> None:
    refused_or_parsed(NarInfo.parse, text)


@FUZZ
@given(st.data())
def test_narinfo_mutations(data: st.DataObject) -> None:
    text = mutations(NARINFO.encode(), data).decode(errors="replace")
    refused_or_parsed(NarInfo.parse, text)


@FUZZ
@given(st.text(max_size=300))
@example("/nix/store/" + "a" * 32 + "-")
def test_store_paths(text: str) -> None:
    refused_or_parsed(StorePath.parse, text)


@FUZZ
@given(st.text(max_size=200))
def test_keys_and_signatures(text: str) -> None:
    for parse in (Signature.parse, VerifyingKey.parse, SigningKey.parse):
        refused_or_parsed(parse, text)


async def _ingest(data: bytes) -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    with contextlib.suppress(CafsError):
        await asyncio.wait_for(ingest_nar(bytes_source(data), blobs, directories), 10)


@FUZZ
@given(st.binary(max_size=1024))
def test_nar_bytes(data: bytes) -> None:
    asyncio.run(_ingest(data))


@FUZZ
@given(st.data())
def test_nar_mutations(data: st.DataObject) -> None:
    asyncio.run(_ingest(mutations(COMPLICATED_NAR, data)))


def test_nar_mutations_with_a_fixed_seed() -> None:
    """Many cheap mutations of a valid NAR without hypothesis's shrinking machinery."""
    rng = random.Random(20261202)

    async def run() -> None:
        for _ in range(300):
            out = bytearray(COMPLICATED_NAR)
            for _ in range(rng.randrange(1, 4)):
                out[rng.randrange(len(out))] = rng.randrange(256)
            await _ingest(bytes(out))

    asyncio.run(run())


# -- objects a shared store or a handover folder holds -------------------------------


def _closure_object() -> bytes:
    from tests.fixtures import DIRECTORY_A, DIRECTORY_B, DIRECTORY_D
    from tests.unit.test_directory_services import tvix_frames

    return tvix_frames([DIRECTORY_D, DIRECTORY_B, DIRECTORY_A])


def _decode_closure(raw: bytes) -> None:
    from cafs.castore.directories.objectstore import decode_closure
    from tests.fixtures import DIRECTORY_D

    for _ in decode_closure(DIRECTORY_D.digest, raw):
        pass


@FUZZ
@given(st.data())
def test_directory_closure_objects(data: st.DataObject) -> None:
    """tvix's closure objects (zstd frames of length-prefixed Directories), mutated."""
    refused_or_parsed(_decode_closure, mutations(_closure_object(), data))


@FUZZ
@given(st.binary(max_size=512))
def test_directory_closure_bytes(data: bytes) -> None:
    refused_or_parsed(_decode_closure, data)


def _journal() -> bytes:
    from cafs.castore.nodes import DirectoryNode, FileNode, SymlinkNode
    from cafs.fuse.handover import encode_inode
    from tests.fixtures import DIRECTORY_A, HELLOWORLD_DIGEST

    return b"".join(
        [
            b"S" + (31).to_bytes(4, "little") + (0x1234).to_bytes(8, "little"),
            encode_inode(2, FileNode(HELLOWORLD_DIGEST, 12, True)),
            encode_inode(3, DirectoryNode(DIRECTORY_A.digest, 0)),
            encode_inode(4, SymlinkNode(b"../target")),
        ]
    )


@FUZZ
@given(st.data())
def test_handover_journals(data: st.DataObject) -> None:
    """An inode journal cut or damaged (a crash mid-write, a stray file)."""
    import tempfile
    from pathlib import Path

    from cafs.fuse.handover import read_journal

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inodes.journal"
        path.write_bytes(mutations(_journal(), data))
        refused_or_parsed(read_journal, path)


def test_a_journal_cut_inside_its_last_record_keeps_the_rest(tmp_path: object) -> None:
    from pathlib import Path

    from cafs.fuse.handover import read_journal

    whole = _journal()
    path = Path(str(tmp_path)) / "inodes.journal"
    path.write_bytes(whole)
    assert sorted(read_journal(path).inodes) == [2, 3, 4]
    path.write_bytes(whole[:-3])
    restored = read_journal(path)
    assert sorted(restored.inodes) == [2, 3] and restored.minor == 31

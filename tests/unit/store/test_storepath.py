"""Store path parsing and calculation against vectors.md §5 (NAR hashes from §3)."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cafs.errors import StorePathError, ValidationError
from cafs.store import nixbase32
from cafs.store.hashes import CAHash, NixHash
from cafs.store.storepath import (
    NAME_CHARS,
    StorePath,
    ca_store_path,
    make_store_path,
    text_store_path,
)

NET_TOOLS = "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432"
NET_TOOLS_DIGEST = bytes.fromhex("8a12321522fd91efbd60ebb2481af88580f61600")
NET_TOOLS_NAME = "net-tools-1.60_p20170221182432"


# --- §5.1 parsing -------------------------------------------------------------------------


def test_parse_basename() -> None:
    path = StorePath.from_basename(NET_TOOLS)
    assert path.digest == NET_TOOLS_DIGEST
    assert path.name == NET_TOOLS_NAME
    assert path.basename == NET_TOOLS
    assert path.hash_part == NET_TOOLS[:32]
    assert StorePath.from_basename(path.basename) == path
    assert StorePath.from_basename(NET_TOOLS.encode()) == path


def test_leading_dot_is_allowed() -> None:
    path = StorePath.from_basename("fli4bwscgna7lpm7v5xgnjxrxh0yc7ra-.gitignore")
    assert path.name == ".gitignore"


@pytest.mark.parametrize(
    "basename",
    [
        pytest.param("00bgd045z0d4icpbc2yy-", id="too-short"),
        pytest.param("00bgd045z0d4icpbc2yy-" + "a" * 212, id="excessive-length"),
        pytest.param("00bgd045z0d4icpbc2yy-net-tools-1.60_p20170221182432", id="20-char-hash"),
        pytest.param(
            "00bgd045z0d4icpbc2yyz4gx48aku4la-net-tools-1.60_p20170221182432", id="invalid-char-u"
        ),
        pytest.param(NET_TOOLS + "/bin/arp", id="slash-in-name"),
        pytest.param(
            "00bgd045z0d4icpbc2yyz4gx48ak44lanet-tools-1.60_p20170221182432", id="missing-dash"
        ),
        pytest.param("00bgd045z0d4icpbc2yyz4gx48ak44la-" + "a" * 212, id="name-212-bytes"),
        pytest.param("00bgd045z0d4icpbc2yyz4gx48ak44la-a b", id="space-in-name"),
        pytest.param("", id="empty"),
    ],
)
def test_parse_failures(basename: str) -> None:
    with pytest.raises(StorePathError):
        StorePath.from_basename(basename)


def test_store_path_error_is_a_validation_error() -> None:
    assert issubclass(StorePathError, ValidationError)


def test_name_of_211_bytes_is_the_limit() -> None:
    assert StorePath.from_basename("00bgd045z0d4icpbc2yyz4gx48ak44la-" + "a" * 211)


def test_from_absolute() -> None:
    path = StorePath.from_absolute(f"/nix/store/{NET_TOOLS}")
    assert path == StorePath.from_basename(NET_TOOLS)
    assert path.absolute == f"/nix/store/{NET_TOOLS}"
    assert str(path) == path.absolute


@pytest.mark.parametrize(
    "text", ["foobar-123", NET_TOOLS, f"/nix/stor/{NET_TOOLS}", f"/nix/store/{NET_TOOLS}/bin"]
)
def test_from_absolute_failures(text: str) -> None:
    with pytest.raises(StorePathError):
        StorePath.from_absolute(text)


def test_from_absolute_refuses_missing_store_dir_clearly() -> None:
    with pytest.raises(StorePathError, match="not in /nix/store"):
        StorePath.from_absolute("foobar-123")


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        (f"/nix/store/{NET_TOOLS}", ""),
        (f"/nix/store/{NET_TOOLS}/", ""),
        (f"/nix/store/{NET_TOOLS}/bin/arp", "bin/arp"),
    ],
)
def test_from_absolute_full(text: str, rest: str) -> None:
    assert StorePath.from_absolute_full(text) == (StorePath.from_basename(NET_TOOLS), rest)


@pytest.mark.parametrize("text", ["/nix/store/", "/nix/store/foo", "foobar-123", NET_TOOLS])
def test_from_absolute_full_failures(text: str) -> None:
    with pytest.raises(StorePathError):
        StorePath.from_absolute_full(text)


ORDERED = [
    "0lk5dgi01r933abzfj9c9wlndg82yd3g-psutil-5.9.6.tar.gz.drv",
    "1xj43bva89f9qmwm37zl7r3d7m67i9ck-shorttoc-1.3-tex.drv",
    "2gb633czchi20jq1kqv70rx2yvvgins8-lifted-base-0.2.3.12.tar.gz.drv",
    "2vksym3r3zqhp15q3fpvw2mnvffv11b9-docbook-xml-4.5.zip.drv",
    "5q918awszjcz5720xvpc2czbg1sdqsf0-rust_renaming-0.1.0-lib",
    "7jw30i342sr2p1fmz5xcfnch65h4zbd9-dbus-1.14.10.tar.xz.drv",
    "96yqwqhnp3qya4rf4n0rcl0lwvrylp6k-eap8021x-222.40.1.tar.gz.drv",
    "9gjqg36a1v0axyprbya1hkaylmnffixg-virtualenv-20.24.5.tar.gz.drv",
    "a4i5mci2g9ada6ff7ks38g11dg6iqyb8-perl-5.32.1.drv",
    "a5g76ljava4h5pxlggz3aqdhs3a4fk6p-ToolchainInfo.plist.drv",
    "db46l7d6nswgz4ffp1mmd56vjf9g51v6-version.plist.drv",
    "g6f7w20sd7vwy0rc1r4bfsw4ciclrm4q-crates-io-num_cpus-1.12.0.drv",
    "iw82n1wwssb8g6772yddn8c3vafgv9np-bootstrap-stage1-sysctl-stdenv-darwin.drv",
    "lp78d1y5wxpcn32d5c4r7xgbjwiw0cgf-logo.svg.drv",
    "mf00ank13scv1f9l1zypqdpaawjhfr3s-python3.11-psutil-5.9.6.drv",
    "mpfml61ra7pz90124jx9r3av0kvkz2w1-perl5.36.0-Encode-Locale-1.05",
    "qhsvwx4h87skk7c4mx0xljgiy3z93i23-source.drv",
    "riv7d73adim8hq7i04pr8kd0jnj93nav-fdk-aac-2.0.2.tar.gz.drv",
    "s64b9031wga7vmpvgk16xwxjr0z9ln65-human-signals-5.0.0.tgz-extracted",
    "w6svg3m2xdh6dhx0gl1nwa48g57d3hxh-thiserror-1.0.49",
]


def test_ordering() -> None:
    paths = [StorePath.from_basename(b) for b in ORDERED]
    assert sorted(reversed(paths)) == paths
    for smaller, larger in itertools.pairwise(paths):
        assert smaller < larger and smaller <= larger
        assert larger > smaller and larger >= smaller
    # The order is that of the digest bytes read from the last to the first.
    assert sorted(paths, key=lambda p: p.digest[::-1]) == paths


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20))
def test_order_is_reversed_digest_order(a: bytes, b: bytes) -> None:
    pa, pb = StorePath(a, "x"), StorePath(b, "x")
    assert (pa < pb) == (a[::-1] < b[::-1])


@given(
    st.binary(min_size=20, max_size=20),
    st.text(alphabet=sorted(NAME_CHARS), min_size=1, max_size=211),
)
def test_basename_round_trip(digest: bytes, name: str) -> None:
    path = StorePath(digest, name)
    assert StorePath.from_basename(path.basename) == path
    assert StorePath.from_absolute(path.absolute) == path
    assert StorePath.parse(path.absolute) == path
    assert StorePath.parse(path.basename) == path


def test_dummy_fixture_path() -> None:
    path = StorePath.from_basename("00000000000000000000000000000000-dummy")
    assert path.digest == bytes(20)
    assert path.name == "dummy"


# --- §5.2 calculation ---------------------------------------------------------------------


def test_text_path() -> None:
    foo = text_store_path("foo", b"bar")
    assert foo.absolute == "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"


def test_text_path_with_reference() -> None:
    foo = StorePath.from_absolute("/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo")
    baz = text_store_path("baz", foo.absolute.encode(), [foo])
    assert baz.absolute == "/nix/store/5xd714cbfnkz02h2vbsj4fm03x3f15nf-baz"


def test_text_path_through_ca_hash() -> None:
    ca = CAHash("text", NixHash.of("sha256", b"bar"))
    assert ca_store_path("foo", ca).absolute == "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"


def test_ca_path_nar_sha1() -> None:
    ca = CAHash("nar", NixHash("sha1", bytes.fromhex("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33")))
    assert ca_store_path("bar", ca).absolute == "/nix/store/mp57d33657rf34lzvlbpfa1gjfv5gmpg-bar"


def test_ca_path_nar_sha256_with_reference() -> None:
    digest = nixbase32.decode("1xqkzcb3909fp07qngljr4wcdnrh1gdam1m2n29i6hhrxlmkgkv1")
    ref = StorePath.from_absolute("/nix/store/dxwkwjzdaq7ka55pkk252gh32bgpmql4-foo")
    path = ca_store_path("baz", CAHash("nar", NixHash("sha256", digest)), [ref])
    assert path.absolute == "/nix/store/s89y431zzhmdn3k8r96rvakryddkpv2v-baz"


def test_make_store_path_refuses_bad_names() -> None:
    with pytest.raises(StorePathError):
        make_store_path("source", bytes(32), "a/b")


def test_fixed_output_paths_cannot_have_references() -> None:
    ref = StorePath(bytes(20), "dummy")
    ca = CAHash("flat", NixHash("sha1", bytes(20)))
    with pytest.raises(StorePathError):
        ca_store_path("x", ca, [ref])


# Minimal NAR writer, so the §3 fixtures are built here rather than copied as bytes.
def _token(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data + bytes(-len(data) % 8)


def _nar(*tokens: bytes) -> bytes:
    return b"".join(_token(t) for t in (b"nix-archive-1", *tokens))


SYMLINK = (b"(", b"type", b"symlink", b"target", b"/nix/store/somewhereelse", b")")
EMPTY_FILE = (b"(", b"type", b"regular", b"contents", b"", b")")


def _entry(name: bytes, node: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return (b"entry", b"(", b"name", name, b"node", *node, b")")


KEEP_DIR = (b"(", b"type", b"directory", *_entry(b".keep", EMPTY_FILE), b")")
NAR_SYMLINK = _nar(*SYMLINK)
NAR_HELLOWORLD = _nar(b"(", b"type", b"regular", b"contents", b"Hello World!", b")")
NAR_COMPLICATED = _nar(
    b"(",
    b"type",
    b"directory",
    *_entry(b".keep", EMPTY_FILE),
    *_entry(b"aa", SYMLINK),
    *_entry(b"keep", KEEP_DIR),
    b")",
)


@pytest.mark.parametrize(
    ("name", "nar", "size", "sha256_nixbase32", "expected"),
    [
        (
            "symlink",
            NAR_SYMLINK,
            136,
            "1wcwacrb5q36hpsx1shk0dkm26hwbmqmgi0nm973h9jqkdz3jz89",
            "/nix/store/11i0w7x0adl6iyydsilpl0nc8v1zc2m4-symlink",
        ),
        (
            "helloworld",
            NAR_HELLOWORLD,
            128,
            "0h40zg6hakjv951nyhdad7mv9za56m3za5gnpiw5s1hbwcxzdrq3",
            "/nix/store/vf9s1dz1a2nbnnilsxnaa3ri1c0m9kwg-helloworld",
        ),
        (
            "complicated",
            NAR_COMPLICATED,
            840,
            "06li2smqgskxxr291x1cgzf61rzm7c8f93bisnglq0nzm1wj5mgb",
            "/nix/store/pngqdzggfqs4q7fg6iywqnlzcgsp85qr-complicated",
        ),
    ],
)
def test_import_paths(
    name: str, nar: bytes, size: int, sha256_nixbase32: str, expected: str
) -> None:
    assert len(nar) == size
    digest = hashlib.sha256(nar).digest()
    assert nixbase32.encode(digest) == sha256_nixbase32
    path = ca_store_path(name, CAHash("nar", NixHash("sha256", digest)))
    assert path.absolute == expected
    # the same, spelled as tvix-store import does it
    kind_fingerprint = f"source:sha256:{digest.hex()}:/nix/store:{name}"
    folded = bytearray(20)
    for i, byte in enumerate(hashlib.sha256(kind_fingerprint.encode()).digest()):
        folded[i % 20] ^= byte
    assert StorePath(bytes(folded), name) == path

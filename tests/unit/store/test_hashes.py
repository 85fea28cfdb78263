"""Nix hashes and content addresses (vectors.md §3, §4, §6)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cafs.errors import HashFormatError
from cafs.store import nixbase32
from cafs.store.hashes import DIGEST_SIZES, CAHash, NixHash

SHA256_HEX = "b3a24de97a8fdbc835b9833169501030b8977031bcb54b3b3ac13740f846ab30"
SHA256_NB32 = "0c5b8vw40dy178xlpddw65q9gf1h2186jcc3p4swinwggbllv8mk"
SHA1_HEX = "5cba3c77236ae4f9650270a27fbad375551fa60a"
SHA1_NB32 = "1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw"


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{SHA256_NB32}",
        f"sha256:{SHA256_HEX}",
        f"sha256:{base64.b64encode(bytes.fromhex(SHA256_HEX)).decode()}",
        f"sha256-{base64.b64encode(bytes.fromhex(SHA256_HEX)).decode()}",
    ],
)
def test_parse_every_spelling(text: str) -> None:
    nix_hash = NixHash.parse(text)
    assert nix_hash == NixHash("sha256", bytes.fromhex(SHA256_HEX))
    assert nix_hash.to_nix_string() == f"sha256:{SHA256_NB32}"
    assert str(nix_hash) == f"sha256:{SHA256_NB32}"


def test_sri() -> None:
    nix_hash = NixHash("sha1", bytes.fromhex(SHA1_HEX))
    assert NixHash.parse(nix_hash.to_sri()) == nix_hash


def test_of() -> None:
    assert NixHash.of("sha256", b"") == NixHash("sha256", hashlib.sha256(b"").digest())
    # md5 of the helloworld fixture, the Flat CA of vectors.md §3
    assert NixHash.of("md5", b"Hello World!").digest.hex() == "ed076287532e86365e841e92bfc50d8c"


@pytest.mark.parametrize(
    "text",
    [
        "sha256",
        "sha256:",
        "sha257:" + SHA256_NB32,
        "blake3:" + SHA256_NB32,
        "sha256:" + SHA256_NB32[:-1],
        "sha256:" + SHA256_HEX[:-1] + "g",
        "sha1:" + SHA256_NB32,
        "sha256-notbase64!",
    ],
)
def test_parse_failures(text: str) -> None:
    with pytest.raises(HashFormatError):
        NixHash.parse(text)


@pytest.mark.parametrize(("algo", "size"), sorted(DIGEST_SIZES.items()))
def test_wrong_digest_size(algo: str, size: int) -> None:
    with pytest.raises(HashFormatError, match=f"{size} bytes"):
        NixHash(algo, bytes(size + 1))  # type: ignore[arg-type]


def test_ca_nar_sha1_vector() -> None:
    ca = CAHash.parse(f"fixed:r:sha1:{SHA1_NB32}")
    assert ca == CAHash("nar", NixHash("sha1", bytes.fromhex(SHA1_HEX)))
    assert ca.to_nix_string() == f"fixed:r:sha1:{SHA1_NB32}"
    assert nixbase32.decode(SHA1_NB32).hex() == SHA1_HEX


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (f"text:sha256:{SHA256_NB32}", "text"),
        (f"fixed:r:sha256:{SHA256_NB32}", "nar"),
        (f"fixed:sha256:{SHA256_NB32}", "flat"),
        (f"fixed:sha1:{SHA1_NB32}", "flat"),
    ],
)
def test_ca_forms(text: str, kind: str) -> None:
    ca = CAHash.parse(text)
    assert ca.kind == kind
    assert ca.to_nix_string() == text
    assert str(ca) == text


@pytest.mark.parametrize(
    "text",
    [
        f"text:sha1:{SHA1_NB32}",
        f"fixed:r:sha3:{SHA256_NB32}",
        f"source:sha256:{SHA256_NB32}",
        f"sha256:{SHA256_NB32}",
        "fixed:r:",
        "",
    ],
)
def test_ca_failures(text: str) -> None:
    with pytest.raises(HashFormatError):
        CAHash.parse(text)


def test_text_ca_needs_sha256() -> None:
    with pytest.raises(HashFormatError):
        CAHash("text", NixHash("sha1", bytes(20)))


@given(
    st.sampled_from(sorted(DIGEST_SIZES)).flatmap(
        lambda algo: st.tuples(
            st.just(algo), st.binary(min_size=DIGEST_SIZES[algo], max_size=DIGEST_SIZES[algo])
        )
    ),
    st.sampled_from(["nar", "flat"]),
)
def test_ca_round_trip(algo_digest: tuple[str, bytes], kind: str) -> None:
    algo, digest = algo_digest
    ca = CAHash(kind, NixHash(algo, digest))  # type: ignore[arg-type]
    assert CAHash.parse(ca.to_nix_string()) == ca
    assert NixHash.parse(ca.hash.to_nix_string()) == ca.hash
    assert NixHash.parse(ca.hash.to_sri()) == ca.hash

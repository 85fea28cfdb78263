"""Ed25519 keys and signatures in Nix's text form, against vectors.md §6."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cafs.errors import SignatureError, ValidationError
from cafs.store.signatures import (
    Signature,
    SigningKey,
    VerifyingKey,
    load_signing_key,
)

FINGERPRINT = (
    "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;"
    "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;"
    "/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,"
    "/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,"
    "/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,"
    "/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
)
CACHE_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
SIG_B64 = "TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ=="
SIG_HEX = (
    "4ec4d36f75864d92a986f61d0475f0a3ac1e5482e64f2b548cb07ebdc5fcf5f3"
    "a38d189c08798a0384423cc54b923e93309e06317dc73d5591743d6191e29905"
)
CORRUPTED_B64 = (
    "TsTTb000000000000000000000000ytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ=="
)

EXAMPLE_KEYPAIR = (
    "cache.example.com-1:cCta2MEsRNuYCgWYyeRXLyfoFpKhQJKn8gLMeXWAb7vIpRKKo/3JoxJ24OYa3DxT2JVV38Kj"
    "K/1ywHWuMe2JEw=="
)
EXAMPLE_PUBLIC = "cache.example.com-1:yKUSiqP9yaMSduDmGtw8U9iVVd/Coyv9csB1rjHtiRM="
DO_NOT_USE_KEYPAIR = (
    "do.not.use:sGPzxuK5WvWPraytx+6sjtaff866sYlfvErE6x0hFEhy5eqe7OVZ8ZMqZ/ME/HaRdKGNGvJkyGKXYTae"
    "A6lR3A=="
)
DO_NOT_USE_PUBLIC = "do.not.use:cuXqnuzlWfGTKmfzBPx2kXShjRryZMhil2E2ngOpUdw="

SIGN_FINGERPRINT = (
    "1;/nix/store/0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01;"
    "sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfg;22552;"
)
DUMMY_FINGERPRINT = (
    "1;/nix/store/00000000000000000000000000000000-dummy;"
    "sha256:0000000000000000000000000000000000000000000000000000;0;"
    "/nix/store/00000000000000000000000000000000-dummy"
)


# --- signatures ---------------------------------------------------------------------------


def test_parse_signature() -> None:
    sig = Signature.parse(f"cache.nixos.org-1:{SIG_B64}")
    assert sig.name == "cache.nixos.org-1"
    assert sig.data == bytes.fromhex(SIG_HEX)
    assert sig.to_nix_string() == f"cache.nixos.org-1:{SIG_B64}"
    assert str(sig) == sig.to_nix_string()


@pytest.mark.parametrize(
    ("sig_name", "b64", "fingerprint", "valid"),
    [
        pytest.param("cache.nixos.org-1", SIG_B64, FINGERPRINT, True, id="valid"),
        pytest.param("cache.nixos.org-2", SIG_B64, FINGERPRINT, True, id="name-ignored"),
        pytest.param("cache.nixos.org-1", CORRUPTED_B64, FINGERPRINT, False, id="corrupted"),
        pytest.param("cache.nixos.org-1", SIG_B64, FINGERPRINT[:5], False, id="wrong-fingerprint"),
    ],
)
def test_signature_level_verify_ignores_the_name(
    sig_name: str, b64: str, fingerprint: str, valid: bool
) -> None:
    key = VerifyingKey.parse(CACHE_KEY)
    sig = Signature.parse(f"{sig_name}:{b64}")
    assert sig.verify(fingerprint, key) is valid
    assert sig.verify(fingerprint.encode(), key) is valid
    assert key.verify_bytes(fingerprint, sig.data) is valid


@pytest.mark.parametrize(
    ("sig_name", "valid"),
    [("cache.nixos.org-1", True), ("cache.nixos.org", False), ("cache.nixos.org-2", False)],
)
def test_key_level_verify_requires_the_name(sig_name: str, valid: bool) -> None:
    key = VerifyingKey.parse(CACHE_KEY)
    sig = Signature.parse(f"{sig_name}:{SIG_B64}")
    assert key.verify(FINGERPRINT, sig) is valid


def test_a_key_under_another_name_verifies_under_that_name() -> None:
    key = VerifyingKey.parse("cheesecake:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=")
    assert not key.verify(FINGERPRINT, Signature.parse(f"cache.nixos.org-1:{SIG_B64}"))
    assert key.verify(FINGERPRINT, Signature.parse(f"cheesecake:{SIG_B64}"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param(
            "cache.nixos.org-1:o1DTsjCz0PofLJ216P2RBuSulI8BAb6zHxWE4N+tzlcELk5Uk/GO2SCxWTRN5wJutLZZ"
            "+cHTMdWqOHF8",
            "characters",
            id="wrong-length",
        ),
        pytest.param(
            "test\n:u01BybwQhyI5H1bW1EIWXssMDhDDIvXOG5uh8Qzgdyjz6U1qg6DHhMAvXZOUStIj6X5t4/ufFgR8i3fjf0"
            "bMAw==",
            "not allowed",
            id="name-newline",
        ),
        pytest.param(
            "test :u01BybwQhyI5H1bW1EIWXssMDhDDIvXOG5uh8Qzgdyjz6U1qg6DHhMAvXZOUStIj6X5t4/ufFgR8i3fj"
            "f0bMAw==",
            "not allowed",
            id="name-space",
        ),
        pytest.param(
            ":u01BybwQhyI5H1bW1EIWXssMDhDDIvXOG5uh8Qzgdyjz6U1qg6DHhMAvXZOUStIj6X5t4/ufFgR8i3fjf0bMAw==",
            "empty",
            id="empty-name",
        ),
        pytest.param(
            "u01BybwQhyI5H1bW1EIWXssMDhDDIvXOG5uh8Qzgdyjz6U1qg6DHhMAvXZOUStIj6X5t4/ufFgR8i3fjf0bMAw==",
            "name:base64",
            id="b64-only",
        ),
        pytest.param(f"a:{SIG_B64[:-2]}AA", "base64", id="bad-padding"),
        pytest.param(f"a:{SIG_B64[:-3]}R==", "base64", id="non-canonical-trailing-bits"),
        pytest.param(f"a:{SIG_B64[:40]}!{SIG_B64[41:]}", "base64", id="bad-char"),
        pytest.param(f"a:{SIG_B64}=", "characters", id="too-long"),
    ],
)
def test_signature_parse_failures(text: str, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        Signature.parse(text)


def test_signature_error_is_a_validation_error() -> None:
    assert issubclass(SignatureError, ValidationError)


def test_unicode_alphanumeric_names_are_allowed() -> None:
    assert Signature.parse(f"câché.ñix-1:{SIG_B64}").name == "câché.ñix-1"


@pytest.mark.parametrize("size", [0, 63, 65])
def test_signature_constructor_checks_length(size: int) -> None:
    with pytest.raises(SignatureError, match="64 bytes"):
        Signature("a", bytes(size))


# --- verifying keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "b64"),
    [
        (CACHE_KEY, "cache.nixos.org-1", "6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="),
        (
            "cheesecake:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
            "cheesecake",
            "6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
        ),
        (
            "test1:tLAEn+EeaBUJYqEpTd2yeerr7Ic6+0vWe+aXL/vYUpE=",
            "test1",
            "tLAEn+EeaBUJYqEpTd2yeerr7Ic6+0vWe+aXL/vYUpE=",
        ),
    ],
)
def test_parse_verifying_key(text: str, name: str, b64: str) -> None:
    key = VerifyingKey.parse(text)
    assert key.name == name
    assert key.key == base64.b64decode(b64)
    assert key.to_nix_string() == text
    assert str(key) == text


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", id="no-name"),
        pytest.param("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY", id="no-pad"),
        pytest.param("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDS", id="truncated"),
        pytest.param(":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", id="empty-name"),
        pytest.param(f"cache.nixos.org-1:{SIG_B64}", id="a-signature"),
    ],
)
def test_verifying_key_parse_failures(text: str) -> None:
    with pytest.raises(SignatureError):
        VerifyingKey.parse(text)


def test_verifying_key_not_on_the_curve() -> None:
    # y = 2 has no x on Ed25519
    with pytest.raises(SignatureError, match="not a point"):
        VerifyingKey("k", (2).to_bytes(32, "little"))


def test_small_order_public_key_never_verifies() -> None:
    # The neutral element as public key with R = neutral element and S = 0 satisfies the
    # plain Ed25519 equation for every message; strict verification refuses it.
    identity = (1).to_bytes(32, "little")
    key = VerifyingKey("weak", identity)
    forged = Signature("weak", identity + bytes(32))
    assert not key.verify("anything", forged)
    assert not key.verify("anything else", forged)


def test_small_order_r_is_refused() -> None:
    key = VerifyingKey.parse(CACHE_KEY)
    order_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
    assert not key.verify_bytes(FINGERPRINT, order_8 + bytes.fromhex(SIG_HEX)[32:])


def test_non_canonical_s_is_refused() -> None:
    key = VerifyingKey.parse(CACHE_KEY)
    order = 2**252 + 27742317777372353535851937790883648493
    data = bytes.fromhex(SIG_HEX)
    s = int.from_bytes(data[32:], "little") + order
    assert s < 2**256
    assert not key.verify_bytes(FINGERPRINT, data[:32] + s.to_bytes(32, "little"))


def test_verify_bytes_wrong_length() -> None:
    assert not VerifyingKey.parse(CACHE_KEY).verify_bytes(FINGERPRINT, bytes(63))


# --- signing keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keypair", "public"),
    [(EXAMPLE_KEYPAIR, EXAMPLE_PUBLIC), (DO_NOT_USE_KEYPAIR, DO_NOT_USE_PUBLIC)],
)
def test_parse_keypairs(keypair: str, public: str) -> None:
    key = SigningKey.parse(keypair)
    assert key.verifying_key == VerifyingKey.parse(public)
    assert key.name == public.split(":")[0]
    assert key.to_nix_string() == keypair
    assert SigningKey.parse(f"  {keypair}\n") == key
    assert "SigningKey" in repr(key)
    assert keypair.split(":")[1][:20] not in repr(key)


def test_derived_signature_over_the_sign_narinfo() -> None:
    sig = SigningKey.parse(EXAMPLE_KEYPAIR).sign(SIGN_FINGERPRINT)
    assert sig.to_nix_string() == (
        "cache.example.com-1:s0RTa24/7x5lstmy93KSUW/rD0LR8M0VqMd1t2otpglPhPtJerWS8UNGn+xRRSMOfo/5"
        "Kc7gy+mPSW++e4twAg=="
    )
    assert VerifyingKey.parse(EXAMPLE_PUBLIC).verify(SIGN_FINGERPRINT, sig)


def test_derived_signature_of_the_keyfile_signing_wrapper() -> None:
    sig = SigningKey.parse(DO_NOT_USE_KEYPAIR).sign(DUMMY_FINGERPRINT.encode())
    assert sig.to_nix_string() == (
        "do.not.use:xl4q2L5wQMou13ZQ9/YPqK1z/DSIYycTtndVNfp2ybT8Cpg+yPv1sCQN8VVWppnq5BXTuMhjaq7K/"
        "ebYN4LYBg=="
    )
    assert VerifyingKey.parse(DO_NOT_USE_PUBLIC).verify(DUMMY_FINGERPRINT, sig)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param(EXAMPLE_KEYPAIR[:-3], "characters", id="truncated"),
        pytest.param(EXAMPLE_KEYPAIR.replace(":", ""), "name:base64", id="no-colon"),
        pytest.param(":" + EXAMPLE_KEYPAIR.split(":")[1], "empty", id="empty-name"),
        pytest.param(EXAMPLE_PUBLIC, "characters", id="a-public-key"),
        pytest.param(
            EXAMPLE_KEYPAIR.split(":")[0]
            + ":"
            + base64.b64encode(
                base64.b64decode(EXAMPLE_KEYPAIR.split(":")[1])[:32]
                + base64.b64decode(DO_NOT_USE_PUBLIC.split(":")[1])
            ).decode(),
            "does not match",
            id="mismatched-halves",
        ),
    ],
)
def test_keypair_parse_failures(text: str, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        SigningKey.parse(text)


def test_parse_errors_do_not_show_the_secret() -> None:
    secret_part = EXAMPLE_KEYPAIR.split(":")[1]
    with pytest.raises(SignatureError) as info:
        SigningKey.parse(EXAMPLE_KEYPAIR[:-1] + "!")
    assert secret_part[:20] not in str(info.value)


def test_generate_sign_verify() -> None:
    key = SigningKey.generate("test-key.1")
    sig = key.sign("hello")
    assert sig.name == "test-key.1"
    assert key.verifying_key.verify("hello", sig)
    assert not key.verifying_key.verify("hellO", sig)
    assert not SigningKey.generate("test-key.1").verifying_key.verify("hello", sig)
    assert SigningKey.parse(key.to_nix_string()) == key


def test_generate_checks_the_name() -> None:
    with pytest.raises(SignatureError):
        SigningKey.generate("bad name")


def test_load_signing_key(tmp_path: Path) -> None:
    path = tmp_path / "cache.secret"
    path.write_text(EXAMPLE_KEYPAIR + "\n")
    assert load_signing_key(path).verifying_key.to_nix_string() == EXAMPLE_PUBLIC
    assert load_signing_key(str(path)) == SigningKey.parse(EXAMPLE_KEYPAIR)


def test_load_signing_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.secret"
    path.write_text("no colon here")
    with pytest.raises(SignatureError, match=r"broken\.secret"):
        load_signing_key(path)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200))
def test_sign_verify_round_trip(seed: bytes, message: bytes) -> None:
    key = SigningKey("k", seed)
    sig = key.sign(message)
    assert Signature.parse(sig.to_nix_string()) == sig
    assert key.verifying_key.verify(message, sig)
    assert not key.verifying_key.verify(message + b"x", sig)

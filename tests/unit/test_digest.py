"""BLAKE3 digests and their display form, against vectors.md §1."""

from __future__ import annotations

import pytest

from cafs.castore.digest import Digest
from cafs.errors import InvalidDigestError
from tests.fixtures import BLOB_A, BLOB_B

# (input, hex, base64) from vectors.md §1
VECTORS = [
    (b"", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
     "rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI="),
    (b"Hello World!", "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c",
     "XKeBWty0hOmhNsEe/mnB1TAXbVSbXRjQOOtSgLSzRww="),
    (BLOB_A, "7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63",
     "e3AVu5LPCzGAN3AqbN2B3uQSJPc0aEwsEizWNZyx7mM="),
    (BLOB_B, "a82c5154a7a0c262c6fdb929a317585646f8fbcf80326d0a7b8747edaf2d99d2",
     "qCxRVKegwmLG/bkpoxdYVkb4+8+AMm0Ke4dH7a8tmdI="),
    (b"x86_64-linux", "28e337fc81c4c7b61f227027949a4012561ecead12c67f5f473ef1b8297035f0",
     "KOM3/IHEx7YfInAnlJpAElYezq0Sxn9fRz7xuClwNfA="),
    (b"Hello World", "41f8394111eb713a22165c46c90ab8f0fd9399c92028fd6d288944b23ff5bf76",
     "Qfg5QRHrcToiFlxGyQq48P2TmckgKP1tKIlEsj/1v3Y="),
    (bytes.fromhex("01"), "48fc721fbbc172e0925fa27af1671de225ba927134802998b10a1568a188652b",
     "SPxyH7vBcuCSX6J68Wcd4iW6knE0gCmYsQoVaKGIZSs="),
    (bytes.fromhex("02030405"), "024a7fdb2a86c4eae9600a1cfbfd4487ddc15c0a8fa59abfebd6f92bd0031fe5",
     "Akp/2yqGxOrpYAoc+/1Eh93BXAqPpZq/69b5K9ADH+U="),
    (bytes.fromhex("06"), "1c310b6bdadd69991cd4e5dbef96c2638536c32b534e3ed64785846bfcebd206",
     "HDELa9rdaZkc1OXb75bCY4U2wytTTj7WR4WEa/zr0gY="),
    (bytes.fromhex("0708"), "d241b5ab32d2206564b51c8ec05944f6af6d7622c2f607f34c0622223a2b3cd7",
     "0kG1qzLSIGVktRyOwFlE9q9tdiLC9gfzTAYiIjorPNc="),
    (bytes.fromhex("090a0b0c0d0e0f"),
     "465ded54852258aadefafc109bac1cb1c1275ad9ac15af4fe9996dff9473f50e",
     "Rl3tVIUiWKre+vwQm6wcscEnWtmsFa9P6Zlt/5Rz9Q4="),
    (bytes(range(16)), "a6a492965517a830cb75fdb713465aa465f2f098233896fea44c1d98268bf9e3",
     "pqSSllUXqDDLdf23E0ZapGXy8JgjOJb+pEwdmCaL+eM="),
]  # fmt: skip


@pytest.mark.parametrize(("data", "hex_digest", "b64"), VECTORS)
def test_blob_digest_vectors(data: bytes, hex_digest: str, b64: str) -> None:
    digest = Digest.of(data)
    assert digest.hex() == hex_digest
    assert str(digest) == f"b3:{b64}"
    assert Digest.parse(f"b3:{b64}") == digest
    assert Digest.parse(f"blake3-{b64}") == digest
    assert Digest.parse(hex_digest) == digest


def test_display_form_is_47_bytes() -> None:
    assert len(str(Digest.of(BLOB_A))) == 47
    assert str(Digest.of(BLOB_A)) == "b3:e3AVu5LPCzGAN3AqbN2B3uQSJPc0aEwsEizWNZyx7mM="


def test_large_input_uses_the_same_digest_multithreaded() -> None:
    data = BLOB_B * 4  # over the multi-threading threshold
    import blake3

    assert Digest.of(data) == blake3.blake3(data).digest()


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(InvalidDigestError, match=f"{length} bytes"):
        Digest(bytes(length))


@pytest.mark.parametrize(
    "text",
    ["", "b3:", "b3:!!!!", "b3:AAAA", "blake3-xyz", "zz" * 32, "af13", "sha256:abcd"],
)
def test_unparseable_digest_strings(text: str) -> None:
    with pytest.raises(InvalidDigestError):
        Digest.parse(text)

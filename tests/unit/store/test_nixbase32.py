"""nixbase32 against vectors.md §4."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cafs.errors import HashFormatError
from cafs.store import nixbase32

VECTORS = [
    ("", ""),
    ("0z", "1f"),
    ("00bgd045z0d4icpbc2yyz4gx48ak44la", "8a12321522fd91efbd60ebb2481af88580f61600"),
    (
        "0c5b8vw40dy178xlpddw65q9gf1h2186jcc3p4swinwggbllv8mk",
        "b3a24de97a8fdbc835b9833169501030b8977031bcb54b3b3ac13740f846ab30",
    ),
    ("1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw", "5cba3c77236ae4f9650270a27fbad375551fa60a"),
]


@pytest.mark.parametrize(("encoded", "hex_data"), VECTORS)
def test_vectors(encoded: str, hex_data: str) -> None:
    assert nixbase32.decode(encoded) == bytes.fromhex(hex_data)
    assert nixbase32.encode(bytes.fromhex(hex_data)) == encoded


@pytest.mark.parametrize(("encoded", "hex_data"), VECTORS[2:])
def test_decode_fixed_vectors(encoded: str, hex_data: str) -> None:
    assert nixbase32.decode_fixed(encoded, len(hex_data) // 2) == bytes.fromhex(hex_data)


@pytest.mark.parametrize(
    ("encoded", "reason"),
    [
        ("zz", "beyond the last byte"),  # non-zero carry
        ("c0", "beyond the last byte"),  # trailing bits set
        ("0", "length"),
        ("0zz", "length"),
        ("0e", "character"),  # e, o, t, u are not in the alphabet
        ("0o", "character"),
        ("0t", "character"),
        ("0u", "character"),
        ("0Z", "character"),
    ],
)
def test_must_fail(encoded: str, reason: str) -> None:
    with pytest.raises(HashFormatError, match=reason):
        nixbase32.decode(encoded)


def test_decode_fixed_wrong_length() -> None:
    with pytest.raises(HashFormatError, match="length 2 for 32 bytes"):
        nixbase32.decode_fixed("00", 32)


@pytest.mark.parametrize(
    ("chars", "size"), [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 3), (32, 20)]
)
def test_decoded_length(chars: int, size: int) -> None:
    assert nixbase32.decoded_length(chars) == size


@pytest.mark.parametrize(("size", "chars"), [(0, 0), (1, 2), (20, 32), (32, 52), (64, 103)])
def test_encoded_length(size: int, chars: int) -> None:
    assert nixbase32.encoded_length(size) == chars


def test_alphabet_has_no_e_o_t_u() -> None:
    assert len(nixbase32.ALPHABET) == 32
    assert not set("eotu") & set(nixbase32.ALPHABET)


@given(st.binary(max_size=80))
def test_round_trip(data: bytes) -> None:
    encoded = nixbase32.encode(data)
    assert len(encoded) == nixbase32.encoded_length(len(data))
    assert set(encoded) <= set(nixbase32.ALPHABET)
    assert nixbase32.decode(encoded) == data
    assert nixbase32.decode_fixed(encoded, len(data)) == data


@given(st.text(alphabet=nixbase32.ALPHABET, max_size=60))
def test_decode_accepts_only_canonical_strings(text: str) -> None:
    # Every string decode accepts is what encode writes for its bytes.
    try:
        data = nixbase32.decode(text)
    except HashFormatError:
        return
    assert nixbase32.encode(data) == text

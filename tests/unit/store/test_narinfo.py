"""Narinfo parsing, rendering, fingerprints and signing, against vectors.md §6."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cafs.errors import NarInfoError, ValidationError
from cafs.store import nixbase32
from cafs.store.hashes import DIGEST_SIZES, CAHash, NixHash
from cafs.store.narinfo import NO_FLAGS, NarInfo, NarInfoFlag, fingerprint
from cafs.store.signatures import Signature, SigningKey, VerifyingKey
from cafs.store.storepath import NAME_CHARS, StorePath

CACHE_KEY = VerifyingKey.parse("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=")
EXAMPLE_KEYPAIR = (
    "cache.example.com-1:cCta2MEsRNuYCgWYyeRXLyfoFpKhQJKn8gLMeXWAb7vIpRKKo/3JoxJ24OYa3DxT2JVV38Kj"
    "K/1ywHWuMe2JEw=="
)
EXAMPLE_PUBLIC = VerifyingKey.parse(
    "cache.example.com-1:yKUSiqP9yaMSduDmGtw8U9iVVd/Coyv9csB1rjHtiRM="
)
DO_NOT_USE_KEYPAIR = (
    "do.not.use:sGPzxuK5WvWPraytx+6sjtaff866sYlfvErE6x0hFEhy5eqe7OVZ8ZMqZ/ME/HaRdKGNGvJkyGKXYTae"
    "A6lR3A=="
)

REFERENCES_OUT_OF_ORDER = """\
StorePath: /nix/store/xi429w4ddvb1r77978hm7jfb2jsn559r-gcc-3.4.6
URL: nar/1hr09cgkyw1hcsfkv5qp5jlpmf2mqrkrqs3xj5zklq9c1h9544ff.nar.bz2
Compression: bzip2
FileHash: sha256:1hr09cgkyw1hcsfkv5qp5jlpmf2mqrkrqs3xj5zklq9c1h9544ff
FileSize: 4006
NarHash: sha256:0ik9mpqxpd9hv325hdblj2nawqj5w7951qdyy8ikxgwr6fq7m11c
NarSize: 21264
References: a8922c0h87iilxzzvwn2hmv8x210aqb9-glibc-2.7 7w2acjgalb0cm7b3bg8yswza4l7iil9y-binutils-2.18 mm631h09mj964hm9q04l5fd8vw12j1mm-bash-3.2-p39 nx2zs2qd6snfcpzw4a0jnh26z9m0yihz-gcc-3.4.6 xi429w4ddvb1r77978hm7jfb2jsn559r-gcc-3.4.6
Deriver: 2dzpn70c1hawczwhg9aavqk18zp9zsva-gcc-3.4.6.drv
Sig: cache.nixos.org-1:o1DTsjCz0PofLJ216P2RBuSulI8BAb6zHxWE4N+tzlcELk5Uk/GO2SCxWTRN5wJutLZZ+cHTMdWqOHF88KGQDg==
"""  # noqa: E501

CA_NAR_HASH_SHA1 = """\
StorePath: /nix/store/k20pahypzvr49fy82cw5sx72hdfg3qcr-texlive-hyphenex-37354
URL: nar/0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi.nar.xz
Compression: xz
FileHash: sha256:0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi
FileSize: 7120
NarHash: sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfg
NarSize: 22552
References: 
Sig: cache.nixos.org-1:u01BybwQhyI5H1bW1EIWXssMDhDDIvXOG5uh8Qzgdyjz6U1qg6DHhMAvXZOUStIj6X5t4/ufFgR8i3fjf0bMAw==
CA: fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw
"""  # noqa: E501, W291

COMPRESSION_DEFAULT = """\
StorePath: /nix/store/a1jjalr4csx9hcga7fnm122aqabrjnch-digikam-2.6.0
URL: nar/1fzimfnvq2k8b40n4g54abmncpx2ddckh6qlb77pgq6xiysyil69.nar.bz2
FileHash: sha256:1fzimfnvq2k8b40n4g54abmncpx2ddckh6qlb77pgq6xiysyil69
FileSize: 43503778
NarHash: sha256:0zpbbwipqzr5p8mlpag9wrsp5hlaxkq7gax5jj0hg3vvdziypcw5
NarSize: 100658640
References: 0izkyk7bq2ag9393nvnhgm87p75cq09w-liblqr-1-0.4.1 1cslpgyb7vb30inj3210jv6agqv42jxz-qca-2.0.3 1sya3bwjxkzpkmwn67gfzp4gz4g62l36-libXrandr-1.3.1 26yxdaa9z0ma5sgw02i670rsqnl57crs-glib-2.30.3 27lnjh99236kmhbpc5747599zcymfzmg-qt-4.8.2 2v6x378vcfvyxilkvihs60zha54z2x2y-qjson-0.7.1 45hgr3fbnr45n795hn2x7hsymp0h2j2m-libjpeg-8c 4kw1b212s80ap2iyibxrimcqb5imhfj7-libkexiv2-4.7.4 7dvylm5crlc0sfafcc0n46mb5ch67q0j-glibc-2.13 a05cbh1awjbl1rbyb2ynyf4k42v5a9a7-boost-1.47.0 a1jjalr4csx9hcga7fnm122aqabrjnch-digikam-2.6.0 aav5ffg8wlnilgnvdb2jnrv2aam4zmmz-perl-5.14.2 ab0m9h30nsr13w48qriv0k350kmwx567-kdelibs-4.7.4 avffkd49cqvpwdkzry8bn69dkbw4cy29-lensfun-0.2.5 cy8rl8h4yp2j3h8987vkklg328q3wmjz-gcc-4.6.3 dmmh5ihyg1r2dm4azgsfj2kprj92czlg-libSM-1.2.0 fl56j5n4shfw9c0r6vs2i4f1h9zx5kac-soprano-2.7.6 g15cmvh15ggdjcwapskngv20q4yhix40-jasper-1.900.1 i04maxd0din6v92rnqcwl9yra0kl2vk5-marble-4.7.4 kqjjb3m26rdddwwwkk8v45821aps877k-libICE-1.0.7 lxz9r135wkndvi642z4bjgmvyypsgirb-libtiff-3.9.4 m9c8i0a6cl30lcqp654dqkbag3wjmd00-libX11-1.4.1 mpnj4k2ijrgyfkh48fg96nzcmklfh5pl-coreutils-8.15 nppljblap477s0893c151lyq7r7n5v1q-zlib-1.2.7 nw9mdbyp8kyn3v4vkdzq0gsnqbc4mnx3-expat-2.0.1 p1a0dn931mzdkvj6h5yzshbmgxba5r0z-libgphoto2-2.4.11 pvjj07xa1cfkad3gwk376nzdrgknbcqm-mesa-7.11.2 pzcxag98jqccp9ycbxknyh0w95pgnsk4-lcms-1.19 qfi5pgds33kg6vlnxsmj0hyl74vcmyiz-libpng-1.5.10 scm6bj86s3qh3s3x0b9ayjp6755p4q86-mysql-5.1.54 sd23qspcyg385va0lr35xgz3hvlqphg6-libkipi-4.7.4 svmbrhc6kzfzakv20a7zrfl6kbr5mfpq-kdepimlibs-4.7.4 v7kh3h7xfwjz4hgffg3gwrfzjff9bw9d-bash-4.2-p24 vi17f22064djgpk0w248da348q8gxkww-libkdcraw-4.7.4 wkjdzmj3z4dcbsc9f833zs6krdgg2krk-phonon-4.6.0 xf3i3awqi0035ixy2qyb6hk4c92r3vrn-opencv-2.4.2 y1vr0nz8i59x59501020nh2k1dw3bhwq-libusb-0.1.12 yf3hin2hb6i08n7zrk8g3acy54rhg9bp-libXext-1.2.0
Deriver: la77dr44phk5m5jnl4dvk01cwpykyw9s-digikam-2.6.0.drv
System: i686-linux
Sig: cache.nixos.org-1:92fl0i5q7EyegCj5Yf4L0bENkWuVAtgveiRcTEEUH0P6HvCE1xFcPbz/0Pf6Np+K1LPzHK+s5RHOmVoxRsvsDg==
"""  # noqa: E501

NAR_HASH_HEX = """\
StorePath: /nix/store/0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01
URL: nar/1rv1m9inydm1r4krw8hmwg1hs86d0nxddd1pbhihx7l7fycjvfk3.nar.xz
Compression: xz
FileHash: sha256:1rv1m9inydm1r4krw8hmwg1hs86d0nxddd1pbhihx7l7fycjvfk3
FileSize: 19912
NarHash: sha256:60adfd293a4d81ad7cd7e47263cbb3fc846309ef91b154a08ba672b558f94ff3
NarSize: 45840
References: 0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01 9vrhbib2lxd9pjlg6fnl5b82gblidrcr-perl-HTTP-Message-6.06 wy20zslqxzxxfpzzk0rajh41d7a6mlnf-perl-HTTP-Date-6.02
Deriver: fb4ihlq3psnsjq95mvvs49rwpplpc8zj-perl-HTTP-Cookies-6.01.drv
Sig: cache.nixos.org-1:HhaiY36Uk3XV1JGe9d9xHnzAapqJXprU1YZZzSzxE97jCuO5RR7vlG2kF7MSC5thwRyxAtdghdSz3AqFi+QSCw==
"""  # noqa: E501

SIGN = """\
StorePath: /nix/store/0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01
URL: nar/0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi.nar.xz
Compression: xz
FileHash: sha256:0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi
FileSize: 7120
NarHash: sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfg
NarSize: 22552
References: 
CA: fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw
"""  # noqa: W291

FINGERPRINT_NARINFO = """\
StorePath: /nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin
URL: nar/05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56.nar.xz
Compression: xz
FileHash: sha256:05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56
FileSize: 68852
NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0
NarSize: 196040
References: 0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0 6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115 j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12 yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n
Deriver: 5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drv
Sig: cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==
Sig: test1:519iiVLx/c4Rdt5DNt6Y2Jm6hcWE9+XY69ygiWSZCNGVcmOcyL64uVAJ3cV8vaTusIZdbTnYo9Y7vDNeTmmMBQ==
"""  # noqa: E501

SIG_B64 = "TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ=="
EXPECTED_FINGERPRINT = (
    "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;"
    "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;"
    "/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,"
    "/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,"
    "/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,"
    "/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
)

ALL_TEXTS = {
    "references_out_of_order": REFERENCES_OUT_OF_ORDER,
    "ca_nar_hash_sha1": CA_NAR_HASH_SHA1,
    "compression_default": COMPRESSION_DEFAULT,
    "nar_hash_hex": NAR_HASH_HEX,
    "sign": SIGN,
    "fingerprint": FINGERPRINT_NARINFO,
}
SIGNED_BY_CACHE_NIXOS_ORG = [
    name for name, text in ALL_TEXTS.items() if "cache.nixos.org-1" in text
]


def _without_line(text: str, key: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(key))


# --- the vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_TEXTS)
def test_round_trip_is_byte_identical(name: str) -> None:
    text = ALL_TEXTS[name]
    info = NarInfo.parse(text)
    assert info.render() == text
    assert str(info) == text
    assert NarInfo.parse(info.render()) == info


@pytest.mark.parametrize("name", SIGNED_BY_CACHE_NIXOS_ORG)
def test_cache_nixos_org_signatures_verify(name: str) -> None:
    info = NarInfo.parse(ALL_TEXTS[name])
    assert info.verify([CACHE_KEY])
    assert not info.verify([EXAMPLE_PUBLIC])
    assert not info.verify([])


def test_references_out_of_order() -> None:
    info = NarInfo.parse(REFERENCES_OUT_OF_ORDER)
    assert info.flags == NarInfoFlag.REFERENCES_OUT_OF_ORDER
    assert [ref.basename for ref in info.references] == [
        "a8922c0h87iilxzzvwn2hmv8x210aqb9-glibc-2.7",
        "7w2acjgalb0cm7b3bg8yswza4l7iil9y-binutils-2.18",
        "mm631h09mj964hm9q04l5fd8vw12j1mm-bash-3.2-p39",
        "nx2zs2qd6snfcpzw4a0jnh26z9m0yihz-gcc-3.4.6",
        "xi429w4ddvb1r77978hm7jfb2jsn559r-gcc-3.4.6",
    ]
    assert info.compression == "bzip2"
    assert info.deriver == StorePath.from_basename("2dzpn70c1hawczwhg9aavqk18zp9zsva-gcc-3.4.6.drv")
    assert info.file_size == 4006
    assert info.nar_size == 21264
    assert info.system is None
    assert info.ca is None


def test_the_signature_covers_the_references_in_their_given_order() -> None:
    info = NarInfo.parse(REFERENCES_OUT_OF_ORDER)
    info.references.sort()
    assert not info.verify([CACHE_KEY])


def test_ca_nar_hash_sha1() -> None:
    info = NarInfo.parse(CA_NAR_HASH_SHA1)
    assert info.ca == CAHash(
        "nar", NixHash("sha1", bytes.fromhex("5cba3c77236ae4f9650270a27fbad375551fa60a"))
    )
    assert info.references == []
    assert info.flags == NO_FLAGS
    assert info.compression == "xz"
    assert info.deriver is None
    assert len(info.signatures) == 1


def test_compression_default() -> None:
    info = NarInfo.parse(COMPRESSION_DEFAULT)
    assert info.flags == NarInfoFlag.COMPRESSION_DEFAULT
    assert info.compression == "bzip2"
    assert info.system == "i686-linux"
    assert len(info.references) == 38
    assert info.file_size == 43503778


def test_compression_default_flag_is_ignored_for_other_compressions() -> None:
    info = NarInfo.parse(COMPRESSION_DEFAULT)
    info.compression = "xz"
    assert "Compression: xz\n" in info.render()


def test_nar_hash_hex() -> None:
    info = NarInfo.parse(NAR_HASH_HEX)
    assert info.flags == NarInfoFlag.NAR_HASH_HEX
    assert info.nar_hash == NixHash(
        "sha256", bytes.fromhex("60adfd293a4d81ad7cd7e47263cbb3fc846309ef91b154a08ba672b558f94ff3")
    )
    # The fingerprint always spells the hash in nixbase32.
    assert f"sha256:{nixbase32.encode(info.nar_hash.digest)};" in info.fingerprint()


def test_nar_hash_hex_renders_nixbase32_without_the_flag() -> None:
    info = NarInfo.parse(NAR_HASH_HEX)
    info.flags = NO_FLAGS
    assert f"NarHash: {info.nar_hash.to_nix_string()}\n" in info.render()


def test_sign_and_verify_with_the_dummy_keypair() -> None:
    info = NarInfo.parse(SIGN)
    assert info.signatures == []
    assert not info.verify([EXAMPLE_PUBLIC])
    signature = info.sign(SigningKey.parse(EXAMPLE_KEYPAIR))
    assert info.signatures == [signature]
    assert signature.to_nix_string() == (
        "cache.example.com-1:s0RTa24/7x5lstmy93KSUW/rD0LR8M0VqMd1t2otpglPhPtJerWS8UNGn+xRRSMOfo/5"
        "Kc7gy+mPSW++e4twAg=="
    )
    assert info.verify([EXAMPLE_PUBLIC])
    assert info.verify([CACHE_KEY, EXAMPLE_PUBLIC])
    assert not info.verify([CACHE_KEY])
    assert info.render() == SIGN.replace("CA: ", f"Sig: {signature.to_nix_string()}\nCA: ")


def test_sign_fingerprint_has_nothing_after_the_last_semicolon() -> None:
    assert NarInfo.parse(SIGN).fingerprint() == (
        "1;/nix/store/0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01;"
        "sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfg;22552;"
    )


def test_fingerprint() -> None:
    info = NarInfo.parse(FINGERPRINT_NARINFO)
    assert info.fingerprint() == EXPECTED_FINGERPRINT
    assert (
        fingerprint(info.store_path, info.nar_hash.digest, info.nar_size, info.references)
        == EXPECTED_FINGERPRINT
    )
    assert [sig.name for sig in info.signatures] == ["cache.nixos.org-1", "test1"]
    assert CACHE_KEY.verify(EXPECTED_FINGERPRINT, info.signatures[0])


def test_test1_signature_verifies_with_the_test1_key() -> None:
    info = NarInfo.parse(FINGERPRINT_NARINFO)
    test1 = VerifyingKey.parse("test1:tLAEn+EeaBUJYqEpTd2yeerr7Ic6+0vWe+aXL/vYUpE=")
    assert test1.verify(EXPECTED_FINGERPRINT, info.signatures[1])
    assert not test1.verify(EXPECTED_FINGERPRINT, info.signatures[0])
    assert info.verify([test1])


def test_module_fingerprint_of_the_keyfile_signing_wrapper() -> None:
    dummy = StorePath.from_basename("00000000000000000000000000000000-dummy")
    fp = fingerprint(dummy, bytes(32), 0, [dummy])
    assert fp == (
        "1;/nix/store/00000000000000000000000000000000-dummy;"
        "sha256:0000000000000000000000000000000000000000000000000000;0;"
        "/nix/store/00000000000000000000000000000000-dummy"
    )
    assert SigningKey.parse(DO_NOT_USE_KEYPAIR).sign(fp).to_nix_string() == (
        "do.not.use:xl4q2L5wQMou13ZQ9/YPqK1z/DSIYycTtndVNfp2ybT8Cpg+yPv1sCQN8VVWppnq5BXTuMhjaq7K/"
        "ebYN4LYBg=="
    )


def test_module_fingerprint_checks_the_digest_size() -> None:
    dummy = StorePath(bytes(20), "dummy")
    with pytest.raises(NarInfoError, match="32 bytes"):
        fingerprint(dummy, bytes(20), 0, [])


# --- other accepted forms -----------------------------------------------------------------


def test_compression_none() -> None:
    text = SIGN.replace("Compression: xz", "Compression: none")
    info = NarInfo.parse(text)
    assert info.compression is None
    assert info.flags == NO_FLAGS
    assert info.render() == text


def test_unknown_fields_set_a_flag_and_are_dropped() -> None:
    text = SIGN.replace("NarSize: 22552\n", "NarSize: 22552\nX-Extra: whatever\n")
    info = NarInfo.parse(text)
    assert info.flags == NarInfoFlag.UNKNOWN_FIELDS
    assert info.render() == SIGN


def test_unknown_fields_may_repeat() -> None:
    text = SIGN + "X-Extra: 1\nX-Extra: 2\n"
    assert NarInfo.parse(text).flags == NarInfoFlag.UNKNOWN_FIELDS


def test_missing_final_newline_and_crlf_are_accepted() -> None:
    assert NarInfo.parse(SIGN.rstrip("\n")).render() == SIGN
    assert NarInfo.parse(SIGN.replace("\n", "\r\n")).render() == SIGN


def test_value_may_start_with_more_spaces() -> None:
    # Only the first space is the separator; the rest belongs to the value.
    info = NarInfo.parse(SIGN.replace("URL: ", "URL:  "))
    assert info.url.startswith(" nar/")
    assert info.render() == SIGN.replace("URL: ", "URL:  ")


def test_duplicate_references_count_as_out_of_order() -> None:
    ref = "0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01"
    text = SIGN.replace("References: \n", f"References: {ref} {ref}\n")
    info = NarInfo.parse(text)
    assert info.flags == NarInfoFlag.REFERENCES_OUT_OF_ORDER
    assert info.render() == text


def test_deriver_keeps_the_drv_suffix_in_its_name() -> None:
    info = NarInfo.parse(FINGERPRINT_NARINFO)
    assert info.deriver is not None
    assert info.deriver.name == "curl-7.82.0.drv"


def test_constructed_narinfo_renders_compression_none() -> None:
    info = NarInfo(
        store_path=StorePath(bytes(20), "dummy"),
        url="nar/x.nar",
        nar_hash=NixHash("sha256", bytes(32)),
        nar_size=0,
    )
    assert info.render() == (
        "StorePath: /nix/store/00000000000000000000000000000000-dummy\n"
        "URL: nar/x.nar\n"
        "Compression: none\n"
        "NarHash: sha256:0000000000000000000000000000000000000000000000000000\n"
        "NarSize: 0\n"
        "References: \n"
    )
    assert NarInfo.parse(info.render()) == info


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"url": ""}, "URL"),
        ({"url": "a\nb"}, "line break"),
        ({"compression": "none"}, "None"),
        ({"compression": ""}, "Compression"),
        ({"nar_hash": NixHash("sha1", bytes(20))}, "sha256"),
        ({"file_hash": NixHash("md5", bytes(16))}, "sha256"),
        ({"nar_size": -1}, "64 bits"),
        ({"file_size": 2**64}, "64 bits"),
        ({"deriver": StorePath(bytes(20), "foo")}, ".drv"),
        ({"system": ""}, "System"),
    ],
)
def test_constructor_checks(changes: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {
        "store_path": StorePath(bytes(20), "dummy"),
        "url": "nar/x.nar",
        "nar_hash": NixHash("sha256", bytes(32)),
        "nar_size": 0,
    }
    fields.update(changes)
    with pytest.raises(NarInfoError, match=reason):
        NarInfo(**fields)  # type: ignore[arg-type]


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["StorePath", "URL", "NarHash", "NarSize", "References"])
def test_missing_required_field(key: str) -> None:
    with pytest.raises(NarInfoError, match=f"missing required field.*{key}"):
        NarInfo.parse(_without_line(FINGERPRINT_NARINFO, f"{key}:"))


def test_empty_text_lists_every_missing_field() -> None:
    with pytest.raises(NarInfoError, match="StorePath, URL, NarHash, NarSize, References"):
        NarInfo.parse("")


@pytest.mark.parametrize(
    "line",
    [
        "StorePath: /nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin\n",
        "URL: nar/other.nar\n",
        "Compression: xz\n",
        "FileHash: sha256:05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56\n",
        "FileSize: 68852\n",
        "NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0\n",
        "NarSize: 196040\n",
        "References: \n",
        "Deriver: 5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drv\n",
        "System: x86_64-linux\nSystem: x86_64-linux\n",
        "CA: fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw\n" * 2,
    ],
)
def test_duplicate_field(line: str) -> None:
    key = line.split(":")[0]
    with pytest.raises(NarInfoError, match=f"duplicate field {key}"):
        NarInfo.parse(FINGERPRINT_NARINFO + line)


def test_repeated_sig_lines_are_not_duplicates() -> None:
    assert len(NarInfo.parse(FINGERPRINT_NARINFO).signatures) == 2


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        pytest.param("NarSize: ", "NarSize:", "line 7 \\(NarSize\\).*space", id="no-space"),
        pytest.param("References: \n", "References:\n", "line 8 .*space", id="refs-no-space"),
        pytest.param("URL: ", "URL ", "line 2: expected 'Key: value'", id="no-colon"),
        pytest.param("NarSize: ", "\nNarSize: ", "line 7: expected", id="blank-line"),
        pytest.param("NarSize: 22552", "NarSize: 22552x", "NarSize.*size", id="bad-narsize"),
        pytest.param("NarSize: 22552", "NarSize: -1", "NarSize.*size", id="negative-narsize"),
        pytest.param("NarSize: 22552", "NarSize: +1", "NarSize.*size", id="plus-narsize"),
        pytest.param("NarSize: 22552", "NarSize: 022552", "NarSize.*size", id="leading-zero"),
        pytest.param("NarSize: 22552", f"NarSize: {2**64}", "NarSize.*size", id="huge-narsize"),
        pytest.param("NarSize: 22552", "NarSize: ", "NarSize.*size", id="empty-narsize"),
        pytest.param("FileSize: 7120", "FileSize: 7.1", "FileSize.*size", id="bad-filesize"),
        pytest.param(
            "NarHash: sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfg",
            "NarHash: sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfe",
            "NarHash.*character",
            id="bad-narhash-char",
        ),
        pytest.param(
            "NarHash: sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfg",
            "NarHash: sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shf",
            "NarHash.*length",
            id="short-narhash",
        ),
        pytest.param(
            "NarHash: sha256:",
            "NarHash: sha512:",
            "NarHash.*sha256:",
            id="narhash-not-sha256",
        ),
        pytest.param(
            "NarHash: sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfg",
            "NarHash: sha256:60ADFD293A4D81AD7CD7E47263CBB3FC846309EF91B154A08BA672B558F94FF3",
            "NarHash.*hex",
            id="uppercase-hex",
        ),
        pytest.param(
            "NarHash: sha256:0h1bm4sj1cnfkxgyhvgi8df1qavnnv94sd0v09wcrm971602shfg",
            "NarHash: sha256-YK39KTpNga1818dyY8uz/IRjCe+RsVSgi6ZytVj5T/M=",
            "NarHash.*sha256:",
            id="sri-narhash",
        ),
        pytest.param(
            "FileHash: sha256:",
            "FileHash: ",
            "FileHash.*sha256:",
            id="filehash-no-prefix",
        ),
        pytest.param(
            "FileHash: sha256:0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi",
            "FileHash: sha256:60adfd293a4d81ad7cd7e47263cbb3fc846309ef91b154a08ba672b558f94ff3",
            "FileHash.*length",
            id="filehash-hex",
        ),
        pytest.param(
            "StorePath: /nix/store/", "StorePath: /nix/stor/", "StorePath.*/nix/store", id="sp-dir"
        ),
        pytest.param(
            "StorePath: /nix/store/0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01",
            "StorePath: 0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01",
            "StorePath.*absolute",
            id="sp-basename",
        ),
        pytest.param(
            "perl-HTTP-Cookies-6.01\nURL",
            "perl-HTTP-Cookies-6.01/\nURL",
            "StorePath.*'/'",
            id="sp-trailing-slash",
        ),
        pytest.param("URL: nar/", "URL: \nX: nar/", "URL.*empty", id="empty-url"),
        pytest.param("Compression: xz", "Compression: ", "Compression.*empty", id="empty-comp"),
        pytest.param(
            "References: \n",
            "References: 0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01  \n",
            "References.*reference #1",
            id="refs-double-space",
        ),
        pytest.param(
            "References: \n",
            "References: /nix/store/0vpqfxbkx0ffrnhbws6g9qwhmliksz7f-perl-HTTP-Cookies-6.01\n",
            "References.*reference #0",
            id="refs-absolute",
        ),
        pytest.param(
            "CA: fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw",
            "CA: fixed:r:sha1:5cba3c77236ae4f9650270a27fbad375551fa60a",
            "CA.*nixbase32",
            id="ca-hex",
        ),
        pytest.param(
            "CA: fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw",
            "CA: fixed:r:sha3:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw",
            "CA.*algorithm",
            id="ca-algo",
        ),
        pytest.param(
            "CA: fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw",
            "CA: source:sha256:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw",
            "CA.*content address",
            id="ca-kind",
        ),
    ],
)
def test_bad_lines(old: str, new: str, reason: str) -> None:
    assert old in SIGN
    with pytest.raises(NarInfoError, match=reason):
        NarInfo.parse(SIGN.replace(old, new, 1))


@pytest.mark.parametrize(
    ("deriver", "reason"),
    [
        ("5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0", ".drv"),
        ("5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drvx", ".drv"),
        ("/nix/store/5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drv", "Deriver"),
        ("5rwxzi7pal3qhpsyfc16gzkh939q1np6", "Deriver"),
    ],
)
def test_bad_deriver(deriver: str, reason: str) -> None:
    text = FINGERPRINT_NARINFO.replace(
        "Deriver: 5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drv", f"Deriver: {deriver}"
    )
    with pytest.raises(NarInfoError, match=reason):
        NarInfo.parse(text)


@pytest.mark.parametrize(
    ("sig", "reason"),
    [
        (f"cache.nixos.org-1:{SIG_B64[:56]}", "characters"),
        (SIG_B64, "name:base64"),
        (f"bad name:{SIG_B64}", "not allowed"),
        ("", "name:base64"),
    ],
)
def test_bad_sig(sig: str, reason: str) -> None:
    text = FINGERPRINT_NARINFO + f"Sig: {sig}\n"
    with pytest.raises(NarInfoError, match=f"line 12 \\(Sig\\): signature #2: .*{reason}"):
        NarInfo.parse(text)


def test_narinfo_error_is_a_validation_error() -> None:
    assert issubclass(NarInfoError, ValidationError)


# --- property: render and parse are inverses ----------------------------------------------

_digest20 = st.binary(min_size=20, max_size=20)
_name = st.text(alphabet=sorted(NAME_CHARS), min_size=1, max_size=40)
_store_paths = st.builds(StorePath, _digest20, _name)
_sha256 = st.builds(NixHash, st.just("sha256"), st.binary(min_size=32, max_size=32))
_size = st.integers(min_value=0, max_value=2**64 - 1)
_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
    min_size=1,
    max_size=30,
)
_key_name = st.text(alphabet="abcxyz019.-", min_size=1, max_size=12)
_signatures = st.builds(Signature, _key_name, st.binary(min_size=64, max_size=64))
_ca = st.sampled_from(sorted(DIGEST_SIZES)).flatmap(
    lambda algo: st.builds(
        CAHash,
        st.sampled_from(["nar", "flat"] + (["text"] if algo == "sha256" else [])),
        st.builds(
            NixHash,
            st.just(algo),
            st.binary(min_size=DIGEST_SIZES[algo], max_size=DIGEST_SIZES[algo]),
        ),
    )
)


@st.composite
def narinfos(draw: st.DrawFn) -> NarInfo:
    flags = NO_FLAGS
    compression = draw(st.sampled_from([None, "bzip2", "xz", "zstd", "default"]))
    if compression == "default":
        compression = "bzip2"
        flags |= NarInfoFlag.COMPRESSION_DEFAULT
    if draw(st.booleans()):
        flags |= NarInfoFlag.NAR_HASH_HEX
    references = draw(st.lists(_store_paths, max_size=5))
    basenames = [ref.basename for ref in references]
    if any(a >= b for a, b in itertools.pairwise(basenames)):
        flags |= NarInfoFlag.REFERENCES_OUT_OF_ORDER
    deriver = draw(st.none() | st.builds(StorePath, _digest20, _name.map(lambda n: n + ".drv")))
    return NarInfo(
        store_path=draw(_store_paths),
        url=draw(_text),
        compression=compression,
        file_hash=draw(st.none() | _sha256),
        file_size=draw(st.none() | _size),
        nar_hash=draw(_sha256),
        nar_size=draw(_size),
        references=references,
        deriver=deriver,
        system=draw(st.none() | _text),
        signatures=draw(st.lists(_signatures, max_size=3)),
        ca=draw(st.none() | _ca),
        flags=flags,
    )


@given(narinfos())
def test_parse_inverts_render(info: NarInfo) -> None:
    text = info.render()
    parsed = NarInfo.parse(text)
    assert parsed == info
    assert parsed.render() == text
    assert parsed.fingerprint() == info.fingerprint()


@given(narinfos(), st.data())
def test_signed_narinfo_verifies_after_a_round_trip(info: NarInfo, data: st.DataObject) -> None:
    key = SigningKey(data.draw(_key_name), data.draw(st.binary(min_size=32, max_size=32)))
    info.sign(key)
    parsed = NarInfo.parse(info.render())
    assert parsed.verify([key.verifying_key])
    parsed.nar_size = (parsed.nar_size + 1) % 2**64
    assert not parsed.verify([key.verifying_key])

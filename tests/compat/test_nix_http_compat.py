"""``nix+http://`` over binary caches the real Nix wrote (``nix copy --to file://…``).

The exported closure (real references, a deriver, signed with a throwaway
key) is copied by Nix 2.8 into one cache directory per compression, served
by ``python -m http.server`` (stopped by PID), and mounted by ``cafs mount``;
every path must come out as Nix has it in /nix/store, byte for byte.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cafs.store.narinfo import NarInfo
from cafs.store.signatures import SigningKey
from tests.compat.conftest import Exported, Nix, basename
from tests.compat.test_nix import assert_path_info_agrees, assert_same_bytes, parse_narinfo
from tests.http.test_nix_http import assert_same_node, flip_a_byte, http_server
from tests.mount.conftest import mounted_store
from tests.process import cafs

READ = ("none", "xz", "bzip2", "zstd", "gzip")
"""What Nix 2.8 writes and cafs reads (gzip as a plain ``.nar`` name, Compression: gzip)."""
UNREAD = ("br", "lz4", "lzip")
"""What Nix 2.8 writes and cafs does not decompress."""


def narinfo_file(cache: Path, path: str) -> Path:
    return cache / f"{basename(path)[:32]}.narinfo"


def nar_file(cache: Path, path: str) -> Path:
    return cache / NarInfo.parse(narinfo_file(cache, path).read_text()).url


@pytest.fixture(scope="module")
def caches(exported: Exported, nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<base>/<compression>/``: the closure as ``nix copy --to file://`` writes it."""
    base = tmp_path_factory.mktemp("nix-caches")
    for compression in (*READ, *UNREAD):
        url = f"file://{base / compression}?compression={compression}"
        nix.run("nix", "copy", "--to", url, exported.inner)
    return base


@pytest.fixture
def closure(exported: Exported, nix: Nix) -> list[str]:
    paths = nix.closure(exported.inner)
    assert len(paths) == 4
    return paths


def mount_flags(host: str, near: Path, keys: str | None) -> tuple[str, ...]:
    far = f"nix+http://{host}/"
    if keys is not None:
        far += f"?trusted-public-keys={keys}"  # as written: `+` in base64 stays `+`
    return (
        "--blob-service-addr",
        "memory://",
        "--directory-service-addr",
        "memory://",
        "--path-info-service-addr",
        f"cache://?near=sqlite://{near}&far={far}",
    )


@pytest.mark.parametrize("compression", READ)
def test_mount_serves_what_nix_copied_to_a_binary_cache(
    caches: Path,
    exported: Exported,
    closure: list[str],
    nix: Nix,
    tmp_path: Path,
    compression: str,
) -> None:
    cache = caches / compression
    if compression == "gzip":  # Nix 2.8 names no suffix for it
        assert nar_file(cache, exported.inner).name.endswith(".nar")
    with http_server(cache) as host:
        flags = mount_flags(host, tmp_path / "near.sqlite", exported.public_key)
        with mounted_store(tmp_path / "mnt", tmp_path / "home", *flags) as mount:
            for path in closure:
                served = mount.path / basename(path)
                assert_same_node(Path(path), served)
                assert_same_bytes(nix.dump(served), nix.dump(path), path)
            log = mount.stderr()
    assert log.count("downloaded the NAR of") == len(closure), log
    assert "WARN" not in log, log


def test_mount_without_trusted_keys_and_path_info_agree_with_nix(
    caches: Path, closure: list[str], nix: Nix, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    infos = nix.path_info(*closure)
    with http_server(caches / "zstd") as host:
        flags = mount_flags(host, tmp_path / "near.sqlite", None)
        with mounted_store(tmp_path / "mnt", home, *flags) as mount:
            for path in closure:
                assert_same_bytes(nix.dump(mount.path / basename(path)), nix.dump(path), path)
        for path in closure:
            url = f"nix+http://{host}"
            printed = cafs("path-info", path, "--path-info-service-addr", url, home=home).stdout
            ours = parse_narinfo(printed)
            theirs = infos[path]
            assert_path_info_agrees(ours, theirs, deriver=theirs.get("deriver"))
            assert sorted(ours["Sig"]) == sorted(theirs["signatures"]), path


@pytest.mark.parametrize("compression", UNREAD)
def test_a_compression_cafs_cannot_read_is_a_clear_error(
    caches: Path, exported: Exported, tmp_path: Path, compression: str
) -> None:
    home = tmp_path / "home"
    with http_server(caches / compression) as host:
        result = cafs("path-info", exported.inner, "--path-info-service-addr",
                      f"nix+http://{host}", home=home, check=False)  # fmt: skip
    assert result.returncode == 7  # a storage failure: the cache cannot be read
    [line] = result.stderr.splitlines()
    assert f"unsupported compression {compression!r}" in line, line


def resign(narinfo: Path, key: SigningKey) -> None:
    """Replace the signatures with one by ``key`` (valid, but not the trusted key's)."""
    info = NarInfo.parse(narinfo.read_text())
    info.signatures = []
    info.sign(key)
    narinfo.write_text(info.render())


@pytest.mark.parametrize("damage", ["nar", "signature"])
def test_a_tampered_cache_is_refused_and_nothing_is_stored(
    caches: Path,
    exported: Exported,
    closure: list[str],
    nix: Nix,
    tmp_path: Path,
    damage: str,
) -> None:
    home = tmp_path / "home"
    cache = tmp_path / "cache"
    shutil.copytree(caches / "xz", cache)
    if damage == "nar":
        flip_a_byte(nar_file(cache, exported.inner), at=100)
        expected = "is corrupt"
    else:
        key_name = exported.public_key.partition(":")[0]
        resign(narinfo_file(cache, exported.inner), SigningKey.generate(key_name))
        expected = f"by {key_name} does not verify"
    near = tmp_path / "near.sqlite"
    victim = basename(exported.inner)
    with http_server(cache) as host:
        with mounted_store(
            tmp_path / "mnt", home, *mount_flags(host, near, exported.public_key)
        ) as m:
            with pytest.raises(OSError, match=r"\[Errno 5\]"):
                (m.path / victim).lstat()
            for path in closure:
                if path != exported.inner:
                    assert_same_bytes(nix.dump(m.path / basename(path)), nix.dump(path), path)
            log = m.stderr()
        assert re.search(f"{victim}: lookup failed: .*{re.escape(expected)}", log), log
        # The same through the command line: one line, exit 5 (corrupt).
        url = f"nix+http://{host}/?trusted-public-keys={exported.public_key}"
        result = cafs("path-info", exported.inner, "--path-info-service-addr", url,
                      home=home, check=False)  # fmt: skip
        assert result.returncode == 5 and expected in result.stderr, result.stderr
    kept = cafs("path-info", exported.inner, "--path-info-service-addr", f"sqlite://{near}",
                home=home, check=False)  # fmt: skip
    assert kept.returncode == 3 and "not in the store" in kept.stderr, kept

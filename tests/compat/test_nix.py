"""cafs against the real Nix: same store paths, same NARs, same hashes, same closures.

Every test has its own cafs store (CAFS_HOME under tmp_path). Paths added to the real
/nix/store are deleted again afterwards (see the ``nix_store`` fixture).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import (
    Exported,
    Nix,
    NixStore,
    Sources,
    basename,
    write,
)
from tests.mount.conftest import mounted_store
from tests.process import cafs, cafs_bytes

NIXBASE32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


def nixbase32(data: bytes) -> str:
    """Nix's base32 (its own alphabet, least significant bits last), written out here."""
    length = (len(data) * 8 - 1) // 5 + 1
    chars = []
    for n in range(length - 1, -1, -1):
        byte, bit = divmod(n * 5, 8)
        c = data[byte] >> bit
        if byte + 1 < len(data):
            c |= data[byte + 1] << (8 - bit)
        chars.append(NIXBASE32_ALPHABET[c & 0x1F])
    return "".join(chars)


def nix_hash(sri: str) -> str:
    """``sha256-<base64>`` (nix path-info --json) as ``sha256:<nixbase32>`` (narinfo)."""
    algo, _, encoded = sri.partition("-")
    return f"{algo}:{nixbase32(base64.b64decode(encoded))}"


def nar_hash(nar: bytes) -> str:
    return "sha256:" + nixbase32(hashlib.sha256(nar).digest())


def assert_same_bytes(ours: bytes, theirs: bytes, what: str) -> None:
    if ours != theirs:
        at = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
            min(len(ours), len(theirs)),
        )
        pytest.fail(
            f"{what}: cafs wrote {len(ours)} bytes, Nix {len(theirs)}; first difference at "
            f"offset {at}: {ours[at : at + 32]!r} != {theirs[at : at + 32]!r}"
        )


def parse_narinfo(text: str) -> dict[str, list[str]]:
    """``Key: value`` lines; each key's values in order (Sig repeats)."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        assert sep, f"not a narinfo line: {line!r}"
        fields.setdefault(key, []).append(value.strip())
    return fields


def cafs_path_info(path: str, home: Path) -> dict[str, list[str]]:
    return parse_narinfo(cafs("path-info", path, home=home).stdout)


def cafs_import(roots: tuple[Path, ...], home: Path) -> list[str]:
    """One ``cafs import`` of every root; the printed store paths in order."""
    paths = cafs("import", *map(str, roots), home=home).stdout.splitlines()
    assert len(paths) == len(roots), paths
    return paths


def assert_path_info_agrees(
    ours: dict[str, list[str]], theirs: dict[str, Any], deriver: str | None
) -> None:
    """cafs's narinfo says what ``nix path-info --json`` says about the same path."""
    path = theirs["path"]
    assert ours["StorePath"] == [path]
    assert ours["NarHash"] == [nix_hash(theirs["narHash"])], path
    assert ours["NarSize"] == [str(theirs["narSize"])], path
    assert sorted(ours["References"][0].split()) == sorted(map(basename, theirs["references"]))
    assert ours.get("CA") == ([theirs["ca"]] if theirs.get("ca") else None), path
    assert ours.get("Deriver") == ([basename(deriver)] if deriver else None), path


# Importing trees, files and symlinks.


def test_import_prints_the_paths_nix_store_add_does(
    sources: Sources, nix_store: NixStore, tmp_path: Path
) -> None:
    ours = cafs_import(sources.roots, tmp_path / "home")
    theirs = nix_store.add(*sources.roots)
    assert dict(zip(map(str, sources.roots), ours, strict=True)) == dict(
        zip(map(str, sources.roots), theirs, strict=True)
    )


def test_nar_dump_is_byte_identical_to_nix_store_dump(
    sources: Sources, nix: Nix, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    for root, path in zip(sources.roots, cafs_import(sources.roots, home), strict=True):
        assert_same_bytes(cafs_bytes("nar", "dump", path, home=home), nix.dump(root), root.name)


def test_nar_import_of_a_nix_dump_renders_back_and_names_the_same_path(
    sources: Sources, nix: Nix, nix_store: NixStore, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    imported = []
    for i, root in enumerate(sources.roots):
        nar = nix.dump(root)
        if i % 2:  # the name from the file name
            file = tmp_path / f"{root.name}.nar"
            write(file, nar)
            printed = cafs("nar", "import", str(file), home=home).stdout
        else:
            file = tmp_path / f"dump-{i}.nar"
            write(file, nar)
            printed = cafs("nar", "import", str(file), "--name", root.name, home=home).stdout
        path = printed.strip()
        assert_same_bytes(cafs_bytes("nar", "dump", path, home=home), nar, root.name)
        imported.append(path)
    assert imported == nix_store.add(*sources.roots)


def test_path_info_agrees_with_nix(
    sources: Sources, nix: Nix, nix_store: NixStore, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    paths = cafs_import(sources.roots, home)
    assert nix_store.add(*sources.roots) == paths
    infos = nix.path_info(*paths)
    for path, recorded in zip(paths, nix.query_hashes(*paths), strict=True):
        ours = cafs_path_info(path, home)
        assert ours["NarHash"] == [recorded], path
        assert ours["CA"] == [f"fixed:r:{recorded}"], path
        assert_path_info_agrees(ours, infos[path], deriver=None)
        assert ours["References"] == [""]


# The store-mode mount.


def test_mount_serves_what_nix_reads(
    sources: Sources, nix: Nix, nix_store: NixStore, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    paths = cafs_import(sources.roots, home)
    assert nix_store.add(*sources.roots) == paths
    recorded = nix.query_hashes(*paths)
    names = [basename(p) for p in paths]
    with mounted_store(tmp_path / "mnt", home) as mount:
        mnt = mount.path
        for name, want in zip(names, recorded, strict=True):
            assert nar_hash(nix.dump(mnt / name)) == want, name
        assert nix.hash_paths(*(mnt / n for n in names)) == nix.hash_paths(*sources.roots)

        digest, _, name = names[0].partition("-")
        for missing in (f"{digest}-wrongname", f"{'1' * 32}-{name}", name, "not-a-store-path"):
            with pytest.raises(FileNotFoundError) as excinfo:
                os.lstat(mnt / missing)
            assert excinfo.value.errno == errno.ENOENT

    with mounted_store(tmp_path / "mnt-listed", home, "--list-root") as mount:
        mnt = mount.path
        assert sorted(os.listdir(mnt)) == sorted(names)


# Copying a closure listed by exportReferencesGraph (the `exported` fixture of conftest.py).


def test_exported_closure_is_what_nix_reports(exported: Exported, nix: Nix) -> None:
    """The fixture's premise: Nix listed the whole closure, with real references."""
    listed = {entry["path"]: entry for entry in exported.closure}
    assert sorted(listed) == sorted(nix.closure(exported.inner))
    assert len(listed) == 4
    assert exported.inner in listed[exported.inner]["references"]  # a self-reference
    assert all(entry["references"] for entry in exported.closure if "-dep" not in entry["path"])


def test_copy_of_an_exported_closure_agrees_with_nix(
    exported: Exported, nix: Nix, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    listed = [entry["path"] for entry in exported.closure]
    copied = cafs("copy", str(exported.attrs_json), home=home).stdout.splitlines()
    assert sorted(copied) == sorted(listed)

    infos = nix.path_info(*listed)
    for entry in exported.closure:
        path = entry["path"]
        ours = cafs_path_info(path, home)
        assert ours["NarHash"] == [entry["narHash"]], path
        # Nix 2.8 leaves deriver and signatures out of exportReferencesGraph (impure info).
        assert_path_info_agrees(ours, infos[path], deriver=entry.get("deriver"))
        assert ours.get("Sig", []) == entry.get("signatures", []), path
        assert_same_bytes(cafs_bytes("nar", "dump", path, home=home), nix.dump(path), path)

    again = cafs("copy", str(exported.attrs_json), home=home)
    assert again.stdout == ""


def test_copy_keeps_deriver_and_signatures_nix_recorded(
    exported: Exported, nix: Nix, tmp_path: Path
) -> None:
    """The same closure as `nix path-info --json --recursive` lists it, SRI hashes and all."""
    home = tmp_path / "home"
    infos = nix.path_info(exported.inner, recursive=True)
    assert any("deriver" in i for i in infos.values())
    assert all(i.get("signatures") for i in infos.values())
    closure_file = tmp_path / "closure.json"
    closure_file.write_text(json.dumps({"closure": list(infos.values())}))
    copied = cafs("copy", str(closure_file), home=home).stdout.splitlines()
    assert sorted(copied) == sorted(infos)
    for path, theirs in infos.items():
        ours = cafs_path_info(path, home)
        assert_path_info_agrees(ours, theirs, deriver=theirs.get("deriver"))
        assert sorted(ours["Sig"]) == sorted(theirs["signatures"]), path


@pytest.mark.parametrize("field", ["narHash", "narSize"])
def test_copy_refuses_a_path_whose_nar_does_not_match(
    exported: Exported, tmp_path: Path, field: str
) -> None:
    home = tmp_path / "home"
    attrs = json.loads(exported.attrs_json.read_text())
    [victim] = [e for e in attrs["closure"] if e["path"] == exported.inner]
    if field == "narHash":
        victim["narHash"] = nar_hash(b"something else")
    else:
        victim["narSize"] += 8
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(attrs))

    result = cafs("copy", str(bad), home=home, check=False)
    assert result.returncode == 5, result  # corrupt: the NAR does not match its hash
    assert "error" in result.stderr and exported.inner in result.stderr, result.stderr
    assert exported.inner not in result.stdout.splitlines()
    lookup = cafs("path-info", exported.inner, home=home, check=False)
    assert lookup.returncode == 3 and "not in the store" in lookup.stderr, lookup

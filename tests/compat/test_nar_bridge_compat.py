"""The real Nix against ``cafs nar-bridge``: copying from it, substituting, uploading to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.compat.conftest import Exported, Nix
from tests.http.bridge import running_bridge
from tests.process import cafs, cafs_bytes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory, nix: Nix) -> tuple[Path, str]:
    """A signing key for the bridge: (secret key file, public key text)."""
    work = tmp_path_factory.mktemp("keys")
    nix.run("nix-store", "--generate-binary-cache-key", "cafs-bridge-1", work / "secret",
            work / "public")  # fmt: skip
    return work / "secret", (work / "public").read_text().strip()


@pytest.fixture(scope="module")
def served(
    exported: Exported, nix: Nix, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, dict[str, object]]]:
    """A cafs store holding the exported closure (copied from /nix/store): (home, infos)."""
    home = tmp_path_factory.mktemp("bridge-store") / "home"
    infos = nix.path_info(exported.inner, recursive=True)
    closure_file = home.parent / "closure.json"
    closure_file.write_text(json.dumps({"closure": list(infos.values())}))
    cafs("copy", str(closure_file), home=home)
    return home, infos


def local_store(tmp_path: Path) -> str:
    return f"local?root={tmp_path / 'root'}"


def test_nix_copies_a_closure_from_the_bridge_and_verifies_it(
    served: tuple[Path, dict[str, dict[str, object]]], nix: Nix, tmp_path: Path
) -> None:
    home, infos = served
    target = local_store(tmp_path)
    with running_bridge(home) as bridge:
        nix.run("nix", "copy", "--no-check-sigs", "--from", bridge.url, "--to", target, *infos)
    nix.run("nix", "store", "verify", "--no-trust", "--store", target, *infos)
    for path in infos:
        theirs = nix.run("nix-store", "--store", target, "--dump", path).stdout
        assert theirs == nix.dump(path), path


def test_signatures_decide_what_nix_substitutes(
    served: tuple[Path, dict[str, dict[str, object]]],
    nix: Nix,
    keys: tuple[Path, str],
    tmp_path: Path,
) -> None:
    home, infos = served
    secret, public = keys
    with running_bridge(home, "--signing-key-file", str(secret)) as bridge:
        # Trusted: copied, signatures checked by Nix.
        good = local_store(tmp_path / "good")
        nix.run("nix", "copy", "--from", bridge.url, "--to", good,
                "--option", "trusted-public-keys", public, *infos)  # fmt: skip
        # Another key trusted: refused.
        other = public.replace("cafs-bridge-1", "someone-else")
        refused = nix.run("nix", "copy", "--from", bridge.url, "--to",
                          local_store(tmp_path / "bad"), "--option", "trusted-public-keys",
                          other, *infos, check=False)  # fmt: skip
        assert refused.returncode != 0
        assert b"signature" in refused.stderr
    with running_bridge(home) as unsigned:
        refused = nix.run("nix", "copy", "--from", unsigned.url, "--to",
                          local_store(tmp_path / "unsigned"), "--option", "trusted-public-keys",
                          public, *infos, check=False)  # fmt: skip
        assert refused.returncode != 0


def test_nix_copy_to_the_bridge_stores_what_nix_has(
    exported: Exported, nix: Nix, tmp_path: Path
) -> None:
    paths = nix.closure(exported.inner)
    home = tmp_path / "home"
    with running_bridge(home) as bridge:
        refused = nix.run("nix", "copy", "--to", bridge.url, exported.inner, check=False)
        assert refused.returncode != 0
    assert cafs("path-info", exported.inner, home=home, check=False).returncode != 0
    with running_bridge(home, "--allow-put") as bridge:
        nix.run("nix", "copy", "--to", bridge.url, exported.inner)
        log = bridge.log_text()
    for path in paths:
        assert cafs_bytes("nar", "dump", path, home=home) == nix.dump(path), (path, log)
    # Uploaded uncompressed too.
    home2 = tmp_path / "home2"
    with running_bridge(home2, "--allow-put") as bridge:
        nix.run("nix", "copy", "--to", f"{bridge.url}?compression=none", exported.inner)
    for path in paths:
        assert cafs_bytes("nar", "dump", path, home=home2) == nix.dump(path), path

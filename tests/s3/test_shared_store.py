"""One store in a real S3 server, used by several processes as several machines would.

Each "machine" is a process with its own ``$CAFS_HOME`` holding its near
caches; the store of record is one bucket on SeaweedFS. What one imports, the
others mount and read byte for byte; the S3 server going away gives EIO, not a
hang, and the mount recovers when it comes back; a replicated SeaweedFS loses
nothing when a volume server dies; gc and verify work on the bucket.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest

from tests.mount.conftest import mounted_store
from tests.process import CAFS, cafs, cafs_bytes, store_env
from tests.s3.seaweed import Seaweed, start_cluster

BIG = 24 * 1024 * 1024


def machine_env(home: Path, bucket_url: str, near_size: str | None = None) -> dict[str, str]:
    """The services of one machine: near caches in ``home``, the store in the bucket."""
    bounded = f"&near-size={near_size}" if near_size else ""
    return {
        "BLOB_SERVICE_ADDR": f"cache://?near=objectstore+file://{home}/near&far={bucket_url}"
        + bounded,
        "DIRECTORY_SERVICE_ADDR": f"cache://?near=sqlite://{home}/dirs.sqlite&far={bucket_url}",
        "PATH_INFO_SERVICE_ADDR": f"cache://?near=lru://?capacity=100&far={bucket_url}",
    }


def direct_env(bucket_url: str) -> dict[str, str]:
    """Every service straight on the bucket, no near cache."""
    return {
        "BLOB_SERVICE_ADDR": bucket_url,
        "DIRECTORY_SERVICE_ADDR": bucket_url,
        "PATH_INFO_SERVICE_ADDR": bucket_url,
    }


def make_tree(root: Path, seed: int, big: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "bin").mkdir(parents=True)
    for i in range(20):
        (root / ("bin" if i % 3 else ".") / f"file{i}").write_bytes(
            rng.randbytes(rng.randrange(0, 20000))
        )
    (root / "bin" / "tool").write_bytes(rng.randbytes(3000))
    (root / "bin" / "tool").chmod(0o755)
    (root / "link").symlink_to("bin/tool")
    if big:
        (root / "big").write_bytes(rng.randbytes(big))
    return root


def same_tree(source: Path, mounted: Path) -> None:
    """Every entry of ``source`` is in ``mounted`` with the same kind, mode bit and bytes."""
    for path in sorted(source.rglob("*")):
        twin = mounted / path.relative_to(source)
        if path.is_symlink():
            assert os.readlink(twin) == os.readlink(path)
        elif path.is_dir():
            assert twin.is_dir()
        else:
            assert twin.read_bytes() == path.read_bytes(), twin
            assert os.access(twin, os.X_OK) == os.access(path, os.X_OK)


def test_what_one_machine_imports_another_mounts(
    seaweed: Seaweed, bucket: str, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree", 1, big=3 * 1024 * 1024)
    one, two = tmp_path / "one", tmp_path / "two"
    path = cafs("import", str(tree), home=one, **machine_env(one, bucket)).stdout.strip()
    # The second machine has never seen the store: everything comes from the bucket.
    with mounted_store(tmp_path / "mnt", two, env=machine_env(two, bucket)) as mount:
        same_tree(tree, mount.path / os.path.basename(path))
    assert any((two / "near").rglob("*/*")), "reads were kept in the second machine's near cache"
    # A third reads straight from the bucket, without any cache.
    three = tmp_path / "three"
    dump = cafs_bytes("nar", "dump", path, home=three, **direct_env(bucket))
    local = cafs_bytes("nar", "dump", path, home=one, **machine_env(one, bucket))
    assert dump == local and len(dump) > 3 * 1024 * 1024


def test_s3_down_mid_read_is_eio_and_the_mount_recovers(
    seaweed: Seaweed, bucket: str, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree", 2, big=BIG)
    home = tmp_path / "home"
    url = bucket + "&deadline=4"
    path = cafs("import", str(tree), home=home, **direct_env(url)).stdout.strip()
    expected = hashlib.sha256((tree / "big").read_bytes()).hexdigest()
    reader_home = tmp_path / "reader"
    with mounted_store(tmp_path / "mnt", reader_home, env=machine_env(reader_home, url)) as mount:
        big = mount.path / os.path.basename(path) / "big"
        with open(big, "rb") as f:
            first = f.read(1024 * 1024)  # the read has begun
            assert first == (tree / "big").read_bytes()[: len(first)]
            seaweed.kill()
            started = time.monotonic()
            with pytest.raises(OSError, match="Input/output error") as failure:
                while f.read(1024 * 1024):
                    pass
            took = time.monotonic() - started
        assert failure.value.errno == errno.EIO
        assert took < 30, f"EIO came after {took:.1f} s"
        assert mount.process.poll() is None, "the mount daemon stayed up"
        seaweed.start()
        assert hashlib.sha256(big.read_bytes()).hexdigest() == expected


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield server
    finally:
        server.stop()


def test_a_replicated_store_loses_nothing_when_a_volume_server_dies(
    cluster: Seaweed, tmp_path: Path
) -> None:
    bucket = cluster.store_url(cluster.create_bucket())
    tree = make_tree(tmp_path / "tree", 3, big=BIG)
    home = tmp_path / "home"
    path = cafs("import", str(tree), home=home, **direct_env(bucket)).stdout.strip()
    expected = subprocess.run(
        [*CAFS, "nar", "dump", path], env=store_env(home), capture_output=True, check=False
    )
    reader = subprocess.Popen(
        [*CAFS, "nar", "dump", path],
        env=store_env(tmp_path / "reader", **direct_env(bucket)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Kill a volume server once the dump is under way.
    killer = threading.Timer(0.5, cluster.kill_volume, args=(0,))
    killer.start()
    try:
        out, err = reader.communicate(timeout=300)
    finally:
        killer.cancel()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, err.decode(errors="replace")
    assert expected.returncode != 0  # the embedded store of `home` never held it
    local = cafs_bytes("nar", "dump", path, home=home, **direct_env(bucket))
    assert out == local
    cafs("verify", "--nar", home=home, **direct_env(bucket))


def bucket_keys(seaweed: Seaweed, bucket_name: str) -> set[str]:
    store = seaweed.store(bucket_name)
    return {
        meta["path"]
        for batch in obstore.list(store)
        for meta in batch
        if not meta["path"].startswith(("pathinfos/", "pins/"))
    }


def test_gc_and_verify_on_the_bucket(seaweed: Seaweed, bucket_name: str, tmp_path: Path) -> None:
    live = make_tree(tmp_path / "live", 4, big=1_500_000)
    dead = make_tree(tmp_path / "dead", 5, big=700_000)
    store, only_live = seaweed.create_bucket(), seaweed.create_bucket()
    home = tmp_path / "home"
    for name, sources in ((store, [live]), (only_live, [live])):
        cafs("import", *map(str, sources), home=home, **direct_env(seaweed.store_url(name)))
    url = seaweed.store_url(store)
    cafs("castore", "ingest", str(dead), home=home, **direct_env(url))
    dead_keys = bucket_keys(seaweed, store) - bucket_keys(seaweed, only_live)
    assert dead_keys
    dry = cafs("gc", "--dry-run", "--grace", "0", home=home, **direct_env(url))
    assert {line.split("\t")[1] for line in dry.stdout.splitlines()} == dead_keys
    cafs("gc", "--grace", "0", home=home, **direct_env(url))
    assert bucket_keys(seaweed, store) == bucket_keys(seaweed, only_live)
    cafs("verify", "--nar", home=home, **direct_env(url))

    # A flipped byte in a chunk, put back into the bucket, is found.
    s3 = seaweed.store(store)
    chunk = sorted(k for k in bucket_keys(seaweed, store) if k.startswith("chunks/"))[0]
    data = bytearray(obstore.get(s3, chunk).bytes().to_bytes())
    data[len(data) // 2] ^= 0x20
    obstore.put(s3, chunk, bytes(data))
    result = cafs("verify", home=home, check=False, **direct_env(url))
    assert result.returncode == 5 and chunk in result.stdout

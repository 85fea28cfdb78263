"""The SeaweedFS fixture itself, driven through obstore only (no cafs code)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.s3.seaweed import Seaweed, start_cluster, weed_binary

obstore = pytest.importorskip("obstore")
from obstore.store import S3Store  # noqa: E402

if TYPE_CHECKING:
    from obstore.store import RetryConfig, S3Config

NO_RETRY: RetryConfig = {"max_retries": 0, "retry_timeout": datetime.timedelta(seconds=2)}


def test_round_trip(seaweed: Seaweed, bucket_name: str) -> None:
    assert bucket_name in seaweed.list_buckets()
    store = seaweed.store(bucket_name)
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    obstore.put(store, "dir/a", b"alpha")
    obstore.put(store, "dir/sub/b", b"beta!")
    obstore.put(store, "other/c", b"c")

    assert bytes(obstore.get(store, "dir/a").bytes()) == b"alpha"
    assert bytes(obstore.get_range(store, "dir/sub/b", start=1, end=3)) == b"et"
    head = obstore.head(store, "dir/sub/b")
    assert head["path"] == "dir/sub/b" and head["size"] == 5 and head["e_tag"]

    listed = obstore.list(store, prefix="dir").collect()
    assert sorted(m["path"] for m in listed) == ["dir/a", "dir/sub/b"]
    for meta in listed:
        assert set(meta) == {"path", "last_modified", "size", "e_tag", "version"}
        assert isinstance(meta["last_modified"], datetime.datetime)
        assert meta["last_modified"].tzinfo is not None and meta["last_modified"] >= before
    assert obstore.list_with_delimiter(store)["common_prefixes"] == ["dir", "other"]

    obstore.delete(store, "dir/a")
    obstore.delete(store, "dir/a")  # deleting what is gone is not an error
    assert [m["path"] for m in obstore.list(store).collect()] == ["dir/sub/b", "other/c"]
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "dir/a")


def test_missing_key_is_file_not_found(seaweed: Seaweed, bucket_name: str) -> None:
    # obstore 0.12 raises the builtin, not its deprecated obstore.exceptions.NotFoundError.
    store = seaweed.store(bucket_name)
    with pytest.raises(FileNotFoundError, match="not found"):
        obstore.get(store, "missing")
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "missing")


async def test_async_round_trip(seaweed: Seaweed, bucket_name: str) -> None:
    store = seaweed.store(bucket_name, prefix="p")
    await obstore.put_async(store, "x", b"async")
    result = await obstore.get_async(store, "x")
    assert bytes(await result.bytes_async()) == b"async"
    assert [m["path"] for m in await obstore.list(store).collect_async()] == ["x"]
    with pytest.raises(FileNotFoundError):
        await obstore.get_async(store, "y")


def test_store_url_maps_onto_obstore(seaweed: Seaweed, bucket: str) -> None:
    """The URL's query holds S3Config keys, except allow_http, a client option."""
    parts = urlsplit(bucket)
    assert parts.scheme == "objectstore+s3"
    query = dict(parse_qsl(parts.query))
    assert set(query) == {
        "endpoint",
        "region",
        "access_key_id",
        "secret_access_key",
        "allow_http",
    }
    allow_http = query.pop("allow_http") == "true"
    store = S3Store.from_url(
        f"s3://{parts.netloc}/prefix",
        config=cast("S3Config", query),
        client_options={"allow_http": allow_http},
    )
    assert store.prefix == "prefix"
    obstore.put(store, "k", b"via url")
    plain = seaweed.store(parts.netloc)
    assert bytes(obstore.get(plain, "prefix/k").bytes()) == b"via url"


def test_restart_keeps_objects(seaweed: Seaweed, bucket_name: str) -> None:
    store = seaweed.store(bucket_name)
    obstore.put(store, "kept", b"before restart")
    pid = seaweed.pids["server"]
    seaweed.restart()
    assert seaweed.pids["server"] != pid
    assert bytes(obstore.get(store, "kept").bytes()) == b"before restart"

    # A crash: no server, so a request without retries fails at once; then it comes back.
    seaweed.kill()
    assert seaweed.pids == {}
    with pytest.raises(obstore.exceptions.GenericError, match="onnect"):
        obstore.get(seaweed.store(bucket_name, retry_config=NO_RETRY), "kept")
    seaweed.start()
    assert bytes(obstore.get(store, "kept").bytes()) == b"before restart"


@pytest.mark.skipif(weed_binary() is None, reason="no weed binary")
def test_cluster_survives_a_volume_server(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    pids = list(cluster.pids.values())
    try:
        assert len(cluster.volume_pids) == 2
        store = cluster.store(cluster.create_bucket())
        data = os.urandom(9 * 1024 * 1024)  # three 4 MiB filer chunks
        obstore.put(store, "big", data)
        obstore.put(store, "small", b"tiny")

        cluster.kill_volume(0)
        assert cluster.volume_pids[0] is None and cluster.volume_pids[1] is not None
        # The dead server held a copy (replication 001); the survivor serves it all.
        held = sum(f.stat().st_size for f in (tmp_path / "volume0").glob("*.dat"))
        assert held >= len(data)
        assert bytes(obstore.get(store, "big").bytes()) == data
        assert bytes(obstore.get(store, "small").bytes()) == b"tiny"
    finally:
        cluster.stop()
        cluster.stop()  # a second stop is harmless
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

"""Counts the data path keeps for ``--metrics-listen-address``: plain numbers, no import cost.

The backends and caches sit low in the layers and run in every command; most
commands serve no metrics. So they add to these in-process counters, and the
metrics endpoint (``cafs.metrics``) turns them into Prometheus counters when
it is scraped:

- ``cafs_fetched_objects_total`` / ``cafs_fetched_bytes_total``, by ``backend``
  (``file``, ``memory``, ``s3``, ``grpc``, ``nix+http``…): objects read and
  verified from where they are stored;
- ``cafs_cache_lookups_total``, by ``service`` (``blob``, ``directory``,
  ``pathinfo``) and ``result`` (``hit``: served near; ``miss``: fetched far);
- ``cafs_plain_files_total``, by ``event`` (``made``, ``failed``, ``evicted``):
  the plain copies of verified blobs (``cafs.castore.blobs.plain``).
"""

from __future__ import annotations

from collections import defaultdict

Labels = tuple[tuple[str, str], ...]

_values: defaultdict[str, defaultdict[Labels, float]] = defaultdict(lambda: defaultdict(float))

HELP = {
    "cafs_fetched_objects": "Objects read and verified from a backend, by backend",
    "cafs_fetched_bytes": "Bytes read and verified from a backend, by backend",
    "cafs_cache_lookups": "Cache lookups, by service and result (hit: near, miss: far)",
    "cafs_plain_files": "Plain copies of blobs, by event (made, failed, evicted)",
}


def add(name: str, amount: float = 1.0, **labels: str) -> None:
    _values[name][tuple(sorted(labels.items()))] += amount


def fetched(backend: str, size: int) -> None:
    """One object of ``size`` bytes read from ``backend``."""
    add("cafs_fetched_objects", 1, backend=backend)
    add("cafs_fetched_bytes", size, backend=backend)


def cache_lookup(service: str, hit: bool) -> None:
    add("cafs_cache_lookups", 1, service=service, result="hit" if hit else "miss")


def snapshot() -> dict[str, dict[Labels, float]]:
    """Every counter's values by label set, as they are now."""
    return {name: dict(values) for name, values in list(_values.items())}

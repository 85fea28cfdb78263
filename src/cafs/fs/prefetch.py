"""Fetching the small files beside a file that is opened, before they are opened.

A program that opens one file of a directory usually opens its neighbours
next (a build, a walk that reads). Each fetch costs a round trip to the store
(a thread hop, a network request), so the neighbours' blobs are fetched
together in the background, in one ``BlobService.read_many``, and their opens
find them ready. Files already fetched or on their way are skipped, so a
directory read in order costs one batch per ``SIBLING_BATCH_FILES`` files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence

from cafs.castore.blobs.base import BlobService
from cafs.castore.digest import Digest
from cafs.castore.nodes import FileNode, Node

log = logging.getLogger(__name__)

SIBLING_MAX_SIZE = 64 * 1024
"""Files up to this size are fetched with their siblings."""
SIBLING_BATCH_FILES = 256
SIBLING_BATCH_BYTES = 4 * 1024 * 1024
AHEAD_BYTES = 32 * 1024 * 1024
"""Fetched-ahead small blobs waiting for their open; the oldest go first."""


class SiblingPrefetch:
    """Small blobs fetched ahead of their opens, and the blobs known to exist."""

    def __init__(self, blobs: BlobService) -> None:
        self.blobs = blobs
        self.present: set[Digest] = set()
        """Blobs seen once: blobs are never taken back, so these need no check again."""
        self._ahead: OrderedDict[Digest, bytes] = OrderedDict()
        self._ahead_bytes = 0
        self._in_flight: dict[Digest, asyncio.Future[dict[Digest, bytes]]] = {}

    def take(self, digest: Digest) -> bytes | None:
        """The blob's bytes if they were fetched ahead (each handed out once)."""
        fetched = self._ahead.pop(digest, None)
        if fetched is not None:
            self._ahead_bytes -= len(fetched)
        return fetched

    async def wait(self, digest: Digest) -> bytes | None:
        """The blob's bytes if a batch is fetching them; None if not (or it failed)."""
        pending = self._in_flight.get(digest)
        if pending is None:
            return None
        with contextlib.suppress(Exception):
            await asyncio.shield(pending)
        return self.take(digest)

    def in_flight(self, digest: Digest) -> bool:
        return digest in self._in_flight

    def fetch_after(self, entries: Sequence[tuple[bytes, Node]], opened: Digest) -> None:
        """Start fetching the small files after the one with blob ``opened``, wrapping round."""
        start = next(
            (
                i
                for i, (_, node) in enumerate(entries)
                if isinstance(node, FileNode) and node.digest == opened
            ),
            0,
        )
        wanted: list[Digest] = []
        total = 0
        for _, node in [*entries[start + 1 :], *entries[:start]]:
            if (
                not isinstance(node, FileNode)
                or node.size > SIBLING_MAX_SIZE
                or node.digest in self.present
                or node.digest in self._ahead
                or node.digest in self._in_flight
                or node.digest in wanted
            ):
                continue
            wanted.append(node.digest)
            total += node.size
            if len(wanted) == SIBLING_BATCH_FILES or total >= SIBLING_BATCH_BYTES:
                break
        if not wanted:
            return
        batch = asyncio.ensure_future(self.blobs.read_many(wanted))
        for digest in wanted:
            self._in_flight[digest] = batch
        batch.add_done_callback(lambda done: self._keep(wanted, done))

    def _keep(self, wanted: list[Digest], done: asyncio.Future[dict[Digest, bytes]]) -> None:
        for digest in wanted:
            self._in_flight.pop(digest, None)
        if done.cancelled() or done.exception() is not None:
            log.debug("fetching ahead failed: %s", None if done.cancelled() else done.exception())
            return
        for digest, data in done.result().items():
            if digest in self.present or digest in self._ahead:
                continue
            self._ahead[digest] = data
            self._ahead_bytes += len(data)
        while self._ahead_bytes > AHEAD_BYTES:
            _, dropped = self._ahead.popitem(last=False)
            self._ahead_bytes -= len(dropped)

"""Progress bars for long work, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class _RichIngestProgress:
    def __init__(self, progress: Progress, label: str) -> None:
        self._progress = progress
        self._label = label
        self._bytes: TaskID | None = None
        self._files: TaskID | None = None

    def started(self, files: int, size: int) -> None:
        self._files = self._progress.add_task(f"{self._label} files", total=files)
        self._bytes = self._progress.add_task(f"{self._label} bytes", total=size)

    def advanced(self, files: int, size: int) -> None:
        if files and self._files is not None:
            self._progress.advance(self._files, files)
        if size and self._bytes is not None:
            self._progress.advance(self._bytes, size)


class _Quiet:
    def started(self, files: int, size: int) -> None:
        pass

    def advanced(self, files: int, size: int) -> None:
        pass


@contextmanager
def ingest_progress(label: str) -> Iterator[_RichIngestProgress | _Quiet]:
    """A progress reporter for one ingest: a live bar on a terminal, silence elsewhere."""
    if not sys.stderr.isatty():
        yield _Quiet()
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        yield _RichIngestProgress(progress, label)

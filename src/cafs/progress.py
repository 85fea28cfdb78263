"""Progress bars for long work, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class _RichIngestProgress:
    """One bar per ingest: bytes as the measure, files counted beside it."""

    def __init__(self, progress: Progress, label: str) -> None:
        self._progress = progress
        self._label = label
        self._task: TaskID | None = None
        self._files_done = 0
        self._files_total = 0

    def started(self, files: int, size: int) -> None:
        self._files_total = files
        self._task = self._progress.add_task(self._label, total=size, files=f"0/{files} files")

    def advanced(self, files: int, size: int) -> None:
        if self._task is None:
            return
        self._files_done += files
        self._progress.update(
            self._task,
            advance=size,
            files=f"{self._files_done}/{self._files_total} files",
        )


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
        TextColumn("{task.fields[files]}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        yield _RichIngestProgress(progress, label)


class Counter(Protocol):
    def advance(self, n: int = 1) -> None: ...


class _RichCounter:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1) -> None:
        self._progress.update(self._task, advance=n)


class _QuietCounter:
    def advance(self, n: int = 1) -> None:
        pass


@contextmanager
def count_progress(label: str, total: int, unit: str) -> Iterator[Counter]:
    """A bar counting items of work (store paths): live on a terminal, silent elsewhere."""
    if not sys.stderr.isatty():
        yield _QuietCounter()
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        yield _RichCounter(progress, progress.add_task(label, total=total))

"""The handover journal: what a successor reads back, and compaction."""

from __future__ import annotations

from pathlib import Path

from cafs.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from cafs.fs.inodes import InodeTracker
from cafs.fuse.handover import Journal, read_journal
from tests.fixtures import DIRECTORY_A, HELLOWORLD_DIGEST


def test_a_journal_reads_back_what_was_handed_out(tmp_path: Path) -> None:
    path = tmp_path / "inodes.journal"
    journal = Journal(path, truncate=True)
    tracker = InodeTracker()
    tracker.on_allocate = journal.inode
    journal.session(31, 0xABC)
    nodes = [
        FileNode(HELLOWORLD_DIGEST, 12, True),
        DirectoryNode(DIRECTORY_A.digest, DIRECTORY_A.size),
        SymlinkNode(b"../somewhere"),
    ]
    inos = [tracker.put(node) for node in nodes]
    assert tracker.put(nodes[0]) == inos[0]  # content-equal: no second record
    journal.close()
    restored = read_journal(path)
    assert (restored.minor, restored.flags) == (31, 0xABC)
    assert restored.inodes == dict(zip(inos, nodes, strict=True))


def test_compaction_keeps_only_live_inodes(tmp_path: Path) -> None:
    path = tmp_path / "inodes.journal"
    journal = Journal(path, truncate=True)
    journal.session(31, 0)
    tracker = InodeTracker()
    tracker.on_allocate = journal.inode
    kept = tracker.put(FileNode(HELLOWORLD_DIGEST, 12, False))
    tracker.remember(kept)
    gone = tracker.put(SymlinkNode(b"a"))
    tracker.remember(gone)
    assert tracker.forget(gone, 1)  # the kernel let it go: freed
    assert journal.records == 2
    journal.compact(tracker.live())
    assert journal.records == 1
    later = tracker.put(SymlinkNode(b"b"))  # appends after the rewrite
    journal.close()
    restored = read_journal(path)
    assert set(restored.inodes) == {kept, later} and restored.minor == 31


def test_restored_inodes_are_never_freed() -> None:
    tracker = InodeTracker()
    tracker.restore(7, FileNode(HELLOWORLD_DIGEST, 12, False))
    assert not tracker.forget(7, 1_000_000)
    assert tracker.get(7) is not None
    assert tracker.put(FileNode(HELLOWORLD_DIGEST, 12, False)) == 7
    assert tracker.put(SymlinkNode(b"new")) == 8  # numbers go on after the restored ones

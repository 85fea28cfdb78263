"""Checking that a set of directories forms one closure.

Uploads come leaves first: a directory may only refer to directories sent
before it, with the size each of them really has. At the end exactly one
directory, the root, must be unreferenced. Downloads come root first: a
directory is only accepted if it is the requested root or something already
accepted refers to it.
"""

from __future__ import annotations

from cafs.castore.digest import Digest
from cafs.castore.directory import Directory
from cafs.castore.nodes import display_name
from cafs.errors import ClosureError


class LeavesToRootValidator:
    """Accepts directories leaves first; ``finish`` returns them in that order."""

    def __init__(self) -> None:
        self._directories: dict[Digest, Directory] = {}
        self._referenced: set[Digest] = set()

    def __len__(self) -> int:
        return len(self._directories)

    def add(self, directory: Directory) -> Digest:
        digest = directory.digest
        if digest in self._directories:
            return digest  # a repeat is harmless
        for name, child in directory.directories():
            known = self._directories.get(child.digest)
            if known is None:
                raise ClosureError(
                    f"directory {digest}: entry {display_name(name)!r} refers to "
                    f"{child.digest}, which was not sent before it"
                )
            if known.size != child.size:
                raise ClosureError(
                    f"directory {digest}: entry {display_name(name)!r} has wrong size: "
                    f"says {child.size}, the directory has {known.size}"
                )
            self._referenced.add(child.digest)
        self._directories[digest] = directory
        return digest

    def finish(self) -> tuple[Digest, list[Directory]]:
        """The root digest and every directory, leaves first."""
        if not self._directories:
            raise ClosureError("got no directories")
        roots = [d for d in self._directories if d not in self._referenced]
        if len(roots) != 1:
            shown = ", ".join(str(r) for r in roots[:3])
            raise ClosureError(f"directories have {len(roots)} disconnected roots: {shown}")
        return roots[0], list(self._directories.values())


class RootToLeavesValidator:
    """Accepts directories root first, each only once something refers to it."""

    def __init__(self, root: Digest) -> None:
        self._root = root
        self._allowed: set[Digest] = {root}
        self._seen: set[Digest] = set()

    def digest_allowed(self, digest: Digest) -> bool:
        return digest in self._allowed and digest not in self._seen

    def add(self, directory: Directory) -> None:
        digest = directory.digest
        if digest in self._seen:
            raise ClosureError(f"directory {digest} was received twice")
        if digest not in self._allowed:
            raise ClosureError(
                f"unexpected directory {digest}: nothing received before refers to it"
            )
        self._seen.add(digest)
        for _, child in directory.directories():
            self._allowed.add(child.digest)

    def missing(self) -> set[Digest]:
        """Referenced directories that have not been received."""
        return self._allowed - self._seen


def leaves_first(closure: list[Directory]) -> list[Directory]:
    """A closure received root first, reordered so every directory follows its children.

    Reversing a root-first order is not enough: in a closure where a deep
    directory and a shallow one share a child, the child is sent once, at
    its shallowest place, and would follow the deep directory that refers to it.
    """
    by_digest = {d.digest: d for d in closure}
    ordered: list[Directory] = []
    placed: set[Digest] = set()
    for start in closure:
        stack: list[tuple[Directory, bool]] = [(start, False)]
        while stack:
            directory, children_done = stack.pop()
            digest = directory.digest
            if digest in placed:
                continue
            if children_done:
                placed.add(digest)
                ordered.append(directory)
                continue
            stack.append((directory, True))
            for _, child in directory.directories():
                below = by_digest.get(child.digest)
                if below is not None and child.digest not in placed:
                    stack.append((below, False))
    return ordered

"""Deterministic benchmark corpora: a source-tree-like directory tree and one large file.

The same seed always gives the same bytes, names, modes and symlinks, so
figures from different machines (or from before and after a change) measure
the same input. Generation must be cheap next to what it feeds: contents come
from a seeded ``random.Random`` (``randbytes``) and slices of one pre-built
text pool, never from per-byte Python loops.

Use as a module (``generate_tree``, ``generate_large``) or as a script::

    python bench/corpus.py tree DEST [--files N --dirs N ...]
    python bench/corpus.py large DEST [--size 1GiB]

Every count is a parameter, so tests can build a tiny corpus in a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_FILES = 50_000
DEFAULT_DIRS = 2_000
DEFAULT_MAX_FILE_SIZE = 16 * 1024
DEFAULT_DUPLICATE_FRACTION = 0.10
DEFAULT_TEXT_FRACTION = 0.6
DEFAULT_EXECUTABLES = 50
DEFAULT_SYMLINKS = 50
DEFAULT_LARGE_SIZE = 1 << 30
DEFAULT_SEED = 20240601

# Subdirectories per top-level directory: 2,000 directories become 40 top-level
# ones holding 49 each, a shape like a source checkout's.
SUBDIRS_PER_TOP = 50
# Text files are slices of this pool; big enough that slices rarely overlap.
TEXT_POOL_SIZE = 8 * 1024 * 1024
WRITE_BLOCK = 8 * 1024 * 1024

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?)b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``123``, ``16KiB``, ``1GiB`` or ``500MB``: ``KiB``/``Ki`` are binary,
    ``KB``/``K`` decimal, so a command line can say exactly what it means."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (try 1GiB, 512MiB, 16KiB or a byte count)")
    number, prefix, binary = match.groups()
    power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


@dataclass(frozen=True, slots=True)
class TreeStats:
    """What a generated tree contains; the benchmark checks ingest results against it."""

    files: int
    dirs: int  # not counting the root
    symlinks: int
    executables: int
    duplicates: int  # files whose contents equal an earlier file's
    total_bytes: int  # all regular files, duplicates included
    unique_bytes: int  # files that are not duplicates


def dir_layout(dirs: int) -> list[str]:
    """Exactly ``dirs`` relative directory paths, two levels deep, parents first.

    ``ceil(dirs / 50)`` top-level directories share the rest as subdirectories
    as evenly as possible (40 × (1 + 49) for the default 2,000).
    """
    if dirs <= 0:
        return []
    tops = math.ceil(dirs / SUBDIRS_PER_TOP)
    paths = [f"d{t:03d}" for t in range(tops)]
    subs = dirs - tops
    for t in range(tops):
        count = subs // tops + (1 if t < subs % tops else 0)
        paths.extend(f"d{t:03d}/s{s:03d}" for s in range(count))
    return paths


def _text_pool(rng: random.Random) -> bytes:
    """Pseudo-source text: words from a small vocabulary, indented lines, so zstd finds
    the kind of redundancy real text files have."""
    alphabet = "abcdefghijklmnopqrstuvwxyz_"
    vocabulary = ["".join(rng.choices(alphabet, k=rng.randint(2, 10))) for _ in range(2000)] + [
        "def",
        "return",
        "if",
        "else",
        "for",
        "in",
        "self",
        "None",
        "=",
        "(",
        ")",
        ":",
    ]
    lines: list[str] = []
    size = 0
    while size < TEXT_POOL_SIZE:
        indent = "    " * rng.randint(0, 3)
        line = indent + " ".join(rng.choices(vocabulary, k=rng.randint(1, 12))) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:TEXT_POOL_SIZE]


def _contents(seed: int, index: int, size: int, text: bool, pool: bytes) -> bytes:
    """File ``index``'s bytes: a function of (seed, index, size, kind) only, so a duplicate
    is made by calling this again with its source's arguments."""
    if size == 0:
        return b""
    rng = random.Random(seed * 1_000_003 + index)
    # A unique first line keeps distinct files distinct even when slices coincide.
    header = f"# corpus file {index}\n".encode()
    if text and size <= len(pool):
        start = rng.randrange(len(pool) - size + 1)
        body = pool[start : start + size]
    else:
        body = rng.randbytes(size)
    return (header + body)[:size] if size > len(header) else rng.randbytes(size)


def generate_tree(
    dest: str | os.PathLike[str],
    files: int = DEFAULT_FILES,
    dirs: int = DEFAULT_DIRS,
    *,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    duplicate_fraction: float = DEFAULT_DUPLICATE_FRACTION,
    text_fraction: float = DEFAULT_TEXT_FRACTION,
    executables: int = DEFAULT_EXECUTABLES,
    symlinks: int = DEFAULT_SYMLINKS,
    seed: int = DEFAULT_SEED,
) -> TreeStats:
    """Create the tree at ``dest`` (which must not exist or be empty) and describe it.

    Files get uniform random sizes in ``[0, max_file_size]`` and land in random
    directories (the root included); ``duplicate_fraction`` of them copy an
    earlier, non-duplicate file; ``executables`` files have mode 0755;
    ``symlinks`` relative links point at files, directories, and one nowhere.
    """
    root = Path(dest)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    if files < 1 or dirs < 0 or not 0 <= duplicate_fraction < 1:
        raise ValueError("need files >= 1, dirs >= 0 and 0 <= duplicate_fraction < 1")
    rng = random.Random(seed)
    pool = _text_pool(rng)

    dir_paths = dir_layout(dirs)
    root.mkdir(parents=True, exist_ok=True)
    for rel in dir_paths:
        (root / rel).mkdir()
    homes = ["", *dir_paths]

    sizes = [rng.randint(0, max_file_size) for _ in range(files)]
    is_text = [rng.random() < text_fraction for _ in range(files)]
    n_duplicates = min(round(files * duplicate_fraction), files - 1)
    duplicate_of: dict[int, int] = {}
    for index in sorted(rng.sample(range(1, files), n_duplicates)):
        source = rng.randrange(index)
        while source in duplicate_of:  # copy an original, never a copy
            source = rng.randrange(index)
        duplicate_of[index] = source
    executable = set(rng.sample(range(files), min(executables, files)))

    paths: list[str] = []
    unique_bytes = 0
    for index in range(files):
        source = duplicate_of.get(index, index)
        size, text = sizes[source], is_text[source]
        home = rng.choice(homes)
        name = f"f{index:06d}.{'txt' if text else 'bin'}"
        rel = f"{home}/{name}" if home else name
        paths.append(rel)
        data = _contents(seed, source, size, text, pool)
        if source == index:
            unique_bytes += size
        file_path = root / rel
        with open(file_path, "wb") as f:
            f.write(data)
        if index in executable:
            file_path.chmod(0o755)
        sizes[index] = size

    link_homes = [rng.choice(homes) for _ in range(symlinks)]
    for number, home in enumerate(link_homes):
        where = root / home
        if number == 0:
            target = "does-not-exist"  # dangling links are legal and must be kept
        elif number % 10 == 0 and dir_paths:
            target = os.path.relpath(root / rng.choice(dir_paths), where)
        else:
            target = os.path.relpath(root / rng.choice(paths), where)
        (where / f"l{number:04d}").symlink_to(target)

    return TreeStats(
        files=files,
        dirs=len(dir_paths),
        symlinks=symlinks,
        executables=len(executable),
        duplicates=n_duplicates,
        total_bytes=sum(sizes),
        unique_bytes=unique_bytes,
    )


def generate_large(
    dest: str | os.PathLike[str], size: int = DEFAULT_LARGE_SIZE, *, seed: int = DEFAULT_SEED
) -> int:
    """Write ``size`` random (incompressible, chunk-unique) bytes to ``dest``; return size.

    Random data is the honest case for a chunking, compressing store: no chunk
    repeats and compression cannot shrink what has to be written.
    """
    rng = random.Random(seed ^ 0x5EED)
    remaining = size
    with open(dest, "wb") as f:
        while remaining:
            block = min(remaining, WRITE_BLOCK)
            f.write(rng.randbytes(block))
            remaining -= block
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)

    tree = sub.add_parser("tree", help="a tree of many small files")
    tree.add_argument("dest", type=Path)
    tree.add_argument("--files", type=int, default=DEFAULT_FILES)
    tree.add_argument("--dirs", type=int, default=DEFAULT_DIRS)
    tree.add_argument(
        "--max-file-size", type=parse_size, default=DEFAULT_MAX_FILE_SIZE, metavar="SIZE"
    )
    tree.add_argument("--duplicates", type=float, default=DEFAULT_DUPLICATE_FRACTION)
    tree.add_argument("--text-fraction", type=float, default=DEFAULT_TEXT_FRACTION)
    tree.add_argument("--executables", type=int, default=DEFAULT_EXECUTABLES)
    tree.add_argument("--symlinks", type=int, default=DEFAULT_SYMLINKS)
    tree.add_argument("--seed", type=int, default=DEFAULT_SEED)

    large = sub.add_parser("large", help="one large random file")
    large.add_argument("dest", type=Path)
    large.add_argument("--size", type=parse_size, default=DEFAULT_LARGE_SIZE, metavar="SIZE")
    large.add_argument("--seed", type=int, default=DEFAULT_SEED)

    args = parser.parse_args(argv)
    try:
        if args.kind == "tree":
            stats = generate_tree(
                args.dest,
                args.files,
                args.dirs,
                max_file_size=args.max_file_size,
                duplicate_fraction=args.duplicates,
                text_fraction=args.text_fraction,
                executables=args.executables,
                symlinks=args.symlinks,
                seed=args.seed,
            )
            print(json.dumps(asdict(stats), indent=2))
        else:
            print(generate_large(args.dest, args.size, seed=args.seed))
    except (OSError, ValueError) as exc:
        print(f"corpus: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every import in cafs runs downwards through the layers, none back up."""

from __future__ import annotations

import ast
from pathlib import Path

import cafs

SOURCE = Path(cafs.__file__).parent

# Lowest first. A module may import its own layer and the layers below it.
LAYERS: list[set[str]] = [
    {
        "errors",
        "config",
        "urls",
        "sockets",
        "tuning",
        "progress",
        "sqlite",
        "gen",
        "tracing",
        "counters",
    },
    {"rpc"},
    {"castore"},
    {"store"},
    {"fs"},
    {"fuse", "virtio", "grpc", "http", "metrics"},
    {"cli"},
]


def layer_of(top: str) -> int:
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"cafs.{top} is in no layer: add it to LAYERS")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("cafs.")}


def test_imports_run_downwards() -> None:
    upward = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE)
        if len(relative.parts) == 1 and relative.stem in ("__init__",):
            continue
        top = relative.parts[0].removesuffix(".py")
        rank = layer_of(top)
        for module in imported_modules(path):
            target = module.split(".")[1]
            if layer_of(target) > rank:
                upward.append(f"{relative}: imports {module}")
    assert upward == []

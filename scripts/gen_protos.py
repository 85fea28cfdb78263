"""Regenerate the protobuf modules under src/cafs/gen from protos/.

The generated modules import each other by proto package path
(``from tvix.castore.v1 import ...``); they are rewritten to live inside the
``cafs.gen`` package so no sys.path tricks are needed. ``--check`` exits 1
when the checked-in files differ from what the .proto files produce.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "src" / "cafs" / "gen"
IMPORT_RE = re.compile(r"^from tvix\.", re.MULTILINE)
HEADER = "# Generated from protos/ by scripts/gen_protos.py. Do not edit.\n"


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}_grpc",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out.rglob("*.py*"):
        text = IMPORT_RE.sub("from cafs.gen.tvix.", path.read_text())
        path.write_text(HEADER + text)
    for directory in [out, *[d for d in out.rglob("*") if d.is_dir()]]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text(HEADER)


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(
        p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    files_b = sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    if files_a != files_b:
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gen"
        out.mkdir()
        generate(out)
        if check:
            if not same_tree(out, GEN):
                print("src/cafs/gen is out of date: run `make protos`", file=sys.stderr)
                return 1
            return 0
        shutil.rmtree(GEN, ignore_errors=True)
        shutil.copytree(out, GEN)
    return 0


if __name__ == "__main__":
    sys.exit(main())

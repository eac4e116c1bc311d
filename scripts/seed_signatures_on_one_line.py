"""Copy the package with every seed-prescribed signature written on one line.

`duplicates` pairs any two runs of six same-shape lines, and ``ruff format`` writes a signature
of typed parameters one parameter a line, so the seed's long constructor and factory signatures
(caveclient's ``AnnotationClient(...)`` / ``AnnotationClientV2.__init__`` and the like) pair with
one another even though we may not change them. Running ``duplicates`` on the copy this script
writes shows which pairs are left once those signatures are out of the picture: the ones that
are ours to remove.

Only signatures of names the seed documents are joined (functions, methods, classes, and the
``__init__`` of a seed class); bodies, docstrings and every other line stay as they are.

Example:
    ```bash
    python scripts/seed_signatures_on_one_line.py /tmp/flat \\
        /work/shared/seeds/caveclient.txt /work/shared/seeds/aind_data_access_api.txt
    cd /tmp/flat/prefect_neurodata && duplicates --most 200 --seconds 120
    ```
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "prefect_neurodata"
# A documented callable: "caveclient.x.Name(", "class a.b.Name(", "method_name(".
SEED_ENTRY = re.compile(
    r"^(?:class |classmethod |staticmethod |property |async )?([A-Za-z_][\w.]*)\("
)


def seed_names(seed_files: list[Path]) -> set[str]:
    """The last dotted part of every callable the seed documentation lists."""
    names = set()
    for seed in seed_files:
        for line in seed.read_text().splitlines():
            match = SEED_ENTRY.match(line)
            if match:
                names.add(match.group(1).rsplit(".", 1)[-1])
    return names


def signature_spans(tree: ast.Module, names: set[str]) -> list[tuple[int, int]]:
    """0-based (first, last) lines of each seed signature that spans more than one line."""
    seed_inits = {
        id(item)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name in names
        for item in node.body
        if isinstance(item, ast.FunctionDef) and item.name == "__init__"
    }
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name in names or id(node) in seed_inits:
            first, last = node.lineno - 1, node.body[0].lineno - 2
            if last > first:
                spans.append((first, last))
    return spans


def flatten(source: str, names: set[str]) -> str:
    """``source`` with each seed signature joined onto its first line."""
    lines = source.splitlines()
    for first, last in sorted(signature_spans(ast.parse(source), names), reverse=True):
        indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
        lines[first : last + 1] = [indent + " ".join(ln.strip() for ln in lines[first : last + 1])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Directory to write the copy of the package to.")
    parser.add_argument("seeds", type=Path, nargs="+", help="The seed documentation files.")
    args = parser.parse_args()
    names = seed_names(args.seeds)
    target = args.out / PACKAGE.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        path.write_text(flatten(path.read_text(), names))
    print(f"{target}: {len(names)} seed names; run duplicates there")


if __name__ == "__main__":
    main()

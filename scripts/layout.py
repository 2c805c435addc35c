"""The code's layout, one line per module: its path, its length and the first sentence of its
docstring (what a newcomer reads first). `make layout` prints it.

    python scripts/layout.py [tasks flows ...]
    python scripts/layout.py --check     # exit 1 naming each module over MAX_LINES (make lint)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["tasks", "flows", "scripts"]
# a module past this is a grab-bag: split it into rooms a newcomer can name from the listing
MAX_LINES = 500


def first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def modules(packages: list[str]) -> list[tuple[Path, int]]:
    """Every module of `packages` with its length in lines, in path order."""
    return [
        (path, len(path.read_text().splitlines()))
        for package in packages
        for path in sorted((ROOT / package).rglob("*.py"))
    ]


def too_long(packages: list[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}: {length} lines, over {MAX_LINES}: split it by concern"
        for path, length in modules(packages)
        if length > MAX_LINES
    ]


def layout(packages: list[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)!s:34s} {length:4d}  {first_sentence(path)}"
        for path, length in modules(packages)
    ]


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        problems = too_long(PACKAGES)
        print("\n".join(problems) or f"modules: none over {MAX_LINES} lines")
        sys.exit(1 if problems else 0)
    print("\n".join(layout(sys.argv[1:] or ["tasks", "flows"])))

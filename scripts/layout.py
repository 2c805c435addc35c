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


def too_long(packages: list[str]) -> list[str]:
    out = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            length = len(path.read_text().splitlines())
            if length > MAX_LINES:
                where = path.relative_to(ROOT)
                out.append(f"{where}: {length} lines, over {MAX_LINES}: split it by concern")
    return out


def layout(packages: list[str]) -> list[str]:
    lines = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            length = len(path.read_text().splitlines())
            lines.append(f"{name:34s} {length:4d}  {first_sentence(path)}")
    return lines


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        problems = too_long(PACKAGES)
        print("\n".join(problems) or f"modules: none over {MAX_LINES} lines")
        sys.exit(1 if problems else 0)
    print("\n".join(layout(sys.argv[1:] or ["tasks", "flows"])))

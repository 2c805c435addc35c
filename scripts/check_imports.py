"""The import structure's two rules, checked in `make lint`:

1. no import circles among ModelPress's modules, counting every import: at the top, inside a
   function (lazy) and under TYPE_CHECKING, since each is a dependency of the design whether or
   not it runs at import time;
2. no import from a lower layer to a higher one: tasks/ (plain functions) never imports flows/
   (Prefect orchestration), and neither imports scripts/ or tests/.

    python scripts/check_imports.py            # exit 1 and one line per problem

A module `a.b` imports `a.b.c` for `from a.b import c` when a.b.c is a module, else `a.b`
(the package's __init__).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tasks", "flows")
LAYERS = {"tasks": 0, "flows": 1, "scripts": 2, "tests": 2}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The ModelPress modules `path` imports (any place in it), with a line of each."""
    tree = ast.parse(path.read_text(), str(path))
    out: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]  # a name inside a module: the module
        if name:
            out.setdefault(name, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LAYERS:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in LAYERS:
                continue
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                add(target if target in known else node.module, node.lineno)
    return out


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems() -> list[str]:
    known = modules()
    graph = {name: imports_of(path, known) for name, path in known.items()}
    out = []
    for name, targets in sorted(graph.items()):
        targets.pop(name, None)
        layer = LAYERS[name.split(".")[0]]
        for target, line in sorted(targets.items()):
            if LAYERS[target.split(".")[0]] > layer:
                where = known[name].relative_to(ROOT)
                out.append(f"{where}:{line}: imports {target}, a higher layer")
    for component in cycles(graph):
        ties = [
            f"{a} -> {b} (line {graph[a][b]})"
            for a in component
            for b in component
            if b in graph[a]
        ]
        out.append(f"import circle of {len(component)} modules: " + "; ".join(ties))
    return out


def main() -> None:
    found = problems()
    for line in found:
        print(line)
    if found:
        sys.exit(1)
    print(f"imports: no circles, no upward imports ({len(modules())} modules)")


if __name__ == "__main__":
    main()

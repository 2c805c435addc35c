"""The code a result depends on: modules and every module of their own packages they import,
directly or through one another, found by reading the source (nothing is run).

A cache key that names only the module a step starts from misses a change one import away (a
technique's quantization helper, the statistics its fallback is chosen by). Imports under
`if TYPE_CHECKING:` are left out (they are never run); imports inside functions count.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import threading
from pathlib import Path

# ModelPress's own code; a plugin's package is followed too (the start module's top level)
FOLLOWED = ("tasks",)
# CPython 3.11's ast.parse is not safe in threads (two at once: "SystemError: AST constructor
# recursion depth mismatch"), and the nightly keys its variants from several build threads
_PARSING = threading.Lock()


def import_closure(*modules: str) -> tuple[str, ...]:
    """`modules` and every module of theirs (or of tasks/) they import, sorted."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += imports_of(module)
    return tuple(sorted(seen))


@functools.cache
def imports_of(module: str) -> tuple[str, ...]:
    """The modules `module` imports that belong to tasks/ or to its own top-level package."""
    path = source_file(module)
    if path is None:
        return ()
    followed = {*FOLLOWED, module.partition(".")[0]}
    with _PARSING:
        tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _run_time_nodes(tree):
        for target in _targets(node, package):
            if target.partition(".")[0] in followed and source_file(target) is not None:
                found.add(target)
    return tuple(sorted(found - {module}))


def source_file(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # `a.b.c` where a.b is a module, not a package
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _run_time_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement except those under `if TYPE_CHECKING:`."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        parts = package.split(".")
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        base = ".".join([*parts, base] if base else parts)
    # `from pkg import sub` imports the module pkg.sub where there is one, else names of pkg
    return [
        f"{base}.{alias.name}" if source_file(f"{base}.{alias.name}") else base
        for alias in node.names
    ]

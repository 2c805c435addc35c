"""The code a cache key follows: a module and what it imports of its own package, at any depth
and inside functions, but not what only a type checker reads."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.code_closure import import_closure, imports_of
from tasks.lineage import code_sha256


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "mp_closure_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "entry.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import helper\n"
        "if TYPE_CHECKING:\n"
        "    from mp_closure_pkg import typing_only\n"
        "def build():\n"
        "    from mp_closure_pkg.sub import deep  # lazy: still code the result depends on\n"
        "    return helper.VALUE + deep.VALUE\n"
    )
    (root / "helper.py").write_text("VALUE = 1\n")
    (root / "typing_only.py").write_text("class T: ...\n")
    (root / "sub").mkdir()
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "deep.py").write_text("import json\nfrom tasks import errors\nVALUE = 2\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield root
    sys.path.remove(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("mp_closure_pkg")]:
        del sys.modules[name]
    imports_of.cache_clear()


def test_the_closure_follows_relative_lazy_and_nested_imports(package: Path) -> None:
    closure = import_closure("mp_closure_pkg.entry")
    assert "mp_closure_pkg.helper" in closure  # `from . import helper`
    assert "mp_closure_pkg.sub.deep" in closure  # inside a function, one package down
    assert "tasks.errors" in closure  # ModelPress's own modules are followed from a plugin
    assert "mp_closure_pkg.typing_only" not in closure  # never run
    assert "json" not in closure  # the standard library and third parties are not


def test_a_change_one_import_away_changes_the_key(package: Path) -> None:
    before = code_sha256("mp_closure_pkg.entry")
    (package / "typing_only.py").write_text("class T:\n    x: int\n")
    imports_of.cache_clear()
    assert code_sha256("mp_closure_pkg.entry") == before
    (package / "sub" / "deep.py").write_text("from tasks import errors\nVALUE = 3\n")
    imports_of.cache_clear()
    assert code_sha256("mp_closure_pkg.entry") != before

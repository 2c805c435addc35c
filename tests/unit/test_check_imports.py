"""scripts/check_imports.py, `make lint`'s import rules: it finds a circle made only of lazy
imports, and this tree has none and no upward import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_script


def _checker() -> Any:
    return load_script("check_imports")


def test_a_circle_of_lazy_imports_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checker = _checker()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "flows").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("")
    (tmp_path / "flows" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "a.py").write_text("def f():\n    from tasks.b import g\n")
    (tmp_path / "tasks" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tasks import a\n"
    )
    (tmp_path / "tasks" / "c.py").write_text("def h():\n    import flows.x\n")
    (tmp_path / "flows" / "x.py").write_text("from tasks.c import h\n")
    monkeypatch.setattr(checker, "ROOT", tmp_path)  # type: ignore[attr-defined]
    found = checker.problems()  # type: ignore[attr-defined]
    assert "tasks/c.py:2: imports flows.x, a higher layer" in found, found
    circles = [line for line in found if line.startswith("import circle")]
    assert len(circles) == 2, found  # a <-> b, and c <-> flows.x
    assert any("tasks.a -> tasks.b (line 2)" in line for line in circles), circles


def test_this_tree_has_no_circle_and_no_upward_import() -> None:
    assert _checker().problems() == []  # type: ignore[attr-defined]

"""scripts/layout.py: `make layout` lists every module with what it is, and `make lint` refuses
a module over 500 lines (a grab-bag to split), which this tree has none of."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_script


def _layout() -> Any:
    return load_script("layout")


def test_a_module_over_the_limit_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _layout()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "small.py").write_text('"""Small. More."""\n' + "x = 1\n" * 10)
    (tmp_path / "tasks" / "grab_bag.py").write_text("x = 1\n" * 501)
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    assert layout.too_long(["tasks"]) == [
        "tasks/grab_bag.py: 501 lines, over 500: split it by concern"
    ]
    assert layout.layout(["tasks"])[1].split() == ["tasks/small.py", "11", "Small."]


def test_this_tree_has_no_module_over_the_limit() -> None:
    assert _layout().too_long(["tasks", "flows", "scripts"]) == []

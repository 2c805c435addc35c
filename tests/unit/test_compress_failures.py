"""A variant whose own model fails a check fails alone: the night goes on with the others."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tasks import compress
from tasks.errors import ModelError
from tasks.techniques import technique_named
from tasks.techniques.pruned import PrunedConfig
from tasks.variant import read_record


def test_a_model_error_inside_a_build_is_that_variant_failing(
    tiny_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def export_differs(*_: object) -> None:
        raise ModelError("export: ONNX output differs from torch by 5.37 (> 0.0107)")

    pruned = replace(technique_named("pruned"), build=export_differs)
    monkeypatch.setattr(compress, "technique_of", lambda cfg: pruned)
    record = compress.build_variant(
        "pruned_qat",
        PrunedConfig(technique="pruned", source="baseline"),
        0,
        tiny_workspace / "data",
        tiny_workspace / "models" / "baseline",
        tiny_workspace / "variants" / "baseline",
        tmp_path / "pruned_qat",
    )
    assert record.status == "failed"
    assert record.reason == "pruned_qat: export: ONNX output differs from torch by 5.37 (> 0.0107)"
    assert read_record(tmp_path / "pruned_qat") == record  # written, as any failure

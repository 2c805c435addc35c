"""fleet.yaml: parameters per entry, one-line errors for a bad file, the summary table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import ConfigError
from tasks.fleet import FleetResult, ModelOutcome, load_fleet, nightly_parameters, summary_markdown


def test_entry_becomes_nightly_parameters(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        "models:\n"
        "  - {name: a}\n"
        "  - {name: b, params: other/params.yaml, repo: /srv/repo, model_rev: v2,"
        " overrides: {train: {epochs: 1}}}\n"
    )
    cfg = load_fleet(tmp_path / "fleet.yaml")
    assert (cfg.concurrency, cfg.mode) == (2, "local")
    a = nightly_parameters(cfg.models[0], tmp_path / "fleet.yaml")
    assert a == {
        "params_file": str(tmp_path / "params.yaml"),
        "overrides": {"registry": {"model_name": "a"}},
    }
    b = nightly_parameters(cfg.models[1], tmp_path / "fleet.yaml")
    assert b["params_file"] == str(tmp_path / "other" / "params.yaml")
    assert b["overrides"] == {
        "train": {"epochs": 1},
        "registry": {"model_name": "b"},
        "fetch": {"repo": "/srv/repo", "model_rev": "v2"},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: []\n", "fleet.yaml: models: List should have at least 1 item"),
        ("models:\n  - {name: a, parms: x.yaml}\n", "fleet.yaml: models.0.parms: Extra inputs"),
        ("concurrency: 0\nmodels: [{name: a}]\n", "fleet.yaml: concurrency: Input should be"),
        ("models: [{name: a}, {name: a}]\n", "'a' appears twice"),
        ("models: [\n", "fleet.yaml: not valid YAML"),
    ],
)
def test_bad_fleet_file_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "fleet.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_fleet(tmp_path / "fleet.yaml")
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_fleet_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fleet file not found"):
        load_fleet(tmp_path / "nope.yaml")


def test_summary_has_a_row_per_model() -> None:
    result = FleetResult(
        [
            ModelOutcome("a", "published", "v3", "tflite_int8", "http://ui/runs/flow-run/1"),
            ModelOutcome("b", "failed", error="b.yaml: variants.x: unknown | technique"),
        ],
        12.0,
    )
    text = summary_markdown(result)
    assert text.startswith("**2 models, 1 failed**, 12 s")
    assert "| a | published | v3 | tflite_int8 | [run](http://ui/runs/flow-run/1) |" in text
    assert "| b | failed: b.yaml: variants.x: unknown / technique | - | - | - |" in text

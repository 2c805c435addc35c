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


def test_each_entrys_params_are_checked_before_any_nightly_starts(tmp_path: Path) -> None:
    """A bad entry failed inside its child run with a traceback, and the summary said "see the
    error line"; now it fails with its own line, found before anything starts, and the valid
    entries run."""
    from tasks.fleet import entry_errors, load_fleet
    from tests.helpers import write_params

    write_params(tmp_path)
    (tmp_path / "broken.yaml").write_text(
        "variants:\n  x:\n    technique: nope\n    source: baseline\n"
    )
    (tmp_path / "fleet.yaml").write_text(
        "models:\n"
        "  - {name: good, params: params.yaml}\n"
        "  - {name: missing, params: nowhere.yaml}\n"
        "  - {name: broken, params: broken.yaml}\n"
    )
    fleet = load_fleet(tmp_path / "fleet.yaml")
    errors = entry_errors(fleet, tmp_path / "fleet.yaml")
    assert set(errors) == {"missing", "broken"}
    assert (
        errors["missing"].startswith("models.1: ")
        and "nowhere.yaml: file not found" in errors["missing"]
    )
    assert "models.2: " in errors["broken"] and "nope" in errors["broken"]
    assert all("\n" not in line for line in errors.values())


@pytest.mark.parametrize(
    ("entry", "culprit"),
    [
        ("{name: ../evil, params: params.yaml}", "models.0.name"),
        ("{name: " + "x" * 300 + ", params: params.yaml}", "models.0.name"),
        ("{name: a, params: [a.yaml, b.yaml]}", "models.0.params"),
    ],
)
def test_an_entry_the_registry_or_a_loader_would_refuse_fails_the_file(
    tmp_path: Path, entry: str, culprit: str
) -> None:
    from tasks.errors import ConfigError
    from tasks.fleet import load_fleet

    (tmp_path / "fleet.yaml").write_text(f"models:\n  - {entry}\n")
    with pytest.raises(ConfigError, match=culprit):
        load_fleet(tmp_path / "fleet.yaml")

"""What the reviewer reads and what the form accepts: summary, change vs published, toggle labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.approval import approval_form, approver_name, identity, refusal, who_may_approve
from tasks.benchmark import BenchmarkRow
from tasks.registry import LocalRegistry, PublishEntry, RegistryError
from tasks.review import (
    GateVerdict,
    changes_vs_published,
    form_markdown,
    key_numbers,
    review_rows,
    summary_markdown,
    toggle_title,
)
from tests.unit.test_registry import make_entry

RUNNERS = ("cloud-cpu", "edge-cpu")


def _metrics(name: str, accuracy: float, size: int) -> dict:
    return {
        "status": "ok",
        "accuracy": accuracy,
        "accuracy_drop": round(100 * (0.95 - accuracy), 4),
        "agreement": 0.99,
        "size_bytes": size,
        "size_ratio": 1.0,
    }


def _bench(name: str, p50: float) -> list[BenchmarkRow]:
    return [
        BenchmarkRow(variant=name, runner=r, status="ok", p50_ms=p50 * (k + 1))
        for k, r in enumerate(RUNNERS)
    ]


@pytest.fixture
def run() -> tuple[dict, list[BenchmarkRow], dict[str, GateVerdict]]:
    metrics = {
        "baseline": _metrics("baseline", 0.95, 40_960),
        "pruned": _metrics("pruned", 0.94, 20_480),
        "tflite_int8": _metrics("tflite_int8", 0.90, 10_240),
    }
    bench = _bench("baseline", 0.5) + _bench("pruned", 0.25) + _bench("tflite_int8", 0.4)
    verdicts = {
        "baseline": GateVerdict(True, "", 0.0),
        "pruned": GateVerdict(True, "", 2.345),
        "tflite_int8": GateVerdict(False, "drop_upper <= max_accuracy_drop (observed 7.1)", 7.1),
    }
    return metrics, bench, verdicts


def test_summary_counts_each_variant_once_not_once_per_runner(run: tuple) -> None:
    metrics, bench, verdicts = run
    rows = review_rows(metrics, bench, verdicts)
    assert len(rows) == 6  # the table stays per variant and runner

    summary = summary_markdown("m", {}, rows, [])

    assert "**Passed every gate** (2): baseline, pruned" in summary
    assert "**Rejected** (1)" in summary
    assert summary.count("- **tflite_int8**:") == 1


def test_the_drop_upper_bound_is_in_the_table_and_each_toggle_label(run: tuple) -> None:
    metrics, bench, verdicts = run
    rows = review_rows(metrics, bench, verdicts)
    assert {r["drop_upper_pts"] for r in rows if r["variant"] == "pruned"} == {"+2.35"}

    title = toggle_title(
        "pruned", key_numbers("pruned", metrics["pruned"], verdicts["pruned"], bench)
    )

    assert title == (
        "Publish pruned: acc 0.9400, drop +1.00 pts (upper +2.35), 20 KiB, p50 0.500 ms on edge-cpu"
    )
    baseline = key_numbers("baseline", metrics["baseline"], verdicts["baseline"], bench)
    assert "fp32 reference as ONNX" in toggle_title("baseline", baseline)


def test_form_text_is_narrow_and_says_why_baseline_is_offered_and_who_may_approve(
    run: tuple,
) -> None:
    metrics, bench, verdicts = run
    numbers = {n: key_numbers(n, metrics[n], verdicts[n], bench) for n in ("baseline", "pruned")}

    text = form_markdown("m", numbers, ["tflite_int8"], [], who_may_approve([]))

    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and max(len(line) for line in table) <= 60
    assert "fp32 reference model itself, re-published as a deployable ONNX" in text
    assert "anyone who can reach this Prefect UI" in text and "not checked" in text
    assert "Rejected by the gates, not offered: tflite_int8" in text
    assert "`review.approvers`" in who_may_approve(["alice", "bob"])


def test_change_vs_published_compares_each_variant_with_its_own_last_version(
    run: tuple, tmp_path: Path
) -> None:
    metrics, bench, _ = run
    registry = LocalRegistry(tmp_path / "registry")
    old_pruned = _entry(tmp_path / "1", "pruned", accuracy=0.93, size=30_720, p50=0.5)
    registry.publish("m", "1", {"pruned": old_pruned}, {})
    registry.publish("m", "2", {"baseline": _entry(tmp_path / "2", "baseline", 0.95, 40_960)}, {})

    published = registry.last_published("m", list(metrics))
    changes = changes_vs_published(metrics, published, bench)

    assert {name: entry["version"] for name, entry in published.items()} == {
        "pruned": "1",
        "baseline": "2",
    }
    pruned = next(line for line in changes if line.startswith("- pruned"))
    assert "vs version `1`" in pruned and "accuracy +1.00 pts" in pruned
    assert "size -10.0 KiB" in pruned
    assert "p50 on edge-cpu 0.500 → 0.500 ms (+0%)" in pruned
    assert "p50 on cloud-cpu 0.500 → 0.250 ms (-50%)" in pruned
    assert "- tflite_int8: never published before" in changes


def test_decisions_are_kept_create_only_beside_the_versions(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    registry.publish("m", "1", {"pruned": make_entry(tmp_path, "pruned", b"x")}, {})
    run_id = "0b5c9d5e-4f7e-4a53-9d62-6a1d2f3f9e10"

    first = registry.record_decision("m", run_id, {"outcome": "refused", "reviewer": "mallory"})
    second = registry.record_decision("m", run_id, {"outcome": "approved", "reviewer": "alice"})

    assert first != second and Path(first).parent.name == "decisions"
    decisions = registry.list_decisions("m")
    assert [(d["outcome"], d["reviewer"]) for d in decisions] == [
        ("refused", "mallory"),
        ("approved", "alice"),
    ]
    assert registry.list_versions("m") == ["1"]
    report = registry.verify()
    assert report.ok and report.problems == []  # decisions/ is not an unpublished version
    with pytest.raises(RegistryError, match="reserved"):
        registry.publish(
            "m", "decisions", {"pruned": make_entry(tmp_path / "d", "pruned", b"x")}, {}
        )


def test_the_form_names_no_approver_and_the_flow_refuses_blank_or_unlisted_ones() -> None:
    from prefect.utilities.schema_tools import validate

    schema = approval_form(["pruned"], "text", {"pruned": "Publish pruned: acc 0.94"})
    schema_json = schema.model_json_schema()
    assert schema_json["properties"]["approve_pruned"]["title"] == "Publish pruned: acc 0.94"
    # the reviewer may be left blank in the form: behind the stack the guard fills in the login
    validate({"reviewer": ""}, schema_json, raise_on_error=True)
    assert schema.model_validate({"approve_pruned": True}).reviewer == ""

    for blank in ("", "   ", "\t\u00a0"):
        assert "blank" in (refusal(blank, ["alice"]) or "")
    assert refusal("mallory", []) is None
    why = refusal("mallory", ["alice", "bob"]) or ""
    assert "'mallory' is not on review.approvers" in why and "alice" not in why
    assert refusal(" ALICE ", ["alice", "bob"]) is None
    assert approver_name(" ALICE ", ["alice", "bob"]) == "alice"
    assert "alice" not in who_may_approve(["alice", "bob"])
    assert identity([], behind_auth=False) == (
        "typed name, not checked (review.approvers is empty), "
        "on a Prefect server without authentication"
    )
    assert identity(["alice"], behind_auth=True) == (
        "typed name, checked against review.approvers, behind a shared HTTP basic auth "
        "credential (no review guard: not proof of who typed it)"
    )
    assert identity(["alice"], behind_auth=True, attested=True) == (
        "authenticated login (checked by the stack's Caddy, attested by its review guard), "
        "checked against review.approvers"
    )


def _entry(root: Path, name: str, accuracy: float, size: int, p50: float = 0.0) -> PublishEntry:
    entry = make_entry(root, name, name.encode())
    benchmarks = [
        {"runner": r, "status": "ok", "p50_ms": p50} for r in RUNNERS if p50
    ]  # an old publish measured on both runners
    return PublishEntry(
        directory=entry.directory,
        format=entry.format,
        input=entry.input,
        metrics={"accuracy": accuracy, "size_bytes": size, "benchmarks": benchmarks},
        gates=entry.gates,
        approval=entry.approval,
    )


def test_cli_lists_who_decided_what_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main as cli_main

    registry = LocalRegistry(tmp_path / "registry")
    registry.record_decision(
        "m",
        "run-1",
        {
            "outcome": "nothing-approved",
            "approved": [],
            "not_approved": ["tflite_int8"],
            "reviewer": "bob",
            "identity": "typed name checked against review.approvers",
            "comment": "int8 is slower than fp32",
            "flow_run_url": "http://127.0.0.1:4200/runs/flow-run/run-1",
        },
    )

    cli_main(["registry", "decisions", "m", "--uri", str(tmp_path / "registry")])

    out = capsys.readouterr().out
    assert "nothing-approved  approved: none  not approved: tflite_int8  by bob" in out
    assert "comment: int8 is slower than fp32" in out and "runs/flow-run/run-1" in out


def test_labels_cover_no_other_label_or_marker_and_sit_right_of_their_own() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.review import _label_points

    fig, ax = plt.subplots(dpi=100)
    points = {"tflite_int8": (0.014, 95.3), "onnx_int8": (0.0142, 95.2), "pruned": (0.07, 56.0)}
    areas = {"tflite_int8": 400.0, "onnx_int8": 100.0, "pruned": 100.0}
    ax.scatter(*zip(*points.values(), strict=True))
    _label_points(ax, points, areas)
    offsets = {a.get_text(): a.xyann for a in ax.texts}
    # right of its own marker's edge (radius sqrt(area)/2 points, then 4 points)
    assert offsets["tflite_int8"] == pytest.approx((400**0.5 / 2 + 4, 0.0))
    assert offsets["pruned"] == pytest.approx((100**0.5 / 2 + 4, 0.0))  # nothing near: in place
    # onnx_int8's place would be on tflite_int8's marker: a line lower at least, clear of it
    assert offsets["onnx_int8"][0] == pytest.approx(100**0.5 / 2 + 4)
    assert offsets["onnx_int8"][1] <= -9
    fig.canvas.draw()
    from matplotlib.text import Text

    # the text's own box (an Annotation's extent would include its leader line)
    boxes = {t.get_text(): Text.get_window_extent(t) for t in ax.texts}
    assert not boxes["tflite_int8"].overlaps(boxes["onnx_int8"])
    cx, cy = ax.transData.transform(points["tflite_int8"])
    r = 400**0.5 / 2 * 100 / 72  # the marker's radius in pixels
    label = boxes["onnx_int8"]
    assert label.y1 <= cy - r or label.x0 >= cx + r  # below or right of tflite_int8's marker
    plt.close(fig)

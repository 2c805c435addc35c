"""The review's decision records: what the registry keeps, and the artifact that shows it."""

from __future__ import annotations

from tasks.decision import (
    ApprovalDecision,
    RunLink,
    approval_record,
    auto_decision,
    decision_markdown,
    decision_record,
    registry_reference,
)

RUN = RunLink(flow_run_id="0f3c", flow_run_url="http://ui/runs/flow-run/0f3c")
FORM = ApprovalDecision(
    approved=("pruned",),
    not_approved=("tflite_int8",),
    approved_by="mallory",
    approved_at="2026-11-25T02:00:00+00:00",
    comment="ship it",
    identity="typed name checked against review.approvers",
)
OFFERED = ["tflite_int8", "pruned"]
REJECTED = {"distilled": "accuracy drop 3.1 > 1.0"}


def test_a_refusal_records_what_was_requested_and_approves_nothing() -> None:
    why = "'mallory' is not on review.approvers"
    record = decision_record("m", "refused", FORM.because(why), OFFERED, REJECTED, RUN).as_json()
    assert record["approved"] == [] and record["not_approved"] == OFFERED
    assert record["requested"] == ["pruned"] and record["reason"] == why
    assert record["reviewer"] == "mallory" and record["decided_at"] == FORM.approved_at
    assert record["rejected_by_gates"] == REJECTED and record["schema"] == 1
    assert (record["flow_run_id"], record["flow_run_url"]) == (RUN.flow_run_id, RUN.flow_run_url)


def test_an_unchanged_run_records_the_approval_and_why_nothing_was_published() -> None:
    reason = "the approved files and inputs equal version 3's"
    record = decision_record("m", "unchanged", FORM.because(reason), OFFERED, {}, RUN).as_json()
    assert record["approved"] == ["pruned"] and record["not_approved"] == ["tflite_int8"]
    assert record["requested"] is None and record["reason"] == reason


def test_a_timed_out_review_has_no_reviewer_but_a_time() -> None:
    record = decision_record("m", "timed-out", None, OFFERED, {}, RUN).as_json()
    assert record["reviewer"] is None and record["identity"] is None and record["comment"] == ""
    assert record["approved"] == [] and record["not_approved"] == OFFERED
    assert record["decided_at"].startswith("20") and len(record["decided_at"]) == 25


def test_the_markdown_shows_the_reason_second_and_escapes_pipes() -> None:
    record = decision_record("m", "refused", FORM.because("a | b"), OFFERED, REJECTED, RUN)
    lines = decision_markdown(record, "s3://r/m/decisions/1.json").splitlines()
    assert lines[0] == "### Review decision: refused"
    assert lines[4:7] == [
        "| outcome | **refused** |",
        "| reason | a / b |",
        "| requested | pruned |",  # what the refused reviewer asked to publish
    ]
    assert "| rejected by the gates | distilled |" in lines
    assert "| by | mallory (typed name checked against review.approvers) |" in lines


def test_the_manifest_approval_names_the_review_run_and_its_record() -> None:
    auto = auto_decision(OFFERED)
    assert auto.approved == tuple(OFFERED) and auto.approved_by == "auto-approved by policy"
    approval = approval_record(auto, RUN, "s3://r/m/decisions/1.json").as_json()
    assert list(approval) == [
        "approved_by",
        "approved_at",
        "comment",
        "identity",
        "flow_run_id",
        "flow_run_url",
        "decision",
    ]
    assert approval["identity"] == "auto-approval policy"
    assert approval["decision"] == "s3://r/m/decisions/1.json"


def test_a_comment_is_shown_as_text_never_as_html_or_markdown() -> None:
    beacon = FORM.__class__(
        **{**FORM.__dict__, "comment": "<img src=x> ![t](http://evil.example/p.png) *ok*"}
    )
    record = decision_record("m", "approved", beacon, OFFERED, REJECTED, RUN)
    [comment] = [line for line in decision_markdown(record, "u").splitlines() if "comment" in line]
    assert "<img" not in comment and "&lt;img src=x&gt;" in comment
    assert "![" not in comment and "](" not in comment  # no image, no link: escaped
    assert r"\!\[t\]\(http://evil.example/p.png\) \*ok\*" in comment


def test_the_manifest_points_at_its_decision_relative_to_the_registry() -> None:
    assert (
        registry_reference("s3://b/reg/m/decisions/2026-x-1.json", "m")
        == "m/decisions/2026-x-1.json"
    )
    assert registry_reference("/srv/reg/m/decisions/a.json", "m") == "m/decisions/a.json"

"""The review's decision, typed: what the reviewer (or the auto policy) chose, the record the
registry keeps of it (`decisions/`), the artifact that shows it, and the run's outcome."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

Outcome = Literal["approved", "unchanged", "nothing-approved", "refused", "timed-out"]
Status = Literal[
    "published",
    "unchanged",
    "nothing-approved",
    "nothing-passed",
    "review-timed-out",
    "not-better-than-published",  # a search pick no better than the published incumbent
]
AUTO_REVIEWER = "auto-approved by policy"
AUTO_IDENTITY = "auto-approval policy"


@dataclass(frozen=True)
class RunLink:
    """This flow run's id and its page in the Prefect UI."""

    flow_run_id: str
    flow_run_url: str


@dataclass(frozen=True)
class ApprovalDecision:
    """What was approved, by whom (and how that identity was established), when and why."""

    approved: tuple[str, ...]
    not_approved: tuple[str, ...]
    approved_by: str
    approved_at: str
    comment: str
    identity: str = ""
    reason: str | None = None  # a refusal's, or why an approved run published nothing

    def because(self, reason: str) -> ApprovalDecision:
        return replace(self, reason=reason)

    def renamed(self, approved_by: str) -> ApprovalDecision:
        return replace(self, approved_by=approved_by)


@dataclass(frozen=True)
class ApprovalRecord:
    """The manifest's `approval` of each published variant: the decision and the review run."""

    approved_by: str
    approved_at: str
    comment: str
    identity: str
    flow_run_id: str
    flow_run_url: str
    decision: str  # the decision record's address in the registry

    def as_json(self) -> dict[str, Any]:
        return {
            "approved_by": self.approved_by,
            "approved_at": self.approved_at,
            "comment": self.comment,
            "identity": self.identity,
            "flow_run_id": self.flow_run_id,
            "flow_run_url": self.flow_run_url,
            "decision": self.decision,
        }


@dataclass(frozen=True)
class DecisionRecord:
    """What the registry keeps of a review decision (schema 1)."""

    model: str
    outcome: Outcome
    offered: tuple[str, ...]
    approved: tuple[str, ...]
    not_approved: tuple[str, ...]
    requested: tuple[str, ...] | None  # what a refused reviewer asked for
    rejected_by_gates: dict[str, str]
    reviewer: str | None
    identity: str | None
    comment: str
    reason: str | None
    decided_at: str
    run: RunLink

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "model": self.model,
            "outcome": self.outcome,
            "offered": list(self.offered),
            "approved": list(self.approved),
            "not_approved": list(self.not_approved),
            "requested": None if self.requested is None else list(self.requested),
            "rejected_by_gates": dict(self.rejected_by_gates),
            "reviewer": self.reviewer,
            "identity": self.identity,
            "comment": self.comment,
            "reason": self.reason,
            "decided_at": self.decided_at,
            "flow_run_id": self.run.flow_run_id,
            "flow_run_url": self.run.flow_run_url,
        }


@dataclass(frozen=True)
class RunOutcome:
    """How a nightly run ended, past the gates: the part of its result the review decides."""

    status: Status
    version: str | None = None
    published: tuple[str, ...] = ()
    approval: ApprovalDecision | None = None
    manifest_uri: str | None = None
    decision_uri: str | None = None
    unchanged_since: str | None = None  # status unchanged: the version that holds these files


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def auto_decision(passing: list[str]) -> ApprovalDecision:
    """The explicit auto-approve policy: every variant that passed the gates."""
    return ApprovalDecision(
        approved=tuple(passing),
        not_approved=(),
        approved_by=AUTO_REVIEWER,
        approved_at=now(),
        comment="",
        identity=AUTO_IDENTITY,
    )


def decision_record(
    model: str,
    outcome: Outcome,
    decision: ApprovalDecision | None,
    offered: list[str],
    rejected: dict[str, str],
    run: RunLink,
) -> DecisionRecord:
    """approved | unchanged (approved, but equal to the last version: nothing published) |
    nothing-approved | refused | timed-out, what was offered, who decided (and how we know),
    when and why."""
    chosen = decision.approved if decision else ()
    approved = chosen if outcome in ("approved", "unchanged") else ()
    return DecisionRecord(
        model=model,
        outcome=outcome,
        offered=tuple(offered),
        approved=approved,
        not_approved=tuple(name for name in offered if name not in approved),
        requested=chosen if outcome == "refused" else None,
        rejected_by_gates=rejected,
        reviewer=decision.approved_by if decision else None,
        identity=decision.identity if decision else None,
        comment=decision.comment if decision else "",
        reason=decision.reason if decision else None,
        decided_at=(decision.approved_at if decision else "") or now(),
        run=run,
    )


def registry_reference(decision_uri: str, model: str) -> str:
    """The decision record's key relative to the registry's root (`<model>/decisions/<name>`):
    a consumer follows it from wherever it reads the registry, not the publisher's path."""
    marker = f"{model}/decisions/"
    at = decision_uri.rfind(marker)
    return decision_uri[at:] if at >= 0 else decision_uri


def as_text(value: str) -> str:
    """A reviewer's words shown as words in a markdown artifact: no HTML and no markdown
    (an `<img>` or `![](url)` in a comment would make every viewer's browser fetch a URL)."""
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for special in "\\`*_[]()!#~":
        escaped = escaped.replace(special, "\\" + special)
    return " ".join(escaped.split())  # one table cell: no line breaks


def approval_record(decision: ApprovalDecision, run: RunLink, decision_uri: str) -> ApprovalRecord:
    """Who approved, how that identity was established, and the review it came from."""
    return ApprovalRecord(
        approved_by=decision.approved_by,
        approved_at=decision.approved_at,
        comment=decision.comment,
        identity=decision.identity,
        flow_run_id=run.flow_run_id,
        flow_run_url=run.flow_run_url,
        decision=decision_uri,
    )


def decision_markdown(record: DecisionRecord, uri: str) -> str:
    """The decision artifact: one small table a reviewer reads at a glance."""
    rows = [
        ("outcome", f"**{record.outcome}**"),
        ("approved", ", ".join(record.approved) or "none"),
        ("not approved", ", ".join(record.not_approved) or "none"),
        ("rejected by the gates", ", ".join(record.rejected_by_gates) or "none"),
        ("by", f"{as_text(record.reviewer or '-')} ({record.identity or 'no reviewer'})"),
        ("when", record.decided_at),
        ("comment", as_text(record.comment) or "-"),
        ("record", f"`{uri}`"),
    ]
    if record.reason:
        rows.insert(1, ("reason", as_text(record.reason)))
    if record.requested:
        rows.insert(2, ("requested", ", ".join(record.requested)))
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows]
    return f"### Review decision: {record.outcome}\n\n" + "\n".join(lines)

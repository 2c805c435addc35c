"""The reviewer's form: one toggle per variant that passed every gate, their name and a comment.

Built at run time with pydantic.create_model so the Prefect UI renders a toggle per variant
(a reviewer picks, never types variant names). The server checks a submission against the form's
JSON schema before it resumes the run (Prefect 3.8's resume endpoint rejects input that does not
validate), so what the schema says is refused in the dialog itself; who may approve is checked by
the flow after the resume, so that a refusal can be recorded (see `refusal`).
"""

from __future__ import annotations

from typing import Any

import pydantic
from prefect.input import RunInput

from tasks.decision import ApprovalDecision, now

APPROVE_PREFIX = "approve_"
# at least one character that is not whitespace: the registry needs a name (approved_by), and a
# name of spaces would be stripped to nothing after the reviewer pressed Resume
REVIEWER_PATTERN = r"\S"
REVIEWER_MAX_LENGTH = 128


def approval_form(
    passing: list[str], description: str, titles: dict[str, str] | None = None
) -> type[RunInput]:
    """A RunInput model with `approve_<variant>: bool` per passing variant, `reviewer`, `comment`.

    `titles` label each toggle (key numbers beside it); the default is "Publish <variant>".
    """
    titles = titles or {}
    fields: dict[str, Any] = {
        f"{APPROVE_PREFIX}{name}": (
            bool,
            pydantic.Field(default=False, title=titles.get(name, f"Publish {name}")),
        )
        for name in passing
    }
    fields["reviewer"] = (
        str,
        pydantic.Field(
            pattern=REVIEWER_PATTERN,
            max_length=REVIEWER_MAX_LENGTH,
            title="Reviewer (your name, recorded in the manifest; not blank)",
        ),
    )
    fields["comment"] = (str, pydantic.Field(default="", title="Comment"))
    model = pydantic.create_model("ModelPressApproval", __base__=RunInput, **fields)
    return model.with_initial_data(description=description)


def decision_from_form(answer: Any, passing: list[str], how: str) -> ApprovalDecision:
    """The reviewer's decision: approved and not-approved variants, who, when, why, and `how`
    the reviewer's identity was established."""
    values = answer.model_dump() if hasattr(answer, "model_dump") else dict(answer)
    approved = tuple(name for name in passing if values.get(f"{APPROVE_PREFIX}{name}"))
    return ApprovalDecision(
        approved=approved,
        not_approved=tuple(name for name in passing if name not in approved),
        approved_by=values["reviewer"].strip(),
        approved_at=now(),
        comment=values.get("comment", "").strip(),
        identity=how,
    )


def refusal(reviewer: str, approvers: list[str]) -> str | None:
    """Why `reviewer` may not decide (blank, or not on review.approvers); None when they may."""
    if not reviewer.strip():
        return "the reviewer's name is blank; type your name"
    if approvers and _canonical(reviewer, approvers) is None:
        return (
            f"{reviewer.strip()!r} is not on review.approvers ({', '.join(approvers)}); "
            f"nothing was published: an approver must submit the form"
        )
    return None


def approver_name(reviewer: str, approvers: list[str]) -> str:
    """The name as review.approvers spells it (names match without regard to case)."""
    return _canonical(reviewer, approvers) or reviewer.strip()


def identity(approvers: list[str], behind_auth: bool) -> str:
    """How the approver's identity was established, for the manifest and the decision record."""
    how = (
        "typed name checked against review.approvers"
        if approvers
        else "typed name, not checked (review.approvers is empty)"
    )
    return how + (
        ", behind the stack's HTTP basic auth"
        if behind_auth
        else ", on a Prefect server without authentication"
    )


def who_may_approve(approvers: list[str]) -> str:
    """The form's plain statement of who may approve."""
    if approvers:
        return (
            f"**Who may approve:** {', '.join(approvers)} (`review.approvers`). Any other name "
            f"is refused and recorded, and the run asks again."
        )
    return (
        "**Who may approve:** anyone who can reach this Prefect UI: `review.approvers` is empty, "
        "so the name you type is recorded as given, not checked."
    )


def _canonical(reviewer: str, approvers: list[str]) -> str | None:
    wanted = reviewer.strip().casefold()
    return next((name for name in approvers if name.strip().casefold() == wanted), None)

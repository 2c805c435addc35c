"""The reviewer's form: one toggle per variant that passed every gate, their name and a comment.

Built at run time with pydantic.create_model so the Prefect UI renders a toggle per variant
(a reviewer picks, never types variant names). Who approved is established after the resume:
behind the stack (`infra/stack.sh`), the review guard fills `reviewer` with the login Caddy
checked and attests it on the run (`tasks/stack_guard.py`), and the flow records that login;
on a Prefect server without the guard the typed name is recorded, and says it was typed. Who may
approve is checked by the flow, so that a refusal can be recorded (see `refusal`).
"""

from __future__ import annotations

from typing import Any

import pydantic
from prefect.input import RunInput

from tasks.decision import ApprovalDecision, now
from tasks.stack_users import ATTESTATION_PREFIX

APPROVE_PREFIX = "approve_"
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
    # optional: behind the stack the guard fills it with the reviewer's login; a blank name
    # elsewhere is refused by the flow, in words, and the run asks again
    fields["reviewer"] = (
        str,
        pydantic.Field(
            default="",
            max_length=REVIEWER_MAX_LENGTH,
            title="Reviewer (behind the stack: your login, filled in for you; elsewhere your name)",
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
            f"{reviewer.strip()!r} is not on review.approvers; nothing was published: an "
            f"approver must submit the form"
        )
    return None


def approver_name(reviewer: str, approvers: list[str]) -> str:
    """The name as review.approvers spells it (names match without regard to case)."""
    return _canonical(reviewer, approvers) or reviewer.strip()


AUTHENTICATED = "authenticated login (checked by the stack's Caddy, attested by its review guard)"


def identity(approvers: list[str], behind_auth: bool, attested: bool = False) -> str:
    """How the approver's identity was established, for the manifest and the decision record."""
    checked = (
        ", checked against review.approvers"
        if approvers
        else ", not checked (review.approvers is empty)"
    )
    if attested:
        return AUTHENTICATED + checked
    return (
        "typed name"
        + checked
        + (
            ", behind a shared HTTP basic auth credential (no review guard: not proof of who typed it)"
            if behind_auth
            else ", on a Prefect server without authentication"
        )
    )


def who_may_approve(approvers: list[str]) -> str:
    """The form's plain statement of who may approve: never the names themselves (an impostor
    would be told what to type)."""
    if approvers:
        return (
            "**Who may approve:** the people named in `review.approvers` (params.yaml). Behind "
            "the stack you approve as your login; anyone else is refused and recorded, and the "
            "run asks again."
        )
    return (
        "**Who may approve:** anyone who can reach this Prefect UI: `review.approvers` is empty, "
        "so the approver is recorded (behind the stack, their login) but not checked."
    )


def review_guard() -> bool:
    """Whether this run's Prefect API is the stack's front door with its review guard."""
    import httpx
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            answer = client._client.get("/modelpress/guard")
        except httpx.HTTPStatusError:  # a Prefect server of its own: 404
            return False
    return answer.status_code == 200 and answer.json().get("guard") == "modelpress-review-guard"


def attested_approver(pause_key: str) -> str | None:
    """The login the review guard attested for this run's pause `pause_key`, or None."""
    import json
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        try:
            value = client.read_flow_run_input(
                UUID(flow_run.get_id()), ATTESTATION_PREFIX + pause_key
            )
        except ObjectNotFound:
            return None
    principal = json.loads(value).get("principal")
    return str(principal) if principal else None


def _canonical(reviewer: str, approvers: list[str]) -> str | None:
    wanted = reviewer.strip().casefold()
    return next((name for name in approvers if name.strip().casefold() == wanted), None)

"""The reviewer's form: one toggle per variant that passed every gate, their name and a comment.

Built at run time with pydantic.create_model so the Prefect UI renders a toggle per variant
(a reviewer picks, never types variant names).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pydantic
from prefect.input import RunInput

APPROVE_PREFIX = "approve_"


def approval_form(passing: list[str], description: str) -> type[RunInput]:
    """A RunInput model with `approve_<variant>: bool` per passing variant, `reviewer`, `comment`."""
    fields: dict[str, Any] = {
        f"{APPROVE_PREFIX}{name}": (bool, pydantic.Field(default=False, title=f"Publish {name}"))
        for name in passing
    }
    fields["reviewer"] = (
        str,
        pydantic.Field(min_length=1, title="Reviewer (your name, recorded in the manifest)"),
    )
    fields["comment"] = (str, pydantic.Field(default="", title="Comment"))
    model = pydantic.create_model("ModelPressApproval", __base__=RunInput, **fields)
    return model.with_initial_data(description=description)


def decision_from_form(answer: Any, passing: list[str]) -> dict[str, Any]:
    """The approval record: which variants, who, when, and why."""
    values = answer.model_dump() if hasattr(answer, "model_dump") else dict(answer)
    approved = [name for name in passing if values.get(f"{APPROVE_PREFIX}{name}")]
    return {
        "approved": approved,
        "approved_by": values["reviewer"].strip(),
        "approved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "comment": values.get("comment", ""),
    }

"""The nightly run's review: Prefect artifacts for the reviewer, the pause for the approval form
(or the explicit auto policy), and the decision records kept in the registry."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks.benchmark import BenchmarkRow
from tasks.config import RegistryConfig, ReviewConfig
from tasks.decision import (
    ApprovalDecision,
    DecisionRecord,
    RunLink,
    auto_decision,
    decision_markdown,
)
from tasks.evaluate import VariantMetrics
from tasks.io import write_json
from tasks.results import metrics_json
from tasks.review import (
    GateVerdict,
    changes_vs_published,
    form_markdown,
    key_numbers,
    pareto_plot,
    review_rows,
    study_markdown,
    summary_markdown,
    toggle_title,
)


@task(name="review")
def review_task(
    model: str,
    inputs: dict[str, Any],
    table: dict[str, VariantMetrics],
    bench: list[BenchmarkRow],
    verdicts: dict[str, GateVerdict],
    published: dict[str, dict[str, Any]],
    who: str,
    run_dir: str,
    dirs: dict[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """Prefect artifacts for the reviewer: table, summary markdown, Pareto plot, and each
    variant's sensitivity ranking and calibration study where they were run.

    Returns the approval form's text (narrow: it renders in a small scroll box) and each
    passing variant's toggle label with its key numbers.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    metrics = metrics_json(table)
    rows = review_rows(metrics, bench, verdicts)
    write_json(Path(run_dir) / "review.json", rows)
    changes = changes_vs_published(metrics, published, bench)
    link = run_link().flow_run_url
    summary = f"**This run:** [{link}]({link}): a review's Resume is in its ⋮ menu.\n\n" + (
        summary_markdown(model, inputs, rows, changes)
    )
    plot = pareto_plot(metrics, bench, verdicts, Path(run_dir) / "pareto.png")
    key = artifact_key(model)
    create_table_artifact(
        table=rows, key=f"{key}-variants", description="Variants: metrics, latency, gates"
    )
    create_markdown_artifact(markdown=summary, key=f"{key}-summary", description="Run summary")
    encoded = base64.b64encode(plot.read_bytes()).decode()
    create_markdown_artifact(
        # the picture alone: the server's file path means nothing to a reviewer in a browser
        markdown=f"![Pareto plot: accuracy against latency](data:image/png;base64,{encoded})",
        key=f"{key}-pareto",
        description="Accuracy vs latency (marker area ∝ size)",
    )
    for name, directory in (dirs or {}).items():
        study = study_markdown(Path(directory))
        if study is not None:
            create_markdown_artifact(
                markdown=study,
                key=f"{key}-{artifact_key(name)}-int8-study",
                description=f"{name}: layer sensitivity and calibration study",
            )
    passing = [name for name in metrics if verdicts.get(name, GateVerdict(False, "")).passed]
    numbers = {name: key_numbers(name, metrics[name], verdicts[name], bench) for name in passing}
    rejected = [name for name in metrics if name not in numbers]
    form = form_markdown(model, numbers, rejected, changes, who)
    return form, {name: toggle_title(name, n) for name, n in numbers.items()}


@task(name="record-decision", retries=3, retry_delay_seconds=[2, 5, 15])
def record_decision_task(cfg: RegistryConfig, record: DecisionRecord) -> str:
    """Keep the review's decision with the model (registry `decisions/`); shown on the run too."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.registry import open_registry

    uri = open_registry(cfg).record_decision(record.model, record.run.flow_run_id, record.as_json())
    create_markdown_artifact(
        markdown=decision_markdown(record, uri),
        key=f"{artifact_key(record.model)}-decision",
        description=f"Review decision: {record.outcome}",
    )
    return uri


def ask_for_approval(
    passing: list[str],
    form_text: str,
    titles: dict[str, str],
    approval: str,
    review: ReviewConfig,
    poll_s: int,
    record_refusal: Callable[[ApprovalDecision], str],
    link: str,
) -> ApprovalDecision | None:
    """Auto policy, or pause for the reviewer's form; None when the review timed out.

    Behind the stack's review guard the approver is the login it attested on the run (a resume
    without its attestation is refused); elsewhere the typed name, recorded as typed. A blank
    name, or an approver not on review.approvers, is refused here (so that the refusal can be
    recorded): the run pauses again with the reason above the form, within the same overall
    timeout. `link` is the run's page, sent to the reviewers when the review starts waiting.
    """
    if approval == "auto":
        return auto_decision(passing)
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    from flows.approval import (
        approval_form,
        approver_name,
        attested_approver,
        decision_from_form,
        identity,
        refusal,
        review_guard,
    )

    guarded = review_guard()
    how = identity(review.approvers, _behind_auth(), attested=guarded)
    announce_review(review.notify, passing, link)
    deadline = time.monotonic() + review.timeout_s
    notice, attempt = "", 1
    while (remaining := round(deadline - time.monotonic())) > 0:
        form = approval_form(passing, notice + form_text, titles)
        key = "review" if attempt == 1 else f"review-{attempt}"
        try:
            answer = pause_flow_run(
                wait_for_input=form, timeout=remaining, poll_interval=poll_s, key=key
            )
        except FlowPauseTimeout:
            return None
        decision = decision_from_form(answer, passing, how)
        why = None
        if guarded:
            login = attested_approver(key)
            if login is None:
                why = (
                    "the run was resumed without the review guard's attestation (not through the "
                    "stack's login); nothing was published"
                )
            decision = decision.renamed(login or decision.approved_by)
        why = why or refusal(decision.approved_by, review.approvers)
        if why is None:
            return decision.renamed(approver_name(decision.approved_by, review.approvers))
        uri = record_refusal(decision.because(why))
        get_run_logger().warning(
            "review refused: %s (recorded: %s); the run waits for an approver", why, uri
        )
        notice, attempt = f"**Refused:** {why}.\n\n", attempt + 1
    return None


def _behind_auth() -> bool:
    """Whether this process talks to a Prefect API with HTTP basic auth (the stack's server)."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.auth_string is not None


def run_link() -> RunLink:
    """This flow run's id and its page in the UI a fresh browser gets (Prefect 3.8 serves its
    newer UI under /v2 by default: Resume sits in the run's ⋮ menu there)."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    run_id = flow_run.get_id() or "local"
    url = url_for("flow-run", obj_id=run_id) or ""
    return RunLink(flow_run_id=run_id, flow_run_url=_in_default_ui(url, run_id))


def _in_default_ui(url: str, run_id: str) -> str:
    """`url` (the classic UI's path) in the server's default UI, asked from its /ui-settings
    (open, like the UI's files); `url` itself when the server cannot say."""
    import httpx

    base = url.removesuffix(f"/runs/flow-run/{run_id}")
    if not url or base == url:
        return url
    try:
        settings = httpx.get(f"{base}/ui-settings", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return url
    prefix = settings.get(f"{settings.get('default_ui')}_base_url") or ""
    return f"{base}{prefix.rstrip('/')}/runs/flow-run/{run_id}"


def announce_review(notify: list[str], passing: list[str], link: str) -> None:
    """Tell the reviewers a review waits: the run's log, and each notification block named in
    review.notify (a block that cannot be loaded or reached is logged, never fatal)."""
    from prefect.blocks.core import Block

    logger = get_run_logger()
    subject = f"ModelPress: review needed ({len(passing)} variant(s) passed every gate)"
    body = (
        f"{', '.join(passing)} passed every gate and wait for a reviewer. Open {link} and press "
        f"Resume (in the run's ⋮ menu) to approve or reject."
    )
    logger.warning("review needed: %s", body)
    for slug in notify:
        try:
            block: Any = Block.load(slug)  # a NotificationBlock: Slack, Teams, a webhook, ...
            block.notify(body=body, subject=subject)
        except Exception as error:  # a notification that fails must not lose the review
            logger.warning("review notification %r failed: %s", slug, error)
        else:
            logger.info("review notification sent through %s", slug)


def tag_run(tag: str) -> None:
    """Tag this flow run with its outcome, so a run list shows e.g. "nothing-approved"."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            tags = client.read_flow_run(UUID(run_id)).tags
            client.update_flow_run(UUID(run_id), tags=sorted({*tags, tag}))
    except Exception as exc:  # a label: never fail a run (after a publish, say) for want of it
        get_run_logger().warning("could not tag the run %r: %s", tag, exc)


def artifact_key(model: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in model.lower()).strip("-") or "model"

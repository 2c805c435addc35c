"""Approve → publish: the reviewer's decision (recorded in the registry whatever it is), then the
approved variants and their manifest. A run publishes nothing when the review times out,
nothing is approved, or the approved files equal the last published version's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from flows.review import ask_for_approval, record_decision_task, run_link
from tasks import publish as publishing
from tasks.benchmark import BenchmarkRow
from tasks.config import RegistryConfig
from tasks.decision import (
    ApprovalDecision,
    Outcome,
    RunOutcome,
    approval_record,
    decision_record,
    registry_reference,
)
from tasks.evaluate import VariantMetrics
from tasks.params_model import Params
from tasks.registry import PublishEntry
from tasks.review import GateVerdict
from tasks.unchanged import content_of, unchanged_in


@dataclass(frozen=True)
class Candidates:
    """The variants the gates passed, those they rejected (with why), and their numbers."""

    passing: list[str]
    rejected: dict[str, str]
    dirs: dict[str, str]
    metrics: dict[str, VariantMetrics]
    verdicts: dict[str, GateVerdict]
    bench: list[BenchmarkRow]

    @classmethod
    def of(
        cls,
        metrics: dict[str, VariantMetrics],
        verdicts: dict[str, GateVerdict],
        dirs: dict[str, str],
        bench: list[BenchmarkRow],
    ) -> Candidates:
        passing = [name for name in metrics if verdicts.get(name, GateVerdict(False, "")).passed]
        rejected = {name: v.reason for name, v in verdicts.items() if not v.passed}
        return cls(passing, rejected, dirs, metrics, verdicts, bench)


@dataclass(frozen=True)
class Origin:
    """Where this run's variants came from, and the last version published before it."""

    inputs: dict[str, Any]  # every input file's path/rev and sha256
    baseline_sha256: str
    model_rev: str | None
    data_rev: str | None
    root: Path
    previous: dict[str, Any] | None  # the last published manifest


@dataclass(frozen=True)
class ReviewForm:
    """What the reviewer is asked, and how: the form's text, toggle labels, policy, polling."""

    text: str
    titles: dict[str, str]
    approval: str  # ui | auto
    poll_s: int


@task(name="publish")
def publish_task(
    cfg: RegistryConfig,
    model: str,
    version: str,
    entries: dict[str, PublishEntry],
    lineage: publishing.Lineage,
) -> str:
    """Upload the approved variants, then the manifest; returns the manifest's URI."""
    from tasks.registry import open_registry

    return open_registry(cfg).publish(model, version, entries, lineage.as_json()).uri


CLAIMED = "flow run "  # unchanged_since while another run is publishing the same files


def _claimed_by_another(
    registry: RegistryConfig,
    model: str,
    origin: Origin,
    dirs: dict[str, Path],
    each_held: bool,
    run: Any,
) -> str | None:
    """Claim this content in the registry (create-only): None when this run publishes it.
    Otherwise another run claimed the same files first: the version it published by now, or
    "run <id>" while it is still publishing. Two identical concurrent runs both published."""
    content = content_of(origin.inputs, dirs)
    other = publishing.claim_content(registry, model, content, str(run.flow_run_id))
    if other is None:
        return None
    published = publishing.published_manifests(registry, model)
    return unchanged_in(published, origin.inputs, dirs, each_held) or f"{CLAIMED}{other.get('run')}"


def approve_and_publish(
    params: Params,
    registry: RegistryConfig,
    candidates: Candidates,
    form: ReviewForm,
    origin: Origin,
    version: str | None,
    publish_unchanged: bool,
    each_held: bool = False,
) -> RunOutcome:
    """Ask for approval (every decision, and every refused submission, is recorded in the
    registry beside the versions), then publish what was approved; nothing when a published
    version holds the approved files already (all of them and no others, or with each_held,
    each of them among others: see unchanged_since)."""
    logger = get_run_logger()
    model, passing, run = params.registry.model_name, candidates.passing, run_link()

    def record(outcome: Outcome, decision: ApprovalDecision | None) -> str:
        entry = decision_record(model, outcome, decision, passing, candidates.rejected, run)
        return record_decision_task(registry, entry)

    decision = ask_for_approval(
        passing,
        form.text,
        form.titles,
        form.approval,
        params.review,
        form.poll_s,
        lambda refused: record("refused", refused),
        run.flow_run_url,
    )
    if decision is None:
        uri = record("timed-out", None)
        logger.warning(
            "review timed out after %ss: nothing published (decision recorded: %s)",
            params.review.timeout_s,
            uri,
        )
        return RunOutcome(status="review-timed-out", decision_uri=uri)
    approved = [name for name in passing if name in decision.approved]
    if not approved:
        uri = record("nothing-approved", decision)
        logger.warning(
            "nothing approved by %s (not approved: %s; comment: %r): nothing published "
            "(decision recorded: %s)",
            decision.approved_by,
            ", ".join(passing),
            decision.comment,
            uri,
        )
        return RunOutcome(status="nothing-approved", approval=decision, decision_uri=uri)
    dirs = {name: Path(candidates.dirs[name]) for name in approved}
    same_as = None
    if not publish_unchanged:
        published = publishing.published_manifests(registry, model)
        same_as = unchanged_in(published, origin.inputs, dirs, each_held)
        if same_as is None:
            same_as = _claimed_by_another(registry, model, origin, dirs, each_held, run)
    if same_as is not None:
        reason = (
            f"the same files and inputs are being published by {same_as}"
            if same_as.startswith(CLAIMED)
            else f"the approved files and inputs equal version {same_as}'s"
        )
        uri = record("unchanged", decision.because(reason))
        logger.info(
            "unchanged since version %s: nothing published (decision recorded: %s)", same_as, uri
        )
        return RunOutcome(
            status="unchanged", approval=decision, decision_uri=uri, unchanged_since=same_as
        )
    decision_uri = record("approved", decision)

    # a new version number is claimed with a conditional write, only now that the decision is
    # valid and the publish can go through: two runs never get the same one
    version = version or publishing.allocate_version(registry, model)
    entries = publishing.publish_entries(
        approved,
        candidates.dirs,
        candidates.metrics,
        candidates.verdicts,
        candidates.bench,
        approval_record(decision, run, registry_reference(decision_uri, model)),
    )
    lineage = publishing.lineage(
        params,
        origin.inputs,
        origin.baseline_sha256,
        origin.model_rev,
        origin.data_rev,
        origin.root,
    )
    manifest_uri = publish_task(registry, model, version, entries, lineage)
    logger.info(
        "published %s version %s: %s (approver: %s) → %s",
        model,
        version,
        ", ".join(approved),
        decision.approved_by,
        manifest_uri,
    )
    return RunOutcome(
        status="published",
        version=version,
        published=tuple(approved),
        approval=decision,
        manifest_uri=manifest_uri,
        decision_uri=decision_uri,
    )

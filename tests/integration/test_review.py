"""The review through the real form: a Prefect server (test harness) resumed through its API as the
UI's Resume dialog does, a registry in a local directory and in S3 (moto server on loopback)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests.helpers import FAST_BENCHMARK, write_params, write_random_inputs

pytestmark = pytest.mark.slow

MODEL = "digits-review"


def _params(root: Path, registry: dict[str, Any], review: dict[str, Any] | None = None) -> Path:
    """Random inputs (every accuracy gate off), one quick variant beside the baseline."""
    inputs = write_random_inputs(root)
    path = write_params(
        root, inputs | {"registry": {"model_name": MODEL, **registry}, "review": review or {}}
    )
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = {
        "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 1}
    }
    raw["gates"]["per_variant"] = {}
    raw["benchmark"] = {**raw["benchmark"], **FAST_BENCHMARK}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class _Nightly:
    """The nightly flow in a thread, as a scheduled run would be; `result()` joins it."""

    def __init__(self, **kwargs: Any) -> None:
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, **kwargs: Any) -> None:
        from flows.nightly import nightly

        try:
            self.outcome["result"] = nightly(review_poll_s=1, **kwargs)
        except BaseException as exc:  # surfaced by result()
            self.outcome["error"] = exc

    def result(self) -> Any:
        self.thread.join(timeout=600)
        assert not self.thread.is_alive(), "the flow did not finish"
        assert "error" not in self.outcome, self.outcome.get("error")
        return self.outcome["result"]


def _wait_for_form(after: dict[str, str] | None = None, timeout: float = 600) -> tuple[Any, dict]:
    """The paused run and its keyset once the form's schema is stored (a resume that races ahead
    of it is refused); `after`: a keyset already answered, so wait for the next form."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(limit=5, sort=FlowRunSort.START_TIME_DESC):
                keyset = run.state.state_details.run_input_keyset if run.state else None
                if run.state and run.state.is_paused() and keyset and keyset != after:
                    try:
                        client.read_flow_run_input(run.id, keyset["schema"])
                    except Exception:  # not stored yet
                        continue
                    return run, keyset
            time.sleep(0.5)
    raise AssertionError("the flow never paused for review")


def _form_description(run_id: UUID, keyset: dict[str, str]) -> str:
    import json

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return json.loads(client.read_flow_run_input(run_id, keyset["description"]))


def _final_run(run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _artifacts(api_url: str, run_id: UUID) -> dict[str, str]:
    """The run's artifacts, by key: the latest version's markdown or table data as text."""
    import httpx

    # over plain HTTP, the request the UI makes (the client's read_artifacts sent nulls that
    # fastapi 0.151+ refused with a 422; fastapi is pinned to 0.150 since)
    body = {
        "artifacts": {"flow_run_id": {"any_": [str(run_id)]}},
        "sort": "CREATED_DESC",
        "limit": 50,
        "offset": 0,
    }
    found = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=30).raise_for_status()
    latest: dict[str, str] = {}
    for artifact in found.json():  # newest first: a key's latest version wins
        if artifact.get("key"):
            latest.setdefault(artifact["key"], str(artifact["data"]))
    return latest


def _registry(params: Path) -> Any:
    from tasks.params_file import load_params
    from tasks.registry import open_registry

    return open_registry(load_params(params).registry)


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP receiver standing in for Slack or Teams: it keeps every JSON body posted."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_blank_and_unlisted_reviewers_are_refused_and_an_approver_publishes_to_s3(
    prefect_server: str,
    tmp_path: Path,
    s3_endpoint: str,
    s3_credentials: None,
    webhook_receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    import boto3
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.flow_runs import resume_flow_run

    hook, received = webhook_receiver
    CustomWebhookNotificationBlock(
        name="reviewers",
        url=hook,
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        allow_private_urls=True,  # the receiver is on loopback
    ).save("reviewers", overwrite=True)

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket="review"
    )
    registry_cfg = {"uri": "s3://review/registry", "endpoint_url": s3_endpoint}
    review = {"approvers": ["alice", "bob"], "notify": ["custom-webhook/reviewers"]}
    params = _params(tmp_path, registry_cfg, review)
    registry = _registry(params)
    nightly = _Nightly(params_file=str(params), approval="ui", workdir=str(tmp_path / "work"))
    run, keyset = _wait_for_form()
    # the reviewers were told, with the run's page (in the UI a fresh browser gets where the
    # server serves one: /v2/... behind the stack, tests/integration/test_stack_people.py)
    [told] = received
    [page] = [w.rstrip(".") for w in told["text"].split() if w.startswith("http")]
    assert page.startswith(prefect_server.removesuffix("/api")) and str(run.id) in page
    assert told["subject"].startswith("ModelPress: review needed") and page in told["text"]
    assert "distilled" in told["text"] and "Resume" in told["text"]
    summary = _artifacts(prefect_server, run.id)[f"{MODEL}-summary"]
    assert page in summary
    description = _form_description(run.id, keyset)
    assert "**Who may approve:** the people named in `review.approvers`" in description
    assert "alice" not in description and "bob" not in description  # an impostor learns nothing
    choice = {"approve_distilled": True, "approve_baseline": False, "comment": "student ok"}

    # a name of spaces (no guard in front of this server to fill in a login): refused by the
    # flow in words, recorded, and the form asked again with the reason on top
    resume_flow_run(run.id, run_input=choice | {"reviewer": "   "})
    run, second = _wait_for_form(after=keyset)
    assert "**Refused:** the reviewer's name is blank" in _form_description(run.id, second)

    # a name not on review.approvers: refused by the flow, recorded, and the form asked again
    resume_flow_run(run.id, run_input=choice | {"reviewer": "mallory"})
    run, third = _wait_for_form(after=second)
    assert "**Refused:** 'mallory' is not on review.approvers" in _form_description(run.id, third)
    blank, refused = registry.list_decisions(MODEL)
    assert blank["outcome"] == "refused" and blank["reviewer"] == ""
    assert refused["outcome"] == "refused" and refused["reviewer"] == "mallory"
    assert refused["requested"] == ["distilled"] and refused["flow_run_id"] == str(run.id)
    assert registry.list_versions(MODEL) == []
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    listing = s3.list_objects_v2(Bucket="review", Prefix=f"registry/{MODEL}/")
    assert all("/decisions/" in o["Key"] for o in listing["Contents"])  # no version reserved

    resume_flow_run(run.id, run_input=choice | {"reviewer": " Alice "})
    result = nightly.result()

    assert result.status == "published" and result.published == ["distilled"]
    approval = registry.read_manifest(MODEL, result.version)["variants"]["distilled"]["approval"]
    assert approval["approved_by"] == "alice" and approval["comment"] == "student ok"
    assert approval["identity"] == (
        "typed name, checked against review.approvers, on a Prefect server without authentication"
    )
    assert approval["flow_run_id"] == str(run.id)
    assert approval["flow_run_url"] == page
    decisions = registry.list_decisions(MODEL)
    assert [d["outcome"] for d in decisions] == ["refused", "refused", "approved"]
    # relative to the registry's root: a consumer follows it wherever it reads the registry
    assert approval["decision"] == f"{MODEL}/decisions/{decisions[2]['record']}"
    assert result.decision_uri is not None and result.decision_uri.endswith(approval["decision"])
    final = _final_run(run.id)
    assert final.state.is_completed() and "published" in final.tags
    assert "approved" in _artifacts(prefect_server, run.id)[f"{MODEL}-decision"]


def test_nothing_toggled_is_a_visible_recorded_decision(
    prefect_server: str, tmp_path: Path
) -> None:
    from prefect.flow_runs import resume_flow_run

    params = _params(tmp_path, {"uri": str(tmp_path / "registry")})
    registry = _registry(params)
    common = dict(params_file=str(params), workdir=str(tmp_path / "work"))
    first = _Nightly(approval="auto", **common).result()  # version 1: what the review compares with
    assert first.status == "published" and first.version == "1"

    nightly = _Nightly(approval="ui", **common)
    run, keyset = _wait_for_form()
    assert "anyone who can reach this Prefect UI" in _form_description(run.id, keyset)
    resume_flow_run(
        run.id,
        run_input={"reviewer": "bob", "comment": "int8 is slower than fp32 on this model"},
    )
    result = nightly.result()

    assert result.status == "nothing-approved" and result.published == []
    assert registry.list_versions(MODEL) == ["1"]
    decision = registry.list_decisions(MODEL)[-1]
    assert decision["outcome"] == "nothing-approved" and decision["reviewer"] == "bob"
    assert decision["comment"] == "int8 is slower than fp32 on this model"
    assert sorted(decision["not_approved"]) == ["baseline", "distilled"]
    assert decision["approved"] == [] and decision["flow_run_id"] == str(run.id)
    assert decision["identity"].startswith("typed name, not checked (review.approvers is empty)")
    final = _final_run(run.id)
    assert final.state.is_completed() and "nothing-approved" in final.tags
    artifacts = _artifacts(prefect_server, run.id)
    assert "nothing-approved" in artifacts[f"{MODEL}-decision"]
    assert "bob" in artifacts[f"{MODEL}-decision"]
    summary = artifacts[f"{MODEL}-summary"]
    assert "**Passed every gate** (2)" in summary  # one per variant, not one per runner
    assert "- distilled vs version `1`" in summary and "p50 on cloud-cpu" in summary

"""The nightly flow against real systems: a Prefect server (test harness), a git + DVC repo with two
tagged versions pushed to a DVC remote, and a real S3 HTTP endpoint (moto server) for the registry."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests import processes
from tests.helpers import (
    CRASHING_TECHNIQUE,
    FAST_BENCHMARK,
    LENIENT_GATES,
    PLUGIN_TECHNIQUE,
    write_params,
    write_random_inputs,
)

pytestmark = pytest.mark.slow

VARIANTS = {
    "tflite_int8": {"technique": "tflite_int8", "source": "baseline", "calibration_samples": 64},
    "pruned": {"technique": "pruned", "source": "baseline", "ratio": 0.3, "finetune_epochs": 2},
    "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 6},
}


def _sh(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = processes.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_repo(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A git + DVC repo whose tags v1 and v2 hold different model and data bytes, pushed to a
    local DVC remote; the repo's cache is then emptied so every fetch goes through the remote."""
    from tasks.data import SPLITS, load_split
    from tasks.train import load_baseline

    repo = tmp_path_factory.mktemp("model-repo")
    remote = tmp_path_factory.mktemp("dvc-remote")
    _sh(["git", "init", "-q"], repo)
    _sh(["dvc", "init", "-q"], repo)
    _sh(["dvc", "remote", "add", "-d", "storage", str(remote)], repo)
    (repo / "models").mkdir()
    (repo / "data").mkdir()
    splits = [load_split(tiny_workspace / "data", name) for name in SPLITS]
    x = np.concatenate([s.x for s in splits])
    y = np.concatenate([s.y for s in splits])
    model = load_baseline(tiny_workspace / "models" / "baseline")
    hashes = {}
    for tag, keep in (("v1", len(y)), ("v2", len(y) - 40)):
        program = torch.export.export(model.eval(), (torch.zeros(1, 1, 16, 16),))
        torch.export.save(program, str(repo / "models" / "model.pt2"))
        if tag == "v2":  # a different model: same network, one weight nudged
            with torch.no_grad():
                model.classifier.bias.add_(0.01)
            torch.export.save(
                torch.export.export(model.eval(), (torch.zeros(1, 1, 16, 16),)),
                str(repo / "models" / "model.pt2"),
            )
        np.savez(
            repo / "data" / "digits.npz", x=(x[:keep] * 255).round().astype(np.uint8), y=y[:keep]
        )
        _sh(["dvc", "add", "-q", "models/model.pt2", "data/digits.npz"], repo)
        _sh(["git", "add", "-A"], repo)
        _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", tag], repo)
        _sh(["git", "tag", tag], repo)
        _sh(["dvc", "push", "-q"], repo)
        hashes[tag] = {
            "model": _sha256(repo / "models" / "model.pt2"),
            "data": _sha256(repo / "data" / "digits.npz"),
        }
    _sh(["rm", "-rf", ".dvc/cache"], repo)
    return {"repo": repo, "hashes": hashes}


def _params(tmp_path: Path, repo: Path, registry: str, extra: dict | None = None) -> Path:
    overrides = {
        "fetch": {
            "repo": str(repo),
            "model_path": "models/model.pt2",
            "data_path": "data/digits.npz",
        },
        "data": {"normalize": "train"},  # the model in the repo was trained on these statistics
        "gates": LENIENT_GATES,
        "benchmark": {"iterations": 20, "warmup": 2, "max_seconds": 2.0},
        "registry": {"uri": registry, "model_name": "digits-tiny"},
        **(extra or {}),
    }
    path = write_params(tmp_path, overrides)
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["variants"] = (extra or {}).get("variants", VARIANTS)
    # per-variant gates replace (not merge with) the repo's, which name variants not built here
    raw["gates"]["per_variant"] = (extra or {}).get("gates", LENIENT_GATES)["per_variant"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_flow_uses_the_bytes_of_the_requested_rev(
    prefect_server: str, model_repo: dict, tmp_path: Path
) -> None:
    from flows.nightly import nightly
    from tasks.params_file import load_params
    from tasks.registry import open_registry

    params = _params(tmp_path, model_repo["repo"], str(tmp_path / "registry"))
    for tag in ("v1", "v2"):
        result = nightly(
            params_file=str(params),
            model_rev=tag,
            data_rev=tag,
            approval="auto",
            version=f"{tag}.0",
            workdir=str(tmp_path / "work"),
        )
        assert result.status == "published", result
        manifest = open_registry(load_params(params).registry).read_manifest(
            "digits-tiny", f"{tag}.0"
        )
        inputs = manifest["lineage"]["inputs"]
        assert inputs["model_sha256"] == model_repo["hashes"][tag]["model"]
        assert inputs["data_sha256"] == model_repo["hashes"][tag]["data"]
        assert manifest["lineage"]["model_rev"] == tag
        assert {
            a["approved_by"] for a in (v["approval"] for v in manifest["variants"].values())
        } == {"auto-approved by policy"}


def test_unknown_rev_fails_before_any_work(
    prefect_server: str, model_repo: dict, tmp_path: Path
) -> None:
    from flows.nightly import nightly
    from tasks.errors import FetchError

    params = _params(tmp_path, model_repo["repo"], str(tmp_path / "registry"))
    with pytest.raises(FetchError, match="v9"):
        nightly(
            params_file=str(params), model_rev="v9", approval="auto", workdir=str(tmp_path / "work")
        )
    assert not (tmp_path / "work" / "data").exists()


def test_bad_data_stops_before_compression(
    prefect_server: str, model_repo: dict, tmp_path: Path
) -> None:
    from flows.nightly import nightly
    from tasks.errors import DataValidationError

    params = _params(
        tmp_path,
        model_repo["repo"],
        str(tmp_path / "registry"),
        {"gates": {**LENIENT_GATES, "data": {"min_samples_per_class": 500}}},
    )
    with pytest.raises(DataValidationError, match=r"min_samples_per_class|samples"):
        nightly(
            params_file=str(params),
            model_rev="v1",
            data_rev="v1",
            approval="auto",
            workdir=str(tmp_path / "work"),
        )
    assert not (tmp_path / "work" / "variants").exists()
    assert not (tmp_path / "registry").exists() or not any((tmp_path / "registry").iterdir())


def _wait_for_paused_run(timeout: float = 600) -> Any:
    """The paused nightly run, once its input schema can be read (a resume before that is refused)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(limit=5, sort=FlowRunSort.START_TIME_DESC):
                keyset = run.state.state_details.run_input_keyset if run.state else None
                if run.state and run.state.is_paused() and keyset:
                    try:
                        client.read_flow_run_input(run.id, keyset["schema"])
                    except Exception:  # schema not stored yet
                        continue
                    return run
            time.sleep(1)
    raise AssertionError("the flow never paused for review")


def test_ui_approval_publishes_exactly_the_approved_subset_to_s3(
    prefect_server: str, model_repo: dict, tmp_path: Path, s3_endpoint: str, s3_credentials: None
) -> None:
    import boto3
    from prefect.flow_runs import resume_flow_run

    from flows.nightly import nightly
    from tasks.params_file import load_params
    from tasks.registry import RegistryError, open_registry

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    extra = {
        "registry": {
            "uri": "s3://models/registry",
            "endpoint_url": s3_endpoint,
            "model_name": "digits-tiny",
        },
        # int8 forced below its threshold: rejected, never offered
        "gates": {**LENIENT_GATES, "per_variant": {"tflite_int8": {"min_accuracy": 0.9999}}},
    }
    params = _params(tmp_path, model_repo["repo"], "unused", extra)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = nightly(
                params_file=str(params),
                model_rev="v1",
                data_rev="v1",
                approval="ui",
                version="1.0.0",
                workdir=str(tmp_path / "work"),
                review_poll_s=1,
            )
        except BaseException as exc:  # surfaced by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    paused = _wait_for_paused_run()
    resume_flow_run(
        paused.id,
        run_input={
            "approve_distilled": True,
            "approve_pruned": False,
            "approve_baseline": False,
            "reviewer": "alice",
            "comment": "student is good enough",
        },
    )
    worker.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.status == "published" and result.published == ["distilled"]
    assert "tflite_int8" in result.rejected and "min_accuracy" in result.rejected["tflite_int8"]

    registry = open_registry(load_params(params).registry)
    manifest = registry.read_manifest("digits-tiny", "1.0.0")
    assert set(manifest["variants"]) == {"distilled"}
    assert manifest["variants"]["distilled"]["approval"]["approved_by"] == "alice"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="registry/")["Contents"]}
    assert not any("/tflite_int8/" in k or "/pruned/" in k for k in keys)
    for rel, meta in manifest["variants"]["distilled"]["files"].items():
        body = s3.get_object(Bucket="models", Key=f"registry/digits-tiny/1.0.0/distilled/{rel}")[
            "Body"
        ].read()
        assert (
            hashlib.sha256(body).hexdigest() == meta["sha256"] and len(body) == meta["size_bytes"]
        )

    # a second publish of the same version is refused and leaves the first intact
    before = s3.get_object(Bucket="models", Key="registry/digits-tiny/1.0.0/manifest.json")[
        "Body"
    ].read()
    with pytest.raises(RegistryError, match=r"immutable|exists"):
        nightly(
            params_file=str(params),
            model_rev="v1",
            data_rev="v1",
            approval="auto",
            version="1.0.0",
            workdir=str(tmp_path / "work"),
        )
    after = s3.get_object(Bucket="models", Key="registry/digits-tiny/1.0.0/manifest.json")[
        "Body"
    ].read()
    assert after == before


def test_rerun_with_unchanged_inputs_is_cached(
    prefect_server: str, model_repo: dict, tmp_path: Path
) -> None:
    from flows.nightly import nightly

    params = _params(tmp_path, model_repo["repo"], str(tmp_path / "registry"))
    common = dict(
        params_file=str(params),
        model_rev="v1",
        data_rev="v1",
        approval="auto",
        workdir=str(tmp_path / "work"),
    )
    first = nightly(version="a", **common)
    second = nightly(version="b", **common)
    assert first.cached_tasks == []
    assert set(second.cached_tasks) == {"baseline", *VARIANTS}
    # the same files from the same inputs: no byte-identical version "b"
    assert second.status == "unchanged" and second.unchanged_since == "a", second
    third = nightly(version="b", publish_unchanged=True, **common)
    assert third.status == "published" and third.published == first.published
    # the workdir deleted, Prefect's cache records kept: every step runs again instead of
    # handing back results that name files no longer there
    shutil.rmtree(tmp_path / "work")
    fourth = nightly(version="c", publish_unchanged=True, **common)
    assert fourth.cached_tasks == []
    assert fourth.status == "published" and set(fourth.published) == set(first.published)


def test_a_variant_that_does_not_beat_the_baseline_is_not_offered(
    prefect_server: str, model_repo: dict, tmp_path: Path
) -> None:
    """The benchmark's per-runner p50s reach the gate: pruned must be 1000x faster on some
    runner (and size does not count for it), so it is rejected with the measured times."""
    from flows.nightly import nightly

    beat = {"pruned": {"min_speedup": 1000.0, "min_size_reduction": None}}
    extra = {
        "gates": {**LENIENT_GATES, "per_variant": beat},
        "variants": {name: VARIANTS[name] for name in ("pruned", "distilled")},
    }
    params = _params(tmp_path, model_repo["repo"], str(tmp_path / "registry"), extra)
    result = nightly(
        params_file=str(params),
        model_rev="v1",
        data_rev="v1",
        approval="auto",
        version="1",
        workdir=str(tmp_path / "work"),
    )
    assert result.status == "published" and "distilled" in result.published, result
    assert "pruned" not in result.published
    reason = result.rejected["pruned"]
    assert "beats baseline (min_speedup or min_size_reduction)" in reason, reason
    # both runners timed it against the baseline in one session; the reason names the runner
    # closest to passing, with both times and the interval of their ratio
    assert re.search(
        r"on (cloud|edge)-cpu [^;]*baseline \([^)]*[\d.]+ vs [\d.]+ ms p50, \d+ interleaved "
        r"rounds, this session\), needs 1000x",
        reason,
    ), reason


def test_unanswered_review_times_out_and_publishes_nothing(
    prefect_server: str, model_repo: dict, tmp_path: Path
) -> None:
    from flows.nightly import nightly

    params = _params(
        tmp_path, model_repo["repo"], str(tmp_path / "registry"), {"review": {"timeout_s": 2}}
    )
    result = nightly(
        params_file=str(params),
        model_rev="v1",
        data_rev="v1",
        approval="ui",
        workdir=str(tmp_path / "work"),
        review_poll_s=1,
    )
    assert result.status == "review-timed-out" and result.published == []
    assert not (tmp_path / "registry").exists() or not any(
        (tmp_path / "registry").rglob("manifest.json")
    )
    from tasks.params_file import load_params
    from tasks.registry import open_registry

    [decision] = open_registry(load_params(params).registry).list_decisions("digits-tiny")
    assert decision["outcome"] == "timed-out" and decision["reviewer"] is None


def test_fetch_through_an_s3_dvc_remote_with_a_custom_endpoint(
    tmp_path: Path, s3_endpoint: str, s3_credentials: None
) -> None:
    """A DVC remote on an S3-compatible endpoint (moto here, MinIO/AWS in production)."""
    import boto3

    from tasks.config import FetchConfig
    from tasks.fetch import fetch_file

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket="dvc-store"
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    _sh(["git", "init", "-q"], repo)
    _sh(["dvc", "init", "-q"], repo)
    _sh(["dvc", "remote", "add", "-d", "s3store", "s3://dvc-store/cache"], repo)
    _sh(["dvc", "remote", "modify", "s3store", "endpointurl", s3_endpoint], repo)
    payload = np.arange(1000, dtype=np.int64).tobytes()
    (repo / "blob.bin").write_bytes(payload)
    _sh(["dvc", "add", "-q", "blob.bin"], repo)
    _sh(["git", "add", "-A"], repo)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "s3"], repo)
    _sh(["git", "tag", "s3v1"], repo)
    _sh(["dvc", "push"], repo)
    _sh(["rm", "-rf", ".dvc/cache", "blob.bin"], repo)
    cfg = FetchConfig(
        repo=str(repo), data_path="blob.bin", remote_config={"endpointurl": s3_endpoint}
    )
    fetched = fetch_file(cfg, "blob.bin", "s3v1", "data_rev", tmp_path / "out")
    assert fetched.local_path.read_bytes() == payload
    assert fetched.sha256 == hashlib.sha256(payload).hexdigest()


def _plugin_run(
    tmp_path: Path, techniques: list[str], variants: dict, registry: dict
) -> dict[str, str]:
    """The nightly's arguments for random inputs (every accuracy gate off), the plugin
    `techniques` and only `variants`."""
    import yaml

    inputs = write_random_inputs(tmp_path)
    path = write_params(tmp_path, inputs | {"techniques": techniques, "registry": registry})
    raw = yaml.safe_load(path.read_text())
    raw["variants"], raw["gates"]["per_variant"] = variants, {}
    raw["benchmark"] = {**raw["benchmark"], **FAST_BENCHMARK}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dict(params_file=str(path), approval="auto", workdir=str(tmp_path / "work"))


def test_technique_from_outside_the_repo_is_built_evaluated_and_published(
    prefect_server: str, tmp_path: Path
) -> None:
    """tests/plugins/bf16_weights.py, named in params.yaml, goes through the whole flow as the
    built-in techniques do: built (and cached), evaluated, benchmarked, gated, published."""

    from flows.nightly import nightly
    from tasks.config import RegistryConfig
    from tasks.registry import open_registry

    registry = {"uri": str(tmp_path / "registry"), "model_name": "plugin"}
    variants = {"bf16": {"technique": "bf16_weights", "source": "baseline"}}
    run = _plugin_run(tmp_path, [PLUGIN_TECHNIQUE], variants, registry)
    result = nightly(**run)
    # every gate is off here: the baseline passes too and is published beside it
    assert result.status == "published" and result.published == ["baseline", "bf16"], result
    manifest = open_registry(RegistryConfig(**registry)).read_manifest("plugin", result.version)
    entry = manifest["variants"]["bf16"]
    assert entry["format"] == "onnx"
    assert set(entry["files"]) == {"model.onnx", "variant.json"}
    assert entry["metrics"]["agreement"] >= 0.95, entry["metrics"]
    # the technique's module is part of the compress cache key: an unchanged night reuses it
    again = nightly(**run)
    assert "bf16" in again.cached_tasks and again.status == "unchanged", again


def test_a_crashing_build_fails_its_variant_not_the_night(
    prefect_server: str, tmp_path: Path
) -> None:
    """One technique raises (a bug), one's build process is SIGKILLed (as the out-of-memory
    killer does): each fails its own variant, with why, and so does a variant built from one;
    the others are built, evaluated and published. A crash is not cached: the next night builds
    it again (before, the first crash ended the flow and nothing was published)."""

    from flows.nightly import nightly

    registry = {"uri": str(tmp_path / "registry"), "model_name": "crashes"}
    variants = {
        "bf16": {"technique": "bf16_weights", "source": "baseline"},
        "buggy": {"technique": "crashing", "source": "baseline", "how": "raise"},
        "killed": {"technique": "crashing", "source": "baseline", "how": "die"},
        "after_killed": {"technique": "bf16_weights", "source": "killed"},
    }
    run = _plugin_run(tmp_path, [PLUGIN_TECHNIQUE, CRASHING_TECHNIQUE], variants, registry)
    result = nightly(**run)
    assert result.status == "published" and result.published == ["baseline", "bf16"], result
    rejected = result.rejected
    assert "buggy: build crashed (RuntimeError): index 7 is out of bounds" in rejected["buggy"]
    assert (
        "killed: build crashed (ChildProcessDied): killed's build process was killed by SIGKILL"
        in rejected["killed"]
    ), rejected
    assert "source 'killed' is failed" in rejected["after_killed"], rejected
    variants = tmp_path / "work" / "variants"
    assert not [d.name for d in variants.glob("*/killed-*") if not d.name.endswith(".unfinished")]

    again = nightly(**run)
    assert again.status == "unchanged" and "bf16" in again.cached_tasks, again
    assert not {"buggy", "killed", "after_killed"} & set(again.cached_tasks), again.cached_tasks
    assert "killed's build process was killed by SIGKILL" in again.rejected["killed"]


def test_a_build_past_its_time_bound_is_stopped_and_fails_its_variant(
    prefect_server: str, tiny_workspace: Path
) -> None:
    """A search's --seconds budget bounds the batch in flight: a build still running at the
    bound is stopped and its variant fails saying so, instead of the search overrunning by
    minutes. (Prefect's task timeout; the hang is in Python, as a training loop is.)"""
    import time

    from flows.variants import build_variants
    from tasks.io import read_json
    from tasks.params_file import parse_params

    params = parse_params(
        {
            "techniques": [CRASHING_TECHNIQUE],
            "variants": {"slow": {"technique": "crashing", "source": "baseline", "how": "hang"}},
        }
    )
    baseline = tiny_workspace / "models" / "baseline"
    sha = read_json(baseline / "baseline.json")["sha256"]
    started = time.monotonic()
    built = build_variants(
        params,
        sha,
        "bound-test",
        str(baseline),
        str(tiny_workspace / "data"),
        tiny_workspace / "work-bound",
        3.0,
    )
    assert time.monotonic() - started < 60
    record = built.records["slow"]
    assert record.status == "failed"
    assert "slow: build stopped at its time bound" in (record.reason or ""), record.reason


def test_a_build_past_timeouts_build_s_fails_its_variant_naming_the_setting(
    prefect_server: str, tiny_workspace: Path
) -> None:
    """Every build has a bound, not only a search's: timeouts.build_s in params.yaml. Before,
    a build with no search around it had none and a hung one held the night for ever."""
    from flows.variants import build_variants
    from tasks.io import read_json
    from tasks.params_file import parse_params

    params = parse_params(
        {
            "techniques": [CRASHING_TECHNIQUE],
            "variants": {"slow": {"technique": "crashing", "source": "baseline", "how": "hang"}},
            "timeouts": {"build_s": 3},
        }
    )
    baseline = tiny_workspace / "models" / "baseline"
    sha = read_json(baseline / "baseline.json")["sha256"]
    started = time.monotonic()
    built = build_variants(
        params, sha, "build-s-test", str(baseline), str(tiny_workspace / "data"),
        tiny_workspace / "work-build-s",
    )  # fmt: skip
    assert time.monotonic() - started < 60
    record = built.records["slow"]
    assert record.status == "failed"
    assert record.reason == "slow: build stopped at its time bound (timeouts.build_s = 3 s)"


def test_a_night_past_timeouts_night_s_stops_saying_so(prefect_server: str, tmp_path: Path) -> None:
    """The nightly as a whole has a bound (timeouts.night_s, else the sum of its stages'):
    past it the run fails with a line naming the setting, and the flow run says so."""
    from flows.nightly import nightly
    from tasks.timeouts import NightTimedOut

    registry = {"uri": str(tmp_path / "registry"), "model_name": "bounded"}
    variants = {"slow": {"technique": "crashing", "source": "baseline", "how": "hang"}}
    run = _plugin_run(tmp_path, [CRASHING_TECHNIQUE], variants, registry)
    run["overrides"] = {"timeouts": {"night_s": 25}}  # type: ignore[assignment]
    started = time.monotonic()
    state = nightly(**run, return_state=True)
    elapsed = time.monotonic() - started
    assert state.is_failed(), state
    with pytest.raises(NightTimedOut, match=r"nightly bounded: stopped at its time bound "
                       r"\(timeouts.night_s = 25 s\)"):  # fmt: skip
        state.result()
    assert elapsed < 25 + 45, elapsed  # the hang alone is 120 s
    assert not (tmp_path / "registry" / "bounded").exists()

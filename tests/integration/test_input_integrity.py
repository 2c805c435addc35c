"""Local inputs (fetch.repo null) are cache keys by content: a changed model, data file, factory
module, weights file or ImageFolder image re-runs what it feeds and is published under its new
sha256; an unchanged input stays cached, and an unchanged night publishes nothing.

Runs the real nightly flow against the session's Prefect server with one runner, one short
variant and tiny random inputs (no accuracy gates), so each run takes seconds.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests import processes
from tests.helpers import FAST_BENCHMARK, write_params

pytestmark = pytest.mark.slow

ONE_VARIANT = {
    "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 1}
}
NO_ACCURACY_GATES = {
    "min_accuracy": None,
    "max_accuracy_drop": None,
    "max_worst_class_drop": None,
    "min_agreement": None,
    "min_speedup": None,  # not this test's subject: whatever distilled measures, it is offered
    "min_size_reduction": None,
    "max_slowdown": None,
}
FACTORY_SOURCE = '''"""A user's model module, outside ModelPress."""
from torch import nn


def build(classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, classes))
'''


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _params(root: Path, data: dict, baseline: dict) -> Path:
    path = write_params(
        root,
        {
            # imported models state their normalisation; these were trained on train-split stats
            "data": {"normalize": "train"} | data,
            "baseline": baseline,
            "registry": {"uri": str(root / "registry"), "model_name": "integrity"},
        },
    )
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = ONE_VARIANT
    raw["gates"]["defaults"] |= NO_ACCURACY_GATES
    raw["gates"]["per_variant"] = {}
    raw["benchmark"] = {**raw["benchmark"], **FAST_BENCHMARK}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _save_pt2(model: Any, path: Path) -> None:
    import torch

    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 1, 16, 16),)), str(path))


def _linear(classes: int, bias: float = 0.0) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, classes))
    with torch.no_grad():
        model[1].bias.add_(bias)
    return model.eval()


def _run(params: Path, root: Path, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    """One nightly run: its result and {task run name prefix: final state name}."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    from flows.nightly import nightly

    state = nightly(
        params_file=str(params),
        approval="auto",
        workdir=str(root / "work"),
        return_state=True,
        **kwargs,
    )
    result = state.result()
    top = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        # the export and compress tasks run in the nightly's `variants` subflow
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[top])
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=50,
        )
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[top, *(child.id for child in children)])
            ),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    states = {}
    for run in runs:
        name = run.name if run.name.startswith("compress-") else run.name.rsplit("-", 1)[0]
        states[name] = run.state.name if run.state else "?"
    return result, states


def _lineage(root: Path, version: str) -> dict[str, Any]:
    from tasks.config import RegistryConfig
    from tasks.registry import open_registry

    registry = open_registry(RegistryConfig(uri=str(root / "registry"), model_name="integrity"))
    return registry.read_manifest("integrity", version)["lineage"]["inputs"]


BUILT = ("prepare", "train", "export", "compress-distilled")


def _cached(states: dict[str, str]) -> set[str]:
    return {name for name in BUILT if states.get(name) == "Cached"}


def test_changed_npz_or_pt2_is_rebuilt_and_published_with_its_new_hash(
    prefect_server: str, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 20)
    x = rng.integers(0, 256, (len(y), 1, 16, 16), dtype=np.uint8)
    np.savez(inputs / "data.npz", x=x, y=y)
    _save_pt2(_linear(4), inputs / "model.pt2")
    params = _params(
        tmp_path,
        {"source": "npz", "path": "inputs/data.npz"},
        {"source": "pt2", "path": "inputs/model.pt2"},
    )

    first, states = _run(params, tmp_path)
    assert first.status == "published", first
    lineage = _lineage(tmp_path, first.version)
    assert lineage["model_sha256"] == _sha256(inputs / "model.pt2")
    assert lineage["data_sha256"] == _sha256(inputs / "data.npz")

    # another model: data stays cached, everything from the baseline on is rebuilt
    _save_pt2(_linear(4, bias=0.01), inputs / "model.pt2")
    second, states = _run(params, tmp_path)
    assert second.status == "published" and second.version != first.version, second
    assert _cached(states) == {"prepare"}, states
    assert _lineage(tmp_path, second.version)["model_sha256"] == _sha256(inputs / "model.pt2")

    # one label changed inside the .npz: everything is rebuilt
    y[0] = 1
    np.savez(inputs / "data.npz", x=x, y=y)
    third, states = _run(params, tmp_path)
    assert third.status == "published", third
    assert _cached(states) == set(), states
    assert _lineage(tmp_path, third.version)["data_sha256"] == _sha256(inputs / "data.npz")

    # nothing changed: every build is cached and no byte-identical version is published
    fourth, states = _run(params, tmp_path)
    assert _cached(states) == set(BUILT), states
    assert fourth.status == "unchanged" and fourth.version is None, fourth
    assert fourth.unchanged_since == third.version
    from tasks.config import RegistryConfig
    from tasks.registry import open_registry

    registry = open_registry(RegistryConfig(uri=str(tmp_path / "registry")))
    assert registry.list_versions("integrity") == [first.version, second.version, third.version]

    # ... unless asked for
    fifth, _ = _run(params, tmp_path, publish_unchanged=True)
    assert fifth.status == "published", fifth
    assert registry.list_versions("integrity")[-1] == fifth.version != third.version


def _png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)


def test_changed_factory_weights_or_image_is_rebuilt_and_published_with_its_new_hash(
    prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from tasks.lineage import sha256_tree

    inputs = tmp_path / "inputs"
    rng = np.random.default_rng(1)
    for label in ("cat", "dog"):
        for i in range(20):
            _png(inputs / "images" / label / f"{i}.png", rng.integers(0, 256, (16, 16), np.uint8))
    module = tmp_path / "integrity_user_model.py"
    module.write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(_linear(2).state_dict(), inputs / "weights.pt")
    params = _params(
        tmp_path,
        {"source": "imagefolder", "path": "inputs/images"},
        {
            "source": "factory",
            "factory": "integrity_user_model:build",
            "factory_kwargs": {"classes": 2},
            "path": "inputs/weights.pt",
        },
    )

    first, _ = _run(params, tmp_path)
    assert first.status == "published", first
    lineage = _lineage(tmp_path, first.version)
    assert lineage["factory_source_sha256"] == _sha256(module)
    assert lineage["weights_sha256"] == _sha256(inputs / "weights.pt")
    assert lineage["data_sha256"] == sha256_tree(inputs / "images")

    # the factory module's source: the baseline is rebuilt from it, the data is not
    module.write_text(FACTORY_SOURCE + "# retrained on new crops\n")
    second, states = _run(params, tmp_path)
    assert second.status == "published", second
    assert _cached(states) == {"prepare"}, states
    assert _lineage(tmp_path, second.version)["factory_source_sha256"] == _sha256(module)

    # the weights file
    torch.save(_linear(2, bias=0.01).state_dict(), inputs / "weights.pt")
    third, states = _run(params, tmp_path)
    assert third.status == "published", third
    assert _cached(states) == {"prepare"}, states
    assert _lineage(tmp_path, third.version)["weights_sha256"] == _sha256(inputs / "weights.pt")

    # one image of the ImageFolder tree
    image = inputs / "images" / "dog" / "3.png"
    from PIL import Image

    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 1
    _png(image, pixels)
    fourth, states = _run(params, tmp_path)
    assert fourth.status == "published", fourth
    assert _cached(states) == set(), states
    assert _lineage(tmp_path, fourth.version)["data_sha256"] == sha256_tree(inputs / "images")
    sys.modules.pop("integrity_user_model", None)


def test_an_unchanged_night_says_so_through_the_cli_and_publishes_on_request(
    prefect_server: str, tmp_path: Path
) -> None:
    import subprocess

    from tests.helpers import cli_env, write_random_inputs

    overrides = write_random_inputs(tmp_path)
    params = _params(tmp_path, overrides["data"], overrides["baseline"])
    command = [
        sys.executable,
        *("-m", "flows.cli", "nightly", "--params", str(params), "--approval", "auto"),
        *("--workdir", str(tmp_path / "work")),
    ]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        done = processes.run(
            [*command, *extra],
            cwd=tmp_path,
            env=cli_env({}, prefect_server),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    assert "nightly: published — model integrity version 1" in run().stdout
    again = run().stdout
    assert "nightly: unchanged — model integrity" in again, again[-2000:]
    assert "unchanged since version 1" in again and "published: nothing" in again
    assert "nightly: published — model integrity version 2" in run("--publish-unchanged").stdout

"""Bad inputs through the real entry point: `python -m flows.cli nightly` against the session's
Prefect server. Every case must exit 2 with a last stderr line `error: ...` naming the culprit, print
no traceback, fail before the work it cannot do (nothing compressed; for config and registry
problems nothing at all), and leave no manifest, version directory or half-written `.*.tmp` file.

Cases use tiny hand-made data and torch.export models (no training), so each fails in seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests import processes
from tests.helpers import FAST_BENCHMARK, LENIENT_GATES, cli_env, write_params

EXIT_USER_ERROR = 2
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAMODELPRESSLEAK01",
    "AWS_SECRET_ACCESS_KEY": "mp-secret-LEAK-7f3a9c",
    "AWS_SESSION_TOKEN": "mp-token-LEAK-42",
}
IMAGE = (1, 16, 16)
ONE_VARIANT = {
    "distilled": {"technique": "distilled", "source": "baseline", "width": 4, "epochs": 1}
}


# ---- builders: tiny data, tiny models, a tiny git + DVC repo --------------------------------


def _good_data(per_class: int = 30, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), per_class).astype(np.int64)
    return rng.integers(0, 256, (len(y), *IMAGE), dtype=np.uint8), y


def _linear_model(in_pixels: int = 16 * 16, logits: int = 10) -> Any:
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(in_pixels, logits)).eval()


def _save_pt2(module: Any, path: Path, example: tuple[int, ...] = (1, *IMAGE)) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(torch.export.export(module, (torch.zeros(*example),)), str(path))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sh(args: list[str], cwd: Path) -> None:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = processes.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repo with good data and a good model at tag v1, pushed to a local remote."""
    repo = tmp_path_factory.mktemp("bad-inputs-repo")
    _sh(["git", "init", "-q"], repo)
    _sh(["dvc", "init", "-q"], repo)
    _sh(["dvc", "remote", "add", "-d", "storage", str(tmp_path_factory.mktemp("remote"))], repo)
    x, y = _good_data()
    (repo / "data").mkdir()
    np.savez(repo / "data" / "data.npz", x=x, y=y)
    _save_pt2(_linear_model(), repo / "models" / "model.pt2")
    _sh(["dvc", "add", "-q", "data/data.npz", "models/model.pt2"], repo)
    _sh(["git", "add", "-A"], repo)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1"], repo)
    _sh(["git", "tag", "v1"], repo)
    _sh(["dvc", "push", "-q"], repo)
    return repo


# ---- the workspace a case edits ------------------------------------------------------------


@dataclass
class Workspace:
    root: Path
    request: pytest.FixtureRequest
    registry_uri: str = ""
    params: Path | None = None

    def __post_init__(self) -> None:
        self.registry_uri = str(self.registry)
        self.write_data(*_good_data())
        _save_pt2(_linear_model(), self.root / "inputs" / "model.pt2")

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def write_data(self, x: np.ndarray, y: np.ndarray) -> None:
        (self.root / "inputs").mkdir(exist_ok=True)
        np.savez(self.root / "inputs" / "data.npz", x=x, y=y)

    def write_params(
        self, overrides: dict[str, Any] | None = None, edit: Callable[[dict], None] | None = None
    ) -> None:
        """Tiny npz + .pt2 params, one variant, no per-variant gates; `edit` changes the raw YAML."""
        base = {
            "data": {
                "source": "npz",
                "path": "inputs/data.npz",
                "num_classes": 10,
                "normalize": "train",  # an imported model states it
            },
            "baseline": {"source": "pt2", "path": "inputs/model.pt2"},
            "registry": {"model_name": "bad-inputs"},
        }
        path = write_params(self.root, base)
        raw = yaml.safe_load(path.read_text())
        raw["variants"] = dict(ONE_VARIANT)
        raw["gates"]["per_variant"] = {}
        # 120 test images cannot certify the default drop gates (the data suite would stop every
        # case at once): the subject here is the bad input, so the gates are lenient
        raw["gates"]["defaults"] = dict(LENIENT_GATES["defaults"])
        raw["benchmark"] = {**raw.get("benchmark", {}), **FAST_BENCHMARK}
        raw = _merge(raw, overrides or {})
        if edit is not None:
            edit(raw)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.params = path

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        assert self.params is not None, "the case wrote no params"
        command = [
            sys.executable,
            "-m",
            "flows.cli",
            "nightly",
            "--params",
            str(self.params),
            "--approval",
            "auto",
            "--workdir",
            str(self.work),
            "--registry-uri",
            self.registry_uri,
            *extra,
        ]
        return processes.run(
            command,
            cwd=self.root,
            env=cli_env(FAKE_CREDENTIALS, self.fixture("prefect_server")),
            capture_output=True,
            text=True,
            timeout=300,
        )


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    from tasks.params_file import _deep_merge

    return _deep_merge(base, extra)


# ---- the cases ------------------------------------------------------------------------------

# Each case edits the workspace and returns extra CLI arguments.
Build = Callable[[Workspace], list[str]]
CASES: list[Any] = []


def case(*culprits: str, before: str = "any-work") -> Callable[[Build], Build]:
    """Register a case: the error line must contain every culprit. `before`: where the run must
    stop at the latest: "any-work" (no file written under the workdir), "prepare" (no prepared
    data) or "compression" (no variant built)."""

    def register(build: Build) -> Build:
        CASES.append(pytest.param(build, culprits, before, id=build.__name__.replace("_", "-")))
        return build

    return register


@case("inputs/model.pt2", "not a readable torch.export .pt2 file", before="compression")
def truncated_pt2(ws: Workspace) -> list[str]:
    model = ws.root / "inputs" / "model.pt2"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    ws.write_params()
    return []


@case("inputs/model.pt2", "output has shape (2, 5)", "expected (2, 10)", before="compression")
def pt2_wrong_number_of_outputs(ws: Workspace) -> list[str]:
    _save_pt2(_linear_model(logits=5), ws.root / "inputs" / "model.pt2")
    ws.write_params()
    return []


@case("inputs/model.pt2", "rejects input of shape (1, 16, 16)", before="compression")
def pt2_input_size_mismatch(ws: Workspace) -> list[str]:
    _save_pt2(_linear_model(in_pixels=8 * 8), ws.root / "inputs" / "model.pt2", (1, 1, 8, 8))
    ws.write_params()
    return []


def _float_data_with(value: float) -> tuple[np.ndarray, np.ndarray]:
    x, y = _good_data()
    pixels = x.astype(np.float32) / 255.0
    pixels[3, 0, 4, 4] = value
    pixels[7, 0, 5, 5] = value
    return pixels, y


@case("inputs/data.npz", "2 NaN/Inf pixel value(s)")
def nan_pixels(ws: Workspace) -> list[str]:
    ws.write_data(*_float_data_with(np.nan))
    ws.write_params()
    return []


@case("inputs/data.npz", "2 NaN/Inf pixel value(s)")
def inf_pixels(ws: Workspace) -> list[str]:
    ws.write_data(*_float_data_with(np.inf))
    ws.write_params()
    return []


@case("inputs/data.npz", "labels span [0, 12]", "data.num_classes=10")
def labels_out_of_range(ws: Workspace) -> list[str]:
    x, y = _good_data()
    y[5] = 12
    ws.write_data(x, y)
    ws.write_params()
    return []


@case("inputs/data.npz", "only 1 class present")
def single_class(ws: Workspace) -> list[str]:
    x, y = _good_data()
    ws.write_data(x, np.zeros_like(y))
    ws.write_params()
    return []


@case("data.splits.calib", "split is empty")
def empty_split(ws: Workspace) -> list[str]:
    ws.write_data(*_good_data(per_class=3, classes=2))  # 3 per class: calib (10%) gets none
    splits = {"train": 0.6, "calib": 0.1, "val": 0.1, "test": 0.2}
    ws.write_params({"data": {"num_classes": 2, "splits": splits}})
    return []


@case("params.yaml", "data.colour: unknown key")
def unknown_params_key(ws: Workspace) -> list[str]:
    ws.write_params({"data": {"colour": "grey"}})
    return []


@case("params.yaml", "train.epochs", "'ten'")
def wrong_type(ws: Workspace) -> list[str]:
    ws.write_params({"train": {"epochs": "ten"}})
    return []


@case("gates.defaults.max_accuracy_drop", "greater than or equal to 0", "-1")
def negative_threshold(ws: Workspace) -> list[str]:
    ws.write_params({"gates": {"defaults": {"max_accuracy_drop": -1}}})
    return []


@case("variants.magic", "unknown technique 'sorcery'")
def unknown_technique(ws: Workspace) -> list[str]:
    ws.write_params(
        edit=lambda raw: raw["variants"].update(
            magic={"technique": "sorcery", "source": "baseline"}
        )
    )
    return []


@case("registry.model_name", "'digits/evil'")
def model_name_with_slash(ws: Workspace) -> list[str]:
    ws.write_params({"registry": {"model_name": "digits/evil"}})
    return []


@case("registry.model_name", "'digits..evil'")
def model_name_with_dot_dot(ws: Workspace) -> list[str]:
    ws.write_params({"registry": {"model_name": "digits..evil"}})
    return []


@case("registry.model_name", r"'digits\x07evil'")
def model_name_with_control_char(ws: Workspace) -> list[str]:
    ws.write_params({"registry": {"model_name": "digits\x07evil"}})
    return []


@case("version name '1/2'")
def version_with_slash(ws: Workspace) -> list[str]:
    ws.write_params()
    return ["--version", "1/2"]


@case("version name '..'")
def version_dot_dot(ws: Workspace) -> list[str]:
    ws.write_params()
    return ["--version", ".."]


# data (at its good rev) is fetched before the model's rev is resolved: a complete file
@case("model_rev", "rev 'v9' does not exist", before="prepare")
def dvc_rev_that_does_not_exist(ws: Workspace) -> list[str]:
    repo = ws.fixture("dvc_repo")
    fetch = {"repo": str(repo), "model_path": "models/model.pt2", "data_path": "data/data.npz"}
    ws.write_params({"fetch": fetch})
    return ["--model-rev", "v9"]


@case("cannot reach the S3 endpoint http://127.0.0.1:", "bucket 'b'")
def unreachable_s3_endpoint(ws: Workspace) -> list[str]:
    ws.registry_uri = "s3://b/p"
    ws.write_params({"registry": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}"}})
    return []


@case("rejected the credentials", "bucket 'bad-inputs-auth'", "InvalidAccessKeyId")
def wrong_s3_credentials(ws: Workspace) -> list[str]:
    import boto3
    import moto.settings

    endpoint = ws.fixture("s3_endpoint")
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )
    s3.create_bucket(Bucket="bad-inputs-auth")
    # moto with authentication on: the fake key belongs to no IAM user, as a wrong key would
    ws.fixture("monkeypatch").setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    ws.registry_uri = "s3://bad-inputs-auth/registry"
    ws.write_params({"registry": {"endpoint_url": endpoint}})
    return []


@case("bucket 'no-such-bucket' does not exist")
def missing_bucket(ws: Workspace) -> list[str]:
    ws.registry_uri = "s3://no-such-bucket/registry"
    ws.write_params({"registry": {"endpoint_url": ws.fixture("s3_endpoint")}})
    return []


# ---- the matrix ----------------------------------------------------------------------------


def _leftovers(root: Path) -> list[str]:
    """Half-written files: the `.<name>.<random>.tmp` staging names every atomic writer uses."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(".*")
        if ".tmp" in p.name or ".fetch-" in p.name
    )


@pytest.mark.parametrize(("build", "culprits", "before"), CASES)
def test_bad_input_fails_in_one_line_and_leaves_nothing(
    build: Build,
    culprits: tuple[str, ...],
    before: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    prefect_server: str,
) -> None:
    ws = Workspace(tmp_path, request)
    extra = build(ws)
    done = ws.run(*extra)
    stderr = done.stderr

    assert done.returncode == EXIT_USER_ERROR, (done.returncode, stderr[-3000:])
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    for culprit in culprits:
        assert culprit in errors[0], (culprit, errors[0])
    # said once: Prefect's failure lines on the console must not repeat the error line
    assert stderr.count(errors[0].removeprefix("error: ")) == 1, stderr[-3000:]
    for secret in FAKE_CREDENTIALS.values():
        assert secret not in stderr + done.stdout
    assert "nightly:" not in done.stdout  # no result summary for a failed run

    # nothing published, nothing half-written, no work the error should have prevented
    assert not ws.registry.exists() or list(ws.registry.rglob("*")) == []
    assert _leftovers(tmp_path) == []
    assert not (ws.work / "variants").exists()
    if before in ("any-work", "prepare"):
        assert not (ws.work / "data").exists()
    if before == "any-work":
        written = [p for p in ws.work.rglob("*") if p.is_file()] if ws.work.exists() else []
        assert written == [], written


def test_thresholds_no_variant_can_meet_are_an_outcome_not_an_error(
    tmp_path: Path, request: pytest.FixtureRequest, prefect_server: str
) -> None:
    """min_accuracy 1.0: the run completes with status nothing-passed and publishes nothing.
    The CLI exits 0 for it (a night with nothing good enough is not a failed run); the status
    line says what happened. (A drop gate of 0 points is refused before any work instead: no
    test split can certify it; tests/unit/test_validate.py.)"""
    ws = Workspace(tmp_path, request)
    ws.write_params({"gates": {"defaults": {"min_accuracy": 1.0}}})

    done = ws.run("--version", "never")

    assert done.returncode == 0, done.stderr[-3000:]
    assert "nightly: nothing-passed — model bad-inputs" in done.stdout, done.stdout[-3000:]
    assert "published: nothing" in done.stdout
    assert "min_accuracy" in done.stdout  # each rejection names the failing gate
    assert "Traceback" not in done.stderr
    assert not ws.registry.exists() or list(ws.registry.rglob("*")) == []
    assert _leftovers(tmp_path) == []


def test_a_published_version_is_refused_before_any_work(
    tmp_path: Path, request: pytest.FixtureRequest, prefect_server: str
) -> None:
    """`--version N` for a published N: one line naming it, exit 2, nothing built or written
    (it used to fail only at publish time, after the whole pipeline)."""
    from tasks.registry import LocalRegistry
    from tests.unit.test_registry import make_entry, snapshot

    ws = Workspace(tmp_path, request)
    ws.write_params()
    LocalRegistry(ws.registry).publish(
        "bad-inputs", "7", {"pruned": make_entry(tmp_path / "old", "pruned", b"v7")}, {}
    )
    before = snapshot(ws.registry)

    done = ws.run("--version", "7")

    assert done.returncode == EXIT_USER_ERROR, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: version '7': bad-inputs 7 is already published"), lines
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    assert "Traceback" not in done.stderr and "nightly:" not in done.stdout
    assert snapshot(ws.registry) == before
    written = [p for p in ws.work.rglob("*") if p.is_file()] if ws.work.exists() else []
    assert written == [], written

"""Stage entry points on bad input: exit 2, one `error: ` line naming the culprit, no traceback,
and no output (nor hidden staging) directory left behind."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests import processes
from tests.helpers import REPO_ROOT, write_params

EXIT_USER_ERROR = 2
TRAIN_NORM = {"data": {"normalize": "train"}}  # an imported model states its normalisation


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _run(cwd: Path, module: str, *args: str) -> Run:
    done = processes.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def _assert_user_error(run: Run, *culprits: str) -> str:
    """Exit 2, exactly one non-empty stderr line `error: ...` naming every culprit, no traceback."""
    assert run.returncode == EXIT_USER_ERROR, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{run.stderr[-2000:]}"
    assert run.stderr.strip() == lines[0].strip()
    line = lines[0]
    assert line.startswith("error: "), line
    assert len(line) > len("error: ") + 5, line
    for culprit in culprits:
        assert culprit in line, (culprit, line)
    return line


def _assert_nothing_left(parent: Path, out_name: str) -> None:
    assert not (parent / out_name).exists(), f"{out_name} was created"
    staging = sorted(p.name for p in parent.glob(".*.tmp"))
    assert staging == [], f"staging left behind: {staging}"


# ---- prepare ----------------------------------------------------------------------------------


def _npz_params(tmp_path: Path, **data: object) -> None:
    write_params(tmp_path, {"data": {"source": "npz", "path": "inputs/bad.npz", **data}})


def _write_npz(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> None:
    (tmp_path / "inputs").mkdir()
    np.savez(tmp_path / "inputs" / "bad.npz", x=x, y=y)


def test_prepare_rejects_nan_pixels(tmp_path: Path) -> None:
    y = np.repeat(np.arange(3), 10)
    x = np.random.default_rng(0).random((len(y), 1, 16, 16), dtype=np.float32)
    x[4, 0, 2, 2] = np.nan
    x[7, 0, 3, 3] = np.nan
    _write_npz(tmp_path, x, y)
    _npz_params(tmp_path)
    run = _run(tmp_path, "tasks.stages.prepare", "--params", "params.yaml", "--out", "data")
    line = _assert_user_error(run, "inputs/bad.npz", "2 NaN/Inf pixel value(s)")
    assert run.stdout == ""
    assert line.startswith("error: inputs/bad.npz: ")
    _assert_nothing_left(tmp_path, "data")


@pytest.mark.parametrize(
    ("labels", "num_classes", "detail"),
    [
        (np.repeat(np.arange(4), 8), 3, "labels span [0, 3]; expected 0..2 (data.num_classes=3)"),
        (np.repeat(np.arange(-1, 3), 8), None, "labels span [-1, 2]"),
    ],
    ids=["above-num-classes", "negative"],
)
def test_prepare_rejects_labels_out_of_range(
    tmp_path: Path, labels: np.ndarray, num_classes: int | None, detail: str
) -> None:
    x = np.random.default_rng(0).integers(0, 256, (len(labels), 1, 12, 12), dtype=np.uint8)
    _write_npz(tmp_path, x, labels.astype(np.int64))
    _npz_params(tmp_path, num_classes=num_classes)
    run = _run(tmp_path, "tasks.stages.prepare", "--params", "params.yaml", "--out", "data")
    _assert_user_error(run, "bad.npz", detail)
    _assert_nothing_left(tmp_path, "data")


def test_prepare_rejects_a_bad_params_file(tmp_path: Path) -> None:
    write_params(tmp_path, {"data": {"sizee": 16}})
    run = _run(tmp_path, "tasks.stages.prepare", "--params", "params.yaml", "--out", "data")
    _assert_user_error(run, "data.sizee: unknown key")
    assert "params.yaml:" in run.stderr
    _assert_nothing_left(tmp_path, "data")


# ---- train ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny digits prepared once by the real prepare entry point."""
    root = tmp_path_factory.mktemp("cli_prepare")
    write_params(root)
    run = _run(root, "tasks.stages.prepare", "--params", "params.yaml", "--out", "data")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "prepare: digits → data" in run.stdout
    assert "10 classes" in run.stdout
    assert sorted(p.name for p in (root / "data").iterdir()) == [
        "calib.npz",
        "preprocess.json",
        "test.npz",
        "train.npz",
        "val.npz",
    ]
    assert [p.name for p in root.glob(".*.tmp")] == []
    return root / "data"


@pytest.fixture
def workspace(tmp_path: Path, prepared_data: Path) -> Path:
    shutil.copytree(prepared_data, tmp_path / "data")
    return tmp_path


def _train(workspace: Path) -> Run:
    return _run(
        workspace,
        "tasks.stages.train",
        "--params",
        "params.yaml",
        "--data",
        "data",
        "--out",
        "models/baseline",
    )


def _assert_no_model(workspace: Path) -> None:
    assert not (workspace / "models").exists(), list((workspace / "models").rglob("*"))
    _assert_nothing_left(workspace, "models")


def test_train_pt2_missing_file(workspace: Path) -> None:
    write_params(
        workspace, {"baseline": {"source": "pt2", "path": "inputs/model.pt2"}, **TRAIN_NORM}
    )
    run = _train(workspace)
    _assert_user_error(run, "inputs/model.pt2", "not found")
    _assert_no_model(workspace)


def _corrupt_pt2(workspace: Path) -> None:
    (workspace / "inputs").mkdir()
    (workspace / "inputs" / "model.pt2").write_bytes(np.random.default_rng(0).bytes(4096))
    write_params(
        workspace, {"baseline": {"source": "pt2", "path": "inputs/model.pt2"}, **TRAIN_NORM}
    )


def test_train_pt2_corrupt_file_exits_2_and_leaves_nothing(workspace: Path) -> None:
    _corrupt_pt2(workspace)
    run = _train(workspace)
    assert run.returncode == EXIT_USER_ERROR, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: inputs/model.pt2: not a readable torch.export .pt2 file"), last
    _assert_no_model(workspace)


def test_train_pt2_zip_that_is_no_program_names_the_cause(workspace: Path) -> None:
    """torch.export.load logs the cause and raises "check the warnings above": the one line
    must carry the cause itself, and no warning may leak to stderr."""
    import zipfile

    (workspace / "inputs").mkdir()
    with zipfile.ZipFile(workspace / "inputs" / "model.pt2", "w") as archive:
        archive.writestr("archive/data.pkl", b"not a program")
    write_params(
        workspace,
        {
            "data": {"normalize": "train"},
            "baseline": {"source": "pt2", "path": "inputs/model.pt2"},
        },
    )
    line = _assert_user_error(_train(workspace), "inputs/model.pt2", "not a readable")
    assert "warnings above" not in line, line
    assert "version" in line, line  # the archive lacks its version record
    assert "Could this error message be improved" not in line, line


def test_train_pt2_corrupt_file_prints_one_line(workspace: Path) -> None:
    _corrupt_pt2(workspace)
    _assert_user_error(_train(workspace), "inputs/model.pt2", "not a readable")


def test_train_pt2_with_wrong_number_of_logits(workspace: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 5)).eval()
    program = torch.export.export(model, (torch.zeros(1, 1, 16, 16),))
    (workspace / "inputs").mkdir()
    torch.export.save(program, str(workspace / "inputs" / "model.pt2"))
    write_params(
        workspace, {"baseline": {"source": "pt2", "path": "inputs/model.pt2"}, **TRAIN_NORM}
    )
    run = _train(workspace)
    _assert_user_error(
        run,
        "inputs/model.pt2",
        "output has shape (2, 5)",
        "expected (2, 10)",
        "one logit per class",
    )
    _assert_no_model(workspace)


def test_train_factory_with_mismatched_state_dict(workspace: Path) -> None:
    import torch
    from torch import nn

    (workspace / "inputs").mkdir()
    torch.save(nn.Linear(3, 3).state_dict(), workspace / "inputs" / "weights.pt")
    write_params(
        workspace,
        {
            "baseline": {
                "source": "factory",
                "factory": "tasks.models:resnet_cnn",
                "factory_kwargs": {"num_classes": 10, "in_channels": 1, "width": 8},
                "path": "inputs/weights.pt",
            },
            **TRAIN_NORM,
        },
    )
    run = _train(workspace)
    _assert_user_error(run, "inputs/weights.pt", "does not fit the factory's model")
    _assert_no_model(workspace)


def test_train_factory_that_cannot_be_imported(workspace: Path) -> None:
    (workspace / "inputs").mkdir()
    (workspace / "inputs" / "weights.pt").write_bytes(b"")
    write_params(
        workspace,
        {
            "baseline": {
                "source": "factory",
                "factory": "no_such_pkg.models:build",
                "path": "inputs/weights.pt",
            },
            **TRAIN_NORM,
        },
    )
    run = _train(workspace)
    _assert_user_error(run, "baseline.factory", "'no_such_pkg.models:build'")
    _assert_no_model(workspace)


# ---- compress and the modelpress command ------------------------------------------------------


def test_compress_unknown_variant(workspace: Path) -> None:
    write_params(workspace)
    run = _run(
        workspace,
        "tasks.stages.compress",
        "--params",
        "params.yaml",
        "--name",
        "nosuch",
        "--data",
        "data",
        "--baseline",
        "models/baseline",
        "--source",
        "variants/baseline",
        "--out",
        "variants/nosuch",
    )
    line = _assert_user_error(run, "variants.nosuch: unknown variant")
    # it lists what params.yaml does define
    for name in ("tflite_int8", "pruned", "distilled", "tensorrt_fp16", "distilled_int8"):
        assert name in line
    _assert_nothing_left(workspace / "variants", "nosuch")
    assert not (workspace / "variants").exists()


def _convert_int8(tiny_workspace: Path, out: Path, *extra: str) -> Run:
    return _run(
        tiny_workspace,
        "tasks.stages.compress",
        *("--params", "params.yaml", "--name", "tflite_int8", "--data", "data"),
        *("--baseline", "models/baseline", "--source", "variants/baseline"),
        *("--out", str(out), *extra),
    )


@pytest.mark.slow  # two LiteRT conversions in subprocesses (~20 s)
def test_conversion_prints_one_line_and_verbose_shows_tensorflow(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """TensorFlow lists every captured tensor ("Saved artifact ... TensorSpec", ~30 lines a
    model) while onnx2tf converts: quiet by default, shown with --verbose."""
    quiet = _convert_int8(tiny_workspace, tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "TensorSpec" not in quiet.stdout + quiet.stderr
    assert quiet.stdout.splitlines() == [
        f"compress: tflite_int8 [tflite_int8] ok → {tmp_path / 'quiet'}"
    ]

    verbose = _convert_int8(tiny_workspace, tmp_path / "verbose", "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "TensorSpec" in verbose.stderr
    assert "TensorSpec" not in verbose.stdout  # stdout stays the stage's result


def test_table_with_a_missing_metrics_file(tmp_path: Path) -> None:
    run = _run(tmp_path, "flows.cli", "table", "missing.json")
    _assert_user_error(run, "missing.json", "not found")
    assert run.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_nightly_refuses_a_bad_params_file_before_starting_prefect(tmp_path: Path) -> None:
    """A typo used to surface only after Prefect's temporary server had started (30-40 s on a
    new user's machine), and the error was not the last line printed."""
    params = tmp_path / "params.yaml"
    params.write_text(
        "variants:\n  int8:\n    technique: tflite_int8\n    source: baseline\n"
        "    calibraton_samples: 100\n"
    )
    run = _run(tmp_path, "flows.cli", "nightly", "--params", str(params), "--workdir", "w")
    line = _assert_user_error(run, "variants.int8.calibraton_samples")
    assert "unknown key" in line
    assert "temporary server" not in run.stdout + run.stderr
    assert not (tmp_path / "w").exists()


# ---- modelpress search: its flags -------------------------------------------------------------


def _search(tmp_path: Path, *args: str) -> Run:
    env = _env()
    env.pop("PREFECT_API_URL", None)
    done = processes.run(
        [sys.executable, "-m", "flows.cli", "search", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize(
    ("flag", "value"), [("--trials", "0"), ("--seconds", "0"), ("--trials", "-3")]
)
def test_a_search_budget_of_nothing_is_refused_not_replaced(
    tmp_path: Path, flag: str, value: str
) -> None:
    run = _search(tmp_path, flag, value)
    assert run.returncode == EXIT_USER_ERROR
    assert f"argument {flag}: '{value}': expected a number above 0" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_gate_is_blamed_on_the_flag_and_help_lists_the_gates(tmp_path: Path) -> None:
    run = _search(tmp_path, "--constraint", "max_acuracy_drop=0.5")
    assert run.returncode == EXIT_USER_ERROR
    assert "--constraint 'max_acuracy_drop=0.5': unknown gate 'max_acuracy_drop'" in run.stderr
    assert "params.yaml" not in run.stderr
    shown = _search(tmp_path, "--help")
    assert shown.returncode == 0
    flat = " ".join(shown.stdout.split())
    for gate in ("max_accuracy_drop", "max_worst_class_drop", "min_speedup", "max_slowdown"):
        assert gate in flat
    assert "--objective {p50,size,compressed_size}" in flat


def test_ui_approval_without_a_server_is_refused_before_any_work(tmp_path: Path) -> None:
    params = write_params(tmp_path)
    run = _search(tmp_path, "--params", str(params), "--approval", "ui", "--workdir", "w")
    line = _assert_user_error(run, "review.approval", "PREFECT_API_URL", "--approval auto")
    assert "temporary server" in line
    assert not (tmp_path / "w").exists()


# ---- the registry and table commands on bad input ----------------------------------------------


def _bad_registry(root: Path) -> Path:
    """A registry with a truncated manifest, an empty one, a bad decision record beside a good
    one, and a link to /etc."""
    registry = root / "reg"
    for version, body in (("1", "{bad"), ("2", "{}")):
        (registry / "m" / version).mkdir(parents=True)
        (registry / "m" / version / "manifest.json").write_text(body)
    decisions = registry / "m" / "decisions"
    decisions.mkdir()
    (decisions / "a.json").write_text("{bad")
    (decisions / "b.json").write_text(
        '{"outcome": "approved", "approved": ["int8"], "reviewer": "ann"}'
    )
    (decisions / "c.json").write_text(
        '{"outcome": "refused", "approved": [], "requested": ["pruned"], "reviewer": "carol",'
        ' "reason": "not on review.approvers"}'
    )
    (registry / "evil").symlink_to("/etc", target_is_directory=True)
    return registry


def test_registry_commands_list_what_is_bad_and_show_the_rest(tmp_path: Path) -> None:
    registry = str(_bad_registry(tmp_path))
    decisions = _run(tmp_path, "flows.cli", "registry", "decisions", "m", "--uri", registry)
    assert decisions.returncode == 0, decisions.stderr
    assert "a.json  bad: not a decision record" in decisions.stdout
    assert "approved  approved: int8" in decisions.stdout and "by ann" in decisions.stdout
    # a refusal says what the refused reviewer asked for
    assert "refused  approved: none" in decisions.stdout and "requested: pruned" in decisions.stdout
    listed = _run(tmp_path, "flows.cli", "registry", "list", "--uri", registry)
    assert (
        "m  0 version(s), none readable; 2 with a bad manifest (1, 2): run verify" in listed.stdout
    )
    shown = _run(tmp_path, "flows.cli", "registry", "show", "m", "--uri", registry)
    assert "1  (bad manifest:" in shown.stdout and "2  (bad manifest:" in shown.stdout
    verified = _run(tmp_path, "flows.cli", "registry", "verify", "--uri", registry)
    assert verified.returncode == 1
    assert "link  evil: a link (never followed)" in verified.stdout
    assert "PackageKit" not in verified.stdout and "orphaned  evil/" not in verified.stdout
    assert "2 bad-manifest" in verified.stdout
    assert verified.stdout.count("\n  bad-manifest  m/") == 2


def test_verify_without_a_registry_says_so(tmp_path: Path) -> None:
    run = _run(tmp_path, "flows.cli", "registry", "verify")
    _assert_user_error(run, "registry", "--uri")
    assert "OK" not in run.stdout


def test_an_endpoint_that_is_not_a_url_is_one_line(tmp_path: Path) -> None:
    run = _run(
        tmp_path, "flows.cli", "registry", "list", "--uri", "s3://b/p", "--endpoint-url", "nope"
    )
    _assert_user_error(run, "endpoint_url", "'nope'", "http(s) URL")


@pytest.mark.parametrize(
    ("body", "culprit"),
    [("{bad", "not readable as JSON"), ('{"a": 1}', "expected metrics/variants.json")],
)
def test_table_on_a_file_that_is_not_a_table_is_one_line(
    tmp_path: Path, body: str, culprit: str
) -> None:
    (tmp_path / "x.json").write_text(body)
    _assert_user_error(_run(tmp_path, "flows.cli", "table", "x.json"), "x.json", culprit)


def test_table_reads_a_nightlys_review(tmp_path: Path) -> None:
    rows = [
        {
            "variant": "int8",
            "runner": "edge-cpu",
            "accuracy": "0.98",
            "p50_ms": "0.26",
            "speed": "vs baseline: 3.2x faster (3.18-3.20)",
            "gate": "REJECTED",
            "reason": "drop",
        },
    ]
    (tmp_path / "review.json").write_text(__import__("json").dumps(rows))
    run = _run(tmp_path, "flows.cli", "table", "review.json")
    assert run.returncode == 0, run.stderr
    assert "p50_ms" in run.stdout and "3.2x faster" in run.stdout and "REJECTED" in run.stdout


# ---- failures found before any work ----------------------------------------------------------


def _nightly_auto(tmp_path: Path, *extra: str) -> Run:
    """`modelpress nightly` on the tiny params with auto-approval and `extra` flags."""
    params = write_params(tmp_path)
    return _run(
        tmp_path, "flows.cli", "nightly", "--params", str(params), "--approval", "auto", *extra
    )


def test_a_workdir_that_is_a_file_is_one_line_before_prefect(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    run = _nightly_auto(tmp_path, "--workdir", "afile")
    _assert_user_error(run, "--workdir afile: a file")
    assert "temporary server" not in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("address", "culprit"),
    [
        ("notaurl", "not a Dask scheduler address"),
        ("tcp://127.0.0.1:1", "no Dask scheduler answers"),
    ],
)
def test_a_dask_address_that_is_wrong_or_silent_is_one_line(
    tmp_path: Path, address: str, culprit: str
) -> None:
    run = _nightly_auto(tmp_path, "--workdir", "w", "--dask-address", address)
    _assert_user_error(run, culprit)
    assert not (tmp_path / "w").exists()


def test_a_registry_that_is_a_file_is_refused_before_the_pipeline(tmp_path: Path) -> None:
    from tasks.config import RegistryConfig
    from tasks.errors import RegistryError
    from tasks.publish import check_registry

    (tmp_path / "afile").write_text("x")
    with pytest.raises(RegistryError, match="a file; expected a directory"):
        check_registry(RegistryConfig(uri=str(tmp_path / "afile")), "m", None)
    with pytest.raises(RegistryError, match="is not a directory this user can write"):
        check_registry(RegistryConfig(uri=str(tmp_path / "afile" / "sub")), "m", None)
    assert check_registry(RegistryConfig(uri=str(tmp_path / "new" / "reg")), "m", None) is None


@pytest.mark.parametrize(
    ("source", "culprit"),
    [
        ("def build(:\n", "badnet.py:1: invalid syntax (importing 'badnet:build')"),
        ("import nonexistent_package_xyz\ndef build(): pass\n", "cannot import 'badnet:build'"),
        ("raise RuntimeError('at import')\n", "importing 'badnet' raised RuntimeError: at import"),
        (
            "def build():\n    raise RuntimeError('boom')\n",
            "badnet:build() raised RuntimeError: boom",
        ),
    ],
)
def test_a_factory_that_fails_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, culprit: str
) -> None:
    from tasks.errors import ModelError
    from tasks.models import build_from_factory

    (tmp_path / "badnet.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("badnet", None)
    with pytest.raises(ModelError) as error:
        build_from_factory("badnet:build", {})
    assert culprit in str(error.value) and "\n" not in str(error.value)
    sys.modules.pop("badnet", None)


def test_pull_under_a_regular_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file")
    registry = tmp_path / "reg"
    (registry / "m").mkdir(parents=True)
    run = _run(
        tmp_path,
        "flows.cli",
        "registry",
        "pull",
        "m",
        "1",
        "v",
        "plain/sub",
        "--uri",
        str(registry),
    )
    _assert_user_error(run, "plain is a file, not a directory")


@pytest.mark.parametrize(("given", "expected"), [(None, "120"), ("45", "45")])
def test_the_temporary_server_gets_time_to_start_on_a_busy_machine(
    tmp_path: Path, given: str | None, expected: str
) -> None:
    """Prefect gives a temporary server 20 s; a loaded 2-core machine needed more. The command
    line raises the default before Prefect reads its settings, and a value the user set stays."""
    env = {
        k: v for k, v in _env().items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    }
    if given is not None:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = given
    code = (
        "from flows import cli; cli._prefect_defaults(); "
        "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; "
        "print(s.value())"
    )
    done = processes.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == expected

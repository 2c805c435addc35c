"""Shared fixtures: tiny real data and tiny real models, built once per session; the settings
every test process needs before Prefect is imported. What tests import lives in tests/helpers.py."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Prefect reads its settings on import: keep its home, results and telemetry inside the test run.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="mp-prefect-home-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_PREFECT_HOME / "storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("PREFECT_API_URL", None)
# Prefect configures logging once, on import, binding its console handler to sys.stderr as it is
# then: first imported inside a capsys test, it would keep that test's stream, closed after it, and
# every later flow run fails logging to it (RecursionError). Import it under the session's capture.
import prefect.main  # noqa: E402, F401  (prefect itself imports lazily)

from tests.helpers import TINY_SPLITS, write_params  # noqa: E402  (after the settings above)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with prepared tiny data, a trained tiny baseline and its ONNX export: built
    once per session, by the first of the parallel test processes (pytest-xdist) to ask while the
    others wait on a lock, then copied, so that each process writes only into its own copy."""
    base = tmp_path_factory.getbasetemp()
    # pytest-xdist's processes share their base's parent (one per session); alone, its own base
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny-built"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / ".complete").exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            _build_tiny_workspace(shared)
            (shared / ".complete").touch()
    root = tmp_path_factory.mktemp("tiny")
    shutil.copytree(shared, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
    return root


def _build_tiny_workspace(root: Path) -> None:
    """Prepared tiny data, a trained tiny baseline and its ONNX export, in `root`."""
    from tasks.data import load_split, prepare, write_prepared
    from tasks.export import write_onnx_variant
    from tasks.io import read_json
    from tasks.params_file import load_params
    from tasks.train import load_baseline, make_baseline, save_baseline

    # the splits its tests were sized on (60% train): the repo's default gives test 40% so that
    # the drop gates can be certified, which fine-tuning tests here do not need
    params = load_params(write_params(root, {"data": {"splits": TINY_SPLITS}}))
    write_prepared(prepare(params.data, params.seed, root=root), root / "data")
    result = make_baseline(params.baseline, params.train, root / "data", params.seed, root=root)
    save_baseline(result, params.baseline, root / "models" / "baseline", root=root)
    from tasks.data import load_preprocess

    preprocess = load_preprocess(root / "data")
    model = load_baseline(root / "models" / "baseline")
    test_x = preprocess.normalize(load_split(root / "data", "test").x)
    sha = read_json(root / "models" / "baseline" / "baseline.json")["sha256"]
    write_onnx_variant(
        model,
        preprocess,
        test_x,
        root / "variants" / "baseline",
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256=sha,
    )


@pytest.fixture(autouse=True)
def _converter_log_as_it_was() -> Iterator[None]:
    """An entry point run in-process with --verbose turns the converter logger's propagation
    off and gives it a handler for good: the next test's caplog would never see its lines."""
    from tasks.quiet import LOGGER

    handlers, level, propagate = list(LOGGER.handlers), LOGGER.level, LOGGER.propagate
    yield
    LOGGER.handlers, LOGGER.level, LOGGER.propagate = handlers, level, propagate


def pytest_unconfigure(config: pytest.Config) -> None:
    """This process's Prefect home (its database and results) goes with it."""
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)

"""dvc.yaml's stages depend on every file of ModelPress's code that decides their result: the
modules doing the stage's work and every module they import, directly or through another
(tasks/code_closure.py, the rule the Prefect flow's cache keys follow too), the stage's entry
point, and tasks/config.py (the sections' defaults; the values themselves are the stage's
`params:`). A module a stage needs and does not list would leave `dvc repro` serving a stale
result after that module changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.code_closure import import_closure, source_file
from tasks.runtimes import RUNTIME_MODULES
from tasks.techniques import technique_table

ROOT = Path(__file__).resolve().parents[2]
WORK = {  # dvc.yaml stage: the modules doing its work (below its entry point)
    "prepare": ("tasks.data", "tasks.idx"),
    "train": ("tasks.train", "tasks.models"),
    "export": ("tasks.export",),
    "evaluate": ("tasks.evaluate", *RUNTIME_MODULES),
    "report": ("tasks.report",),
}


def needed(stage: str) -> list[str]:
    """The files of ModelPress's code that `stage`'s deps must cover."""
    if stage == "compress":
        work = ("tasks.compress", *(m for t in technique_table().values() for m in t.modules))
    else:
        work = WORK[stage]
    entry = () if stage == "report" else (f"tasks.stages.{stage}",)
    modules = {*import_closure(*work), *entry, "tasks.config"}
    return sorted(str(source_file(m).relative_to(ROOT)) for m in modules)  # type: ignore[union-attr]


def stage_deps(stage: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    return list((spec.get("do") or spec)["deps"])


def uncovered(deps: list[str], files: list[str]) -> list[str]:
    return [f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]


@pytest.mark.parametrize("stage", [*sorted(WORK), "compress"])
def test_a_stage_depends_on_all_the_code_that_decides_its_result(stage: str) -> None:
    assert uncovered(stage_deps(stage), needed(stage)) == []


def test_the_closure_is_followed_and_a_missing_file_is_seen() -> None:
    compress = needed("compress")
    # a technique's helpers one import away: tflite_int8's float fallback is chosen by
    # tasks.statistics, and onnx_int8 calibrates through the ONNX Runtime module
    assert "tasks/statistics.py" in compress and "tasks/runtimes/onnxruntime.py" in compress
    assert uncovered(["tasks/data.py"], needed("prepare")) != []
    # the entry point's params loading is not the stage's work: editing a technique's module
    # does not rerun prepare
    assert not [
        f for f in needed("prepare") if f.startswith(("tasks/techniques", "tasks/technique."))
    ]

"""workspace: where a study tool finds the data and variants a pipeline run left.

Two layouts: `dvc repro`'s (`data/`, `variants/<name>/` in the checkout) and the nightly's
(`.modelpress/`, content-keyed folders; each run writes `runs/<time>/workspace.json` naming the
ones it used). `python -m tasks.sensitivity` and `tasks.calibration_study` take whichever exists,
so they work right after `make run` as well as after `dvc repro`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import DataError
from tasks.io import read_json, write_json

POINTER = "workspace.json"


@dataclass(frozen=True)
class StudyInputs:
    params_file: Path
    data_dir: Path
    variant_dirs: dict[str, Path]  # variant name → its directory
    out_dir: Path  # where a study writes its files


def write_pointer(run_dir: Path, params_file: Path, data_dir: str, dirs: dict[str, str]) -> None:
    """What this nightly run used, for the study tools (paths only: nothing is copied)."""
    write_json(
        run_dir / POINTER,
        {"params_file": str(params_file), "data_dir": data_dir, "variants": dirs},
    )


def study_inputs(
    params_file: Path | None, data_dir: Path | None, variants_dir: Path | None, workdir: Path
) -> StudyInputs:
    """Explicit --data/--variants win; else `data/` and `variants/` where `dvc repro` left them;
    else the newest nightly run in `workdir`. Nothing found: one line saying what was looked for."""
    if data_dir is not None or variants_dir is not None or (Path("data") / "calib.npz").exists():
        data = data_dir or Path("data")
        variants = variants_dir or Path("variants")
        found = {p.name: p for p in variants.iterdir() if p.is_dir()} if variants.is_dir() else {}
        return StudyInputs(params_file or Path("params.yaml"), data, found, variants)
    pointer = _newest_pointer(workdir)
    if pointer is None:
        raise DataError(
            f"no prepared data: neither data/calib.npz (dvc repro) nor a nightly run in "
            f"{workdir}/runs (make run); run one of them first, or pass --data and --variants"
        )
    recorded: dict[str, Any] = read_json(pointer)
    return StudyInputs(
        params_file or Path(recorded["params_file"]),
        Path(recorded["data_dir"]),
        {name: Path(path) for name, path in recorded["variants"].items()},
        pointer.parent,
    )


def _newest_pointer(workdir: Path) -> Path | None:
    runs = workdir / "runs"
    pointers = [p for p in runs.glob(f"*/{POINTER}")] if runs.is_dir() else []
    return max(pointers, key=lambda p: p.stat().st_mtime, default=None)

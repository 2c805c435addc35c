"""The runtimes a variant runs in, one module each, and the one table the rest of ModelPress reads.

Each module (onnxruntime, litert, openvino, tensorrt) declares its `RUNTIME`: name, registry
format, model file (and the files beside it), pip packages and the extra that installs them,
whether the slim edge install runs it, which runner kinds measure it, and how to load a variant
directory. The evaluator, the benchmark harness, the registry's formats and the
edge install's check are derived from RUNTIMES; adding a runtime is one module plus a line below.
Importing this package imports no runtime library: each loads its own on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.errors import ModelError, brief
from tasks.runtimes import base, litert, onnxruntime, openvino, tensorrt
from tasks.runtimes.base import LoadedModel, Predictor, Runtime, normalize
from tasks.variant import RECORD_NAME, model_path, read_record

if TYPE_CHECKING:
    from tasks.config import RunnerProfile

__all__ = [
    "EDGE_RUNTIMES",
    "FORMATS",
    "FORMAT_BY_RUNTIME",
    "RUNTIMES",
    "RUNTIME_MODULES",
    "RUNTIME_PACKAGES",
    "LoadedModel",
    "Predictor",
    "Runtime",
    "load_predictor",
    "normalize",
    "runs_on",
    "runtime_named",
]

RUNTIMES: dict[str, Runtime] = {
    runtime.name: runtime
    for runtime in (onnxruntime.RUNTIME, litert.RUNTIME, openvino.RUNTIME, tensorrt.RUNTIME)
}
FORMATS = tuple(runtime.format for runtime in RUNTIMES.values())  # what the registry accepts
FORMAT_BY_RUNTIME = {name: runtime.format for name, runtime in RUNTIMES.items()}
EDGE_RUNTIMES = tuple(name for name, runtime in RUNTIMES.items() if runtime.edge)
# reported with every benchmark row: numpy and each runtime's own package (not its helpers)
RUNTIME_PACKAGES = ("numpy", *(runtime.packages[0] for runtime in RUNTIMES.values()))
# the source that decides what a variant's logits are: part of the evaluation's cache key
RUNTIME_MODULES = (__name__, base.__name__, *(r.load.__module__ for r in RUNTIMES.values()))


def runtime_named(name: str | None, where: object) -> Runtime:
    """The table's entry for `name`; a one-line error naming `where` and the known runtimes."""
    if name is None or name not in RUNTIMES:
        raise ModelError(
            f"{where}: runtime {name!r} is not known; expected one of {', '.join(RUNTIMES)}"
        )
    return RUNTIMES[name]


def load_predictor(variant_dir: Path, threads: int = 1) -> LoadedModel:
    """Load the variant in its own runtime (the one its variant.json names)."""
    record = read_record(variant_dir)
    if record.status != "ok":
        raise ModelError(
            f"{variant_dir}: variant '{record.name}' is {record.status}: {record.reason}"
        )
    runtime = runtime_named(record.runtime, Path(variant_dir) / RECORD_NAME)
    path = model_path(variant_dir, record)
    for needed in (path, *(path.parent / name for name in runtime.companion_files)):
        if not needed.exists():
            raise ModelError(f"{needed}: model file missing from the variant directory")
    try:
        return runtime.load(path, record, threads)
    # a runner whose install lacks this runtime (OpenVINO where only `[edge]` is installed)
    except ImportError as exc:
        raise ModelError(
            f"{path}: runtime {runtime.name!r} is not installed on this machine "
            f"({brief(exc)}); {runtime.install_hint}"
        ) from None


def runs_on(runtime: str | None, profile: RunnerProfile) -> bool:
    """Whether a runner of this profile's kind measures variants of `runtime` (CPU runners:
    ONNX Runtime, LiteRT and OpenVINO; CUDA runners: TensorRT engines)."""
    declared = RUNTIMES.get(runtime or "")
    return declared is not None and profile.kind in declared.runner_kinds

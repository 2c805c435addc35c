"""The variant artifact contract: a directory with the model file(s) and variant.json, nothing else."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.data import Preprocess
from tasks.errors import ModelError, VariantError
from tasks.io import read_json, sha256_file, write_json

Status = Literal["ok", "skipped", "failed"]
Runtime = Literal["onnxruntime", "litert", "openvino", "tensorrt"]
RECORD_NAME = "variant.json"
# a torch-producing variant's module, for the variants built from it: a build input, never
# published (a pickle is code; a registry consumer gets the deployable model and its record)
TORCH_FILE = "model_torch.pt"
BASELINE = "baseline"  # the fp32 reference variant every other one is compared with
EVALUATION_SPLIT = "test"  # the split tasks.evaluate measures every variant's accuracy on
SELECTION_SPLIT = (
    "val"  # the split a search ranks its trials on (its pick is then confirmed on test)
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | None]
    dtype: str  # float32 | int8
    layout: str | None = None  # NCHW | NHWC for image inputs
    quantization: dict[str, float] | None = None  # {"scale": s, "zero_point": z} for int8


@dataclass(frozen=True)
class VariantRecord:
    name: str
    technique: str  # baseline, or a technique of tasks.techniques (tflite_int8, onnx_int8, ...)
    status: Status
    source: str | None = None
    reason: str | None = None
    runtime: Runtime | None = None
    model_file: str | None = None
    input: TensorSpec | None = None
    output: TensorSpec | None = None
    preprocess: dict[str, Any] | None = None  # mean/std/size/resize/channels, class names
    data: dict[str, Any] | None = None  # the data it was built from and is evaluated on
    settings: dict[str, Any] = field(default_factory=dict)
    macs: int | None = None
    params: int | None = None
    parent_sha256: str | None = None  # the model file this variant was made from
    baseline_sha256: str | None = None
    model_sha256: str | None = None  # model_digest of the model file(s)
    extra: dict[str, Any] = field(default_factory=dict)


def write_record(directory: Path, record: VariantRecord) -> None:
    write_json(Path(directory) / RECORD_NAME, asdict(record))


def read_record(directory: Path) -> VariantRecord:
    path = Path(directory) / RECORD_NAME
    if not path.exists():
        raise ModelError(f"{path}: not found; is {directory} a variant directory?")
    raw = read_json(path)
    for key in ("input", "output"):
        if raw.get(key) is not None:
            raw[key] = TensorSpec(**raw[key])
    return VariantRecord(**raw)


def model_path(directory: Path, record: VariantRecord) -> Path:
    if record.model_file is None:
        raise ModelError(
            f"{directory}: variant '{record.name}' has no model file ({record.status})"
        )
    return Path(directory) / record.model_file


def onnx_source(name: str, source_dir: Path) -> tuple[VariantRecord, Path]:
    """The record and ONNX file of the variant `name` starts from; a one-line VariantError
    unless that variant is an ONNX model with its input recorded."""
    source = read_record(source_dir)
    if source.runtime != "onnxruntime":
        raise VariantError(
            f"{name}: source '{source.name}' is {source.runtime}, expected an ONNX model"
        )
    if source.input is None:  # an ok ONNX variant always records its input
        raise VariantError(f"{name}: source '{source.name}' records no input tensor")
    return source, model_path(source_dir, source)


def save_torch_model(directory: Path, model: Any) -> str | None:
    """Save the whole module (a pruned or factorized net has no factory that rebuilds its shapes);
    None where it cannot be pickled (torch.fx programs of imported .pt2 models): variants that
    start from this one then say their source has no torch model."""
    import torch

    path = Path(directory) / TORCH_FILE
    try:
        torch.save(model, path)
    except Exception:  # torch.fx GraphModules with some globals cannot be pickled
        path.unlink(missing_ok=True)
        return None
    return TORCH_FILE


def load_torch_model(directory: Path, record: VariantRecord) -> Any:
    """The torch module a torch-producing variant saved (None where it saved none)."""
    import torch

    name = record.extra.get("torch_file")
    if not name:
        return None
    path = Path(directory) / str(name)
    if not path.exists():
        raise ModelError(f"{path}: not found; variant '{record.name}' names it as its torch model")
    # our own pipeline's artifact: a pickled module (its classes are importable here)
    return torch.load(path, weights_only=False).eval()


def carried_from(source: VariantRecord) -> dict[str, Any]:
    """What a variant built from `source` records of it: its name, its MACs/params (a conversion
    does not change the network), and the parent and baseline checksums (a source without a
    baseline_sha256 is the baseline itself)."""
    return {
        "source": source.name,
        "macs": source.macs,
        "params": source.params,
        "parent_sha256": source.model_sha256,
        "baseline_sha256": source.baseline_sha256 or source.model_sha256,
    }


def model_digest(directory: Path, model_file: str) -> str:
    """The identity of a variant's model: the model file's sha256 when it is alone; for a model
    in several files (an OpenVINO IR's model.xml + model.bin), sha256 over each file's name and
    sha256, so weights that change under an unchanged graph change the digest (the evaluation's
    cache key and the artifact store's address are made of it)."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != RECORD_NAME)
    if [p.name for p in files] == [model_file]:
        return sha256_file(directory / model_file)
    if not (directory / model_file).is_file():
        raise ModelError(f"{directory / model_file}: model file missing from the variant directory")
    listing = "".join(f"{p.name}\0{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def finished_record(directory: Path, record: VariantRecord, **changes: Any) -> VariantRecord:
    """Fill in the model's checksum once its file(s) are in `directory`."""
    values = asdict(record) | changes
    for key in ("input", "output"):
        if isinstance(values[key], dict):
            values[key] = TensorSpec(**values[key])
    if values["model_file"]:
        values["model_sha256"] = model_digest(Path(directory), values["model_file"])
    return VariantRecord(**values)


def record_built(
    staging: Path,
    *,
    name: str,
    settings: dict[str, Any],
    source: VariantRecord,
    preprocess: Preprocess,
    runtime: Runtime | None,
    model_file: str | None,
    extra: dict[str, Any],
    tensors: tuple[TensorSpec, TensorSpec] | None = None,
    reason: str | None = None,
) -> VariantRecord:
    """Write the record of a variant a technique built into `staging`, and return it.

    The technique gives only its own work: the runtime and model file it made, its facts
    (`extra`), and its tensors where they differ from its source's (a LiteRT model's int8
    input). What every variant records comes from here: its source's lineage and tensors, the
    data, the preprocessing, the settings (whose `technique` names it) and the model's checksum.
    `reason` without a model file records the variant as skipped with why (a runtime missing
    here, a CUDA runner needed)."""
    skipped = model_file is None
    inputs, outputs = tensors or (source.input, source.output)
    record = VariantRecord(
        name=name,
        technique=str(settings["technique"]),
        status="skipped" if skipped else "ok",
        reason=reason,
        runtime=runtime,
        model_file=model_file,
        input=None if skipped else inputs,
        output=None if skipped else outputs,
        preprocess=preprocess_fields(preprocess),
        data=data_fields(preprocess),
        settings=settings,
        **carried_from(source),
        extra=extra,
    )
    if not skipped:
        record = finished_record(staging, record)
    write_record(staging, record)
    return record


def preprocess_fields(preprocess: Preprocess) -> dict[str, Any]:
    """What a consumer needs to turn an image into this variant's input and read its output."""
    return {
        "image_size": preprocess.image_size,
        "resize": preprocess.resize,
        "channels": preprocess.channels,
        "channel_order": preprocess.channel_order,
        "pixel_range": list(preprocess.pixel_range),
        "mean": preprocess.mean,
        "std": preprocess.std,
        "num_classes": preprocess.num_classes,
        "class_names": preprocess.class_names,
    }


def data_fields(preprocess: Preprocess) -> dict[str, Any]:
    """The data behind a variant: source, sha256 of a local source, split sizes, and the split
    its accuracy is measured on."""
    return {
        "source": preprocess.data_source,
        "sha256": preprocess.data_sha256,
        "split_sizes": preprocess.split_sizes,
        "evaluation": {
            "split": EVALUATION_SPLIT,
            "samples": preprocess.split_sizes.get(EVALUATION_SPLIT),
        },
    }


def preprocess_from_record(record: VariantRecord) -> Preprocess:
    """The Preprocess a variant was built with, back from its variant.json (e.g. on a runner
    that builds from it without the prepared data)."""
    spec, data = record.preprocess or {}, record.data or {}
    kept = {k: v for k, v in spec.items() if k in Preprocess.__dataclass_fields__}
    kept["pixel_range"] = tuple(kept.get("pixel_range", (0.0, 1.0)))
    return Preprocess(
        **kept,
        data_source=data.get("source", "digits"),
        data_sha256=data.get("sha256"),
        split_sizes=data.get("split_sizes", {}),
    )


def published_files(directory: Path) -> dict[str, dict[str, Any]]:
    """The files of a variant directory the registry publishes: {relative path: sha256,
    size_bytes}, every file but the build-only torch module."""
    from tasks.io import file_checksums

    return {rel: meta for rel, meta in file_checksums(directory).items() if rel != TORCH_FILE}

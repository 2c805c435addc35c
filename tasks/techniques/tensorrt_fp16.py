"""tensorrt_fp16: an fp16 TensorRT engine built from the ONNX model, where TensorRT and CUDA exist.

Engines are specific to the GPU and TensorRT version that built them, so they are built on the
runner that will use them. Where that is impossible the variant is recorded as skipped, and the
model's accuracy computed in fp16 on the CPU (torch half) is still reported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.errors import VariantError, brief
from tasks.io import atomic_dir
from tasks.runtimes.tensorrt import RUNTIME as TENSORRT
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import (
    VariantRecord,
    model_path,
    read_record,
    record_built,
)

if TYPE_CHECKING:
    from torch import nn

ENGINE_FILE = TENSORRT.model_file
NEEDS_RUNNER = "needs a CUDA runner with TensorRT"
BUILD_ON = "cuda"  # the runner kind that builds the engine where it runs


class TensorrtFp16Config(TechniqueConfig):
    technique: Literal["tensorrt_fp16"]
    workspace_mb: PositiveInt = 1024
    max_batch: PositiveInt = 64


def build(context: BuildContext, config: TensorrtFp16Config) -> VariantRecord:
    """The engine where TensorRT and CUDA exist, else a skipped record; the CPU fp16 accuracy
    wherever the baseline torch model and the test split are at hand."""
    teacher = context.teacher() if config.source == "baseline" else None
    test = context.split("test") if context.data_dir is not None else None
    return build_engine_variant(
        context.name,
        config,
        context.source_dir,
        teacher,
        test,
        context.preprocess(),
        context.out_dir,
    )


@dataclass(frozen=True)
class BuildFacts:
    gpu_name: str
    compute_capability: str
    tensorrt_version: str


def tensorrt_unavailable_reason() -> str | None:
    """Why an engine cannot be built here, or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"{NEEDS_RUNNER} (the tensorrt package is not installed here)"
    import torch

    if not torch.cuda.is_available():
        return f"{NEEDS_RUNNER} (no CUDA device is visible)"
    return None


def cpu_fp16_accuracy(model: nn.Module, test: Split, preprocess: Preprocess) -> float:
    """Accuracy with weights and activations in fp16, computed on the CPU with torch half."""
    import copy

    import torch

    from tasks.train import accuracy

    half = copy.deepcopy(model).eval().half()
    x = torch.from_numpy(preprocess.normalize(test.x)).half()
    with torch.no_grad():
        logits = torch.cat([half(chunk) for chunk in x.split(128)]).float().numpy()
    return accuracy(logits, test.y)


def build_engine_variant(
    name: str,
    cfg: TensorrtFp16Config,
    source_dir: Path,
    teacher: nn.Module | None,
    test: Split | None,
    preprocess: Preprocess,
    out_dir: Path,
) -> VariantRecord:
    """Build the engine if possible; always record the CPU fp16 accuracy where the torch model exists."""
    source = read_record(source_dir)
    fp16_acc = (
        cpu_fp16_accuracy(teacher, test, preprocess)
        if teacher is not None and test is not None
        else None
    )
    extra: dict[str, Any] = {"cpu_fp16_accuracy": fp16_acc}
    reason = tensorrt_unavailable_reason()
    with atomic_dir(out_dir) as staging:
        made: dict[str, Any] = {"runtime": None, "model_file": None, "reason": reason}
        if reason is None:
            facts = build_engine(
                model_path(source_dir, source), staging / ENGINE_FILE, cfg, preprocess
            )
            made = {"runtime": "tensorrt", "model_file": ENGINE_FILE}
            extra |= {"build": asdict(facts)}
        return record_built(
            staging,
            name=name,
            settings=cfg.model_dump(),
            source=source,
            preprocess=preprocess,
            extra=extra,
            **made,
        )


def build_engine(
    onnx_file: Path, engine_file: Path, cfg: TensorrtFp16Config, preprocess: Preprocess
) -> BuildFacts:
    """Parse the ONNX file and serialise an fp16 engine with a dynamic batch profile."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_file.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VariantError(
            f"tensorrt_fp16: TensorRT cannot parse {onnx_file.name} ({brief(errors)})"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    if not builder.platform_has_fast_fp16:
        raise VariantError("tensorrt_fp16: this GPU has no fast fp16 path")
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    chw = preprocess.input_shape
    input_name = network.get_input(0).name
    profile.set_shape(input_name, (1, *chw), (min(8, cfg.max_batch), *chw), (cfg.max_batch, *chw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VariantError("tensorrt_fp16: TensorRT failed to build the engine (see its log above)")
    engine_file.write_bytes(bytes(serialized))
    major, minor = torch.cuda.get_device_capability()
    return BuildFacts(torch.cuda.get_device_name(), f"{major}.{minor}", trt.__version__)


TECHNIQUE = Technique(
    name="tensorrt_fp16",
    config=TensorrtFp16Config,
    starts_from="onnx",
    runtime="tensorrt",
    produces_onnx=False,
    build=build,
    build_on=BUILD_ON,
)

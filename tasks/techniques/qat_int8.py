"""qat_int8: quantization-aware fine-tuning in torch, then a full-integer LiteRT int8 model.

Route: torch FX QAT (`prepare_qat_fx`) with fake-quantization that mirrors LiteRT's int8 scheme —
per-output-channel symmetric int8 weights on the narrow range [-127, 127] (what the TFLite
converter writes), per-tensor asymmetric 8-bit activations (quint8 [0, 255] is the same grid as
LiteRT's int8 [-128, 127] shifted by 128), batch norm folded into the convolutions while training
(FX fuses conv+bn(+relu) into QAT modules that fake-quantize the folded weight). After fine-tuning,
batch-norm statistics and observers frozen for the last epochs, each QAT module becomes a plain
float conv/linear with the folded weights it was trained with (`to_float`), the fake-quant nodes
are dropped, and that float network goes through tflite_int8's own ONNX → onnx2tf full-integer
path, calibrated on the calib split. The converter then quantizes weights the network learned to
be robust to, on the same grid the fake-quantization used (per-channel max-abs).

Not the other routes: PT2E QAT (`prepare_qat_pt2e`, XNNPACKQuantizer) left torch.ao before torch
2.13 and torchao is not installed; `litert-torch` does not resolve with torch 2.13. A QDQ ONNX
export (route b) was not tried: onnx2tf's full-integer output is calibrated by the TF converter on
the calib split, so keeping the trained activation ranges would need a converter that reads
QDQ, which this stack does not have; here the converter re-calibrates activations (the QAT
observers were min/max on the same kind of data) and quantizes the QAT-trained weights.

torch is imported where it is used: the technique table is read where torch is not installed.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.errors import VariantError, brief
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.ao.quantization import QConfig


class QatInt8Config(TechniqueConfig):
    technique: Literal["qat_int8"]
    epochs: PositiveInt = 3
    lr: Annotated[float, Field(gt=0)] = 5e-4
    batch_size: PositiveInt = 64
    # from this epoch on, batch norm uses its running statistics (the folded weights stop moving
    # with each batch's statistics, as they will not move in the int8 model)
    freeze_bn_after: Annotated[int, Field(ge=0)] = 2
    # from this epoch on, activation ranges stay fixed (the last epochs adapt to fixed ranges)
    freeze_observers_after: Annotated[int, Field(ge=0)] = 2
    int8_io: bool = True
    calibration_samples: PositiveInt = 200

    @model_validator(mode="after")
    def _freezes_within_training(self) -> QatInt8Config:
        for knob in ("freeze_bn_after", "freeze_observers_after"):
            if getattr(self, knob) > self.epochs:
                raise ValueError(f"{knob} must be at most epochs ({self.epochs})")
        return self


def build(context: BuildContext, config: QatInt8Config) -> VariantRecord:
    """The baseline, fine-tuned with fake-quantization, as a full-integer LiteRT model.

    Built in a child process: torch.fx's symbolic trace (prepare_qat_fx) patches
    torch.nn.Module.__call__ for the whole process while it runs, and a variant training in
    another thread of the nightly then failed mid-forward ("module is not installed as a
    submodule"). A daemonic process (a Dask worker) may not have children; it runs one task at
    a time, so there the build runs in place.
    """
    import multiprocessing

    from tasks.child_process import in_child_process

    if multiprocessing.current_process().daemon:
        return _build_here(context, config)
    return in_child_process(f"{context.name}'s build", _build_here, context, config)


def _build_here(context: BuildContext, config: QatInt8Config) -> VariantRecord:
    # the source's torch model: the baseline's, or a pruned/clustered variant's (int8 after
    # pruning lost 1.7-3.7 points post-training on EfficientNet-Lite0, where the baseline's lost
    # 0.15: QAT of the pruned model is the search's escalation for it)
    source = context.source_record()
    model = context.editable_source_model("quantization-aware training")
    return qat_quantize(
        context.name,
        config,
        model,
        context.split("train"),
        context.split("val"),
        context.split("calib"),
        context.split("test"),
        context.preprocess(),
        context.baseline_sha256(),
        context.seed,
        context.out_dir,
        source=source.name if source.technique != "baseline" else "baseline",
        parent_sha256=source.model_sha256 if source.technique != "baseline" else None,
    )


def litert_qconfig() -> QConfig:
    """Fake-quantization on LiteRT's int8 grid (see the module docstring)."""
    import torch
    from torch.ao.quantization import FakeQuantize, QConfig
    from torch.ao.quantization.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )

    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
    )
    # averaging_constant=1: the current weights' max-abs, as the converter will take it
    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        averaging_constant=1.0,
        quant_min=-127,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        reduce_range=False,
    )
    return QConfig(activation=activation, weight=weight)


def prepare_qat(model: nn.Module, preprocess: Preprocess, name: str) -> torch.fx.GraphModule:
    """A copy of `model` with BN folded into fake-quantized conv/linear layers (VariantError with
    the reason when FX cannot trace it or finds nothing to quantize)."""
    import torch
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    from tasks.models import modularize

    model = copy.deepcopy(model)
    if isinstance(model, torch.fx.GraphModule):  # a user's .pt2 program: give it real layers
        model = modularize(model)
    example = (torch.zeros(1, *preprocess.input_shape),)
    try:
        with warnings.catch_warnings():
            # torch.ao.quantization warns it is deprecated; in 2.13 it is the QAT that ships
            warnings.simplefilter("ignore", DeprecationWarning)
            # Traced in eval mode, trained after: FX evaluates `if self.training` once, at trace
            # time. Traced in train mode, EfficientNet's drop-connect (stochastic depth) stayed
            # in the graph for good: the "eval" network dropped random blocks and its export
            # differed from itself by 5.4 logits. Dropout and batch-norm modules still follow
            # train()/eval() (they are layers in the graph, not branches).
            prepared = prepare_qat_fx(
                model.eval(), QConfigMapping().set_global(litert_qconfig()), example
            ).train()
    except Exception as exc:  # FX tracing fails with many types (control flow, proxies, ...)
        raise VariantError(
            f"{name}: QAT preparation cannot trace {type(model).__name__} with torch.fx "
            f"({brief(exc)})"
        ) from None
    if not _weighted_qat_modules(prepared):
        raise VariantError(
            f"{name}: QAT preparation found no Conv2d/Linear layer to quantize in "
            f"{type(model).__name__}"
        )
    return prepared


def to_float(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The QAT network as a float one: each QAT layer its float layer with BN folded (the weights
    it trained with), fake-quant nodes removed."""
    import torch
    from torch.ao.quantization import FakeQuantizeBase

    model = copy.deepcopy(prepared).eval()
    graph = model.graph
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = model.get_submodule(str(node.target))
        if isinstance(module, FakeQuantizeBase):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif hasattr(module, "weight_fake_quant") and hasattr(module, "to_float"):
            float_layer: nn.Module = module.to_float()  # type: ignore[operator]
            model.set_submodule(str(node.target), float_layer.eval())
    graph.eliminate_dead_code()
    return torch.fx.GraphModule(model, graph).eval()


def _weighted_qat_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "weight_fake_quant")]


def qat_finetune(
    prepared: torch.fx.GraphModule,
    cfg: QatInt8Config,
    train: Split,
    val: Split,
    preprocess: Preprocess,
    seed: int,
    label: str,
) -> None:
    """Fine-tune the fake-quantized network, freezing BN statistics and observers on schedule."""
    import torch
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer

    from tasks.train import FitSettings, fit

    steps_per_epoch = max(1, -(-len(train) // cfg.batch_size))
    steps = 0

    def apply_freezes() -> None:
        # step boundaries of the epochs fit() runs: the freeze holds from the next step on
        if cfg.freeze_bn_after and steps == cfg.freeze_bn_after * steps_per_epoch:
            prepared.apply(freeze_bn_stats)
        if cfg.freeze_observers_after and steps == cfg.freeze_observers_after * steps_per_epoch:
            prepared.apply(disable_observer)

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, _inputs: torch.Tensor) -> torch.Tensor:
        nonlocal steps
        steps += 1
        apply_freezes()
        return torch.nn.functional.cross_entropy(logits, labels)

    apply_freezes()  # a freeze at epoch 0
    if cfg.freeze_bn_after == 0:
        prepared.apply(freeze_bn_stats)
    if cfg.freeze_observers_after == 0:
        # observers need one look at real data before they stop
        with torch.no_grad():
            prepared.eval()(torch.from_numpy(preprocess.normalize(train.x[: cfg.batch_size])))
        prepared.apply(disable_observer)
    fit(
        prepared,
        train,
        val,
        preprocess,
        # its batch norms are frozen on schedule (freeze_bn_after), part of what QAT trains
        FitSettings(cfg.epochs, cfg.batch_size, cfg.lr, recalibrate_norms=False),
        seed,
        label,
        loss_fn=loss_fn,
    )


def qat_quantize(
    name: str,
    cfg: QatInt8Config,
    teacher: nn.Module,
    train: Split,
    val: Split,
    calib: Split,
    test: Split,
    preprocess: Preprocess,
    baseline_sha256: str | None,
    seed: int,
    out_dir: Path,
    source: str = "baseline",
    parent_sha256: str | None = None,
) -> VariantRecord:
    """QAT fine-tune a copy of `teacher` (the source's model: the baseline's or a variant's),
    then convert it with tflite_int8's full-integer path."""
    import shutil

    from tasks.export import write_onnx_variant
    from tasks.io import atomic_dir
    from tasks.models import count_macs_params
    from tasks.runtimes.litert import RUNTIME as LITERT
    from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize
    from tasks.variant import finished_record, write_record

    macs, params = count_macs_params(teacher, preprocess.input_shape)
    prepared = prepare_qat(teacher, preprocess, name)
    qat_finetune(prepared, cfg, train, val, preprocess, seed, name)
    folded = to_float(prepared)
    with tempfile.TemporaryDirectory(prefix="mp-qat-") as work:
        onnx_dir, tflite_dir = Path(work) / "onnx", Path(work) / "tflite"
        write_onnx_variant(
            folded,
            preprocess,
            preprocess.normalize(test.x),
            onnx_dir,
            name=f"{name}-float",
            technique="qat_int8",
            source=source,
            parent_sha256=parent_sha256 or baseline_sha256,
            baseline_sha256=baseline_sha256,
        )
        convert = TfliteInt8Config(
            technique="tflite_int8",
            source=f"{name}-float",
            int8_io=cfg.int8_io,
            calibration_samples=cfg.calibration_samples,
            per_channel=True,  # the grid the weights were fake-quantized on
        )
        converted = quantize(name, convert, onnx_dir, calib, preprocess, tflite_dir)
        with atomic_dir(out_dir) as staging:
            shutil.copyfile(tflite_dir / LITERT.model_file, staging / LITERT.model_file)
            record = finished_record(
                staging,
                converted,
                technique="qat_int8",
                source=source,
                settings=cfg.model_dump(),
                macs=macs,
                params=params,
                parent_sha256=parent_sha256 or baseline_sha256,
                baseline_sha256=baseline_sha256,
                extra=converted.extra | {"qat_layers": len(_weighted_qat_modules(prepared))},
            )
            write_record(staging, record)
    return record


TECHNIQUE = Technique(
    name="qat_int8",
    config=QatInt8Config,
    starts_from="torch",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=(
        "tasks.export",
        "tasks.models",
        "tasks.train",
        "tasks.techniques.tflite_int8",
        "tasks.tflite_convert",
        "tasks.int8_friendly",
    ),
)

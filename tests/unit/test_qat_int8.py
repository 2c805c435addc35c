"""qat_int8: QAT fine-tuning in torch, converted to a full-integer LiteRT model that is at least
as accurate as post-training int8 (tflite_int8) of the same baseline."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tasks.data import load_preprocess, load_split
from tasks.errors import VariantError
from tasks.evaluate import Evaluation, evaluate
from tasks.io import read_json
from tasks.qat import prepare_qat, to_float
from tasks.techniques import technique_named
from tasks.techniques.context import BuildContext
from tasks.techniques.qat_int8 import QatInt8Config
from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize
from tasks.train import load_baseline, predict

# QAT may not lose more than this to post-training int8 on the tiny test split (about 360
# images: one point is under 4 images; the target is "not below by more than its CI")
MARGIN = 0.02


def _qat_config(source: str, epochs: int) -> QatInt8Config:
    """A short QAT: batch norm and observers frozen after the first epoch, 64 calibration images."""
    return QatInt8Config(
        technique="qat_int8",
        source=source,
        epochs=epochs,
        freeze_bn_after=1,
        freeze_observers_after=1,
        calibration_samples=64,
    )


def _context(workspace: Path, variants: Path, name: str, source: str) -> BuildContext:
    return BuildContext(
        name,
        0,
        variants / source,
        variants / name,
        data_dir=workspace / "data",
        baseline_dir=workspace / "models" / "baseline",
    )


@pytest.fixture(scope="module")
def built(
    tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Evaluation]:
    data = tiny_workspace / "data"
    variants = tmp_path_factory.mktemp("qat-variants")
    shutil.copytree(tiny_workspace / "variants" / "baseline", variants / "baseline")
    preprocess = load_preprocess(data)
    calib = load_split(data, "calib")
    quantize(
        "tflite_int8",
        TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=64),
        variants / "baseline",
        calib,
        preprocess,
        variants / "tflite_int8",
    )
    config = _qat_config("baseline", epochs=2)
    context = _context(tiny_workspace, variants, "qat_int8", "baseline")
    # as in the nightly: another variant runs torch in this process while QAT traces its model
    # (torch.fx patches nn.Module.__call__ process-wide while it traces)
    builder = threading.Thread(target=technique_named("qat_int8").build, args=(context, config))
    builder.start()
    other, image, forwards = (
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()),
        torch.zeros(1, 1, 8, 8),
        0,
    )
    while builder.is_alive():
        other(image)  # raised "module is not installed as a submodule" inside the trace window
        forwards += 1
    builder.join()
    assert forwards > 100
    return variants, evaluate(variants, ["tflite_int8", "qat_int8"], load_split(data, "test"))


def test_declared_as_a_torch_to_litert_technique() -> None:
    technique = technique_named("qat_int8")
    assert (technique.starts_from, technique.runtime, technique.produces_onnx) == (
        "torch",
        "litert",
        False,
    )
    assert "tasks.techniques.tflite_int8" in technique.modules


def test_freeze_epochs_beyond_training_are_refused() -> None:
    with pytest.raises(ValueError, match="freeze_bn_after must be at most epochs"):
        QatInt8Config(technique="qat_int8", source="baseline", epochs=2, freeze_bn_after=3)


@pytest.mark.slow  # two onnx2tf conversions and a QAT fine-tune: ~90 s of CPU on 2 cores
def test_writes_a_full_integer_litert_model(built: tuple[Path, Evaluation]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    variants, _ = built
    record = read_json(variants / "qat_int8" / "variant.json")
    assert record["technique"] == "qat_int8"
    assert record["runtime"] == "litert"
    assert record["source"] == "baseline"
    assert record["settings"]["epochs"] == 2
    assert record["input"]["dtype"] == "int8" and record["output"]["dtype"] == "int8"
    assert record["extra"]["qat_layers"] >= 8  # every conv and the classifier of the tiny ResNet
    interpreter = Interpreter(model_path=str(variants / "qat_int8" / record["model_file"]))
    dtypes = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    assert "float32" not in dtypes, dtypes  # weights, activations and I/O all integer
    assert "int8" in dtypes


@pytest.mark.slow
def test_at_least_as_accurate_as_post_training_int8(built: tuple[Path, Evaluation]) -> None:
    _, evaluation = built
    qat, ptq = evaluation.metrics["qat_int8"], evaluation.metrics["tflite_int8"]
    assert qat.status == "ok" and qat.accuracy is not None and ptq.accuracy is not None
    assert qat.accuracy >= ptq.accuracy - MARGIN, (qat.accuracy, ptq.accuracy)
    assert qat.accuracy >= 0.8, qat.accuracy
    assert qat.agreement is not None and qat.agreement >= 0.8


def test_folded_float_network_matches_the_fake_quantized_one_in_function(
    tiny_workspace: Path,
) -> None:
    """BN folding keeps the function: the float network the converter gets predicts what the
    QAT network predicts (fake-quantization only nudges logits)."""
    preprocess = load_preprocess(tiny_workspace / "data")
    prepared = prepare_qat(load_baseline(tiny_workspace / "models" / "baseline"), preprocess, "q")
    x = preprocess.normalize(load_split(tiny_workspace / "data", "val").x)
    prepared.train()
    with torch.no_grad():
        prepared(torch.from_numpy(x))  # observers see real data
    folded = to_float(prepared)
    assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    agreement = (predict(prepared, x).argmax(1) == predict(folded, x).argmax(1)).mean()
    assert agreement >= 0.95, agreement


class _StochasticDepth(nn.Module):
    """EfficientNet's drop-connect: a random branch taken on `self.training`, not a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.training:
            y = y * (torch.rand(y.shape[0], 1, 1, 1) > 0.5) / 0.5
        return self.fc((x + y).mean((2, 3)))


def test_a_branch_on_training_is_not_baked_into_the_folded_network() -> None:
    """Traced in train mode, the folded "eval" network kept dropping random blocks."""
    from tasks.data import Preprocess

    preprocess = Preprocess(image_size=8, channels=3, num_classes=10, mean=[0.0] * 3, std=[1.0] * 3)
    prepared = prepare_qat(_StochasticDepth(), preprocess, "q")
    assert prepared.training  # ready for the fine-tune
    with torch.no_grad():
        prepared(torch.randn(16, 3, 8, 8))  # observers see data
    folded = to_float(prepared)
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(folded(x), folded(x))
    assert "rand" not in folded.code


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on values: torch.fx cannot trace it
            x = x * 2
        return self.fc(x.flatten(1))


def test_a_model_fx_cannot_trace_is_one_line_reason(tiny_workspace: Path) -> None:
    preprocess = load_preprocess(tiny_workspace / "data")
    with pytest.raises(VariantError, match=r"q: QAT preparation cannot trace _DataDependent") as e:
        prepare_qat(_DataDependent(), preprocess, "q")
    assert "\n" not in str(e.value)


@pytest.mark.slow  # a pruning fine-tune, a QAT fine-tune and one conversion: ~60 s on 2 cores
def test_quantization_aware_training_of_a_pruned_variant(
    tiny_workspace: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Starts from the pruned model, not the baseline: its widths, MACs and lineage; the
    fine-tuning's progress, printed in the build's child process, reaches this one."""
    from tasks.techniques.pruned import PrunedConfig

    data = tiny_workspace / "data"
    variants = tmp_path_factory.mktemp("qat-of-pruned")
    shutil.copytree(tiny_workspace / "variants" / "baseline", variants / "baseline")

    pruned = technique_named("pruned").build(
        _context(tiny_workspace, variants, "pruned", "baseline"),
        PrunedConfig(technique="pruned", source="baseline", ratio=0.5, finetune_epochs=1),
    )
    config = _qat_config("pruned", epochs=1)
    capsys.readouterr()
    record = technique_named("qat_int8").build(
        _context(tiny_workspace, variants, "qat_int8", "pruned"), config
    )
    baseline = read_json(variants / "baseline" / "variant.json")
    assert "qat_int8: epoch 1/1 loss " in capsys.readouterr().out

    assert record.status == "ok" and record.source == "pruned"
    assert record.parent_sha256 == pruned.model_sha256 != baseline["model_sha256"]
    assert record.macs == pruned.macs and record.params == pruned.params
    assert pruned.params is not None and pruned.params < baseline["params"]
    evaluation = evaluate(variants, ["pruned", "qat_int8"], load_split(data, "test"))
    assert evaluation.metrics["qat_int8"].accuracy is not None
    assert evaluation.metrics["qat_int8"].accuracy >= 0.5  # ten classes: it learned, it runs

"""clustered, low_rank and the Deep Compression chain on the tiny digits: shared values in the
exported ONNX, MACs measured before/after, accuracy bounds, and the chain through torch files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zstandard

from tasks.compress import build_variant
from tasks.data import load_split
from tasks.evaluate import run_variant
from tasks.models import count_macs_params
from tasks.params_file import parse_params
from tasks.techniques.clustered import ClusteredConfig, distinct_weight_values
from tasks.techniques.low_rank import LowRankConfig
from tasks.techniques.pruned import PrunedConfig
from tasks.techniques.tflite_int8 import TfliteInt8Config
from tasks.train import accuracy
from tasks.variant import load_torch_model, model_path, read_record

SEED = 0


def _build(root: Path, name: str, cfg: object, out: Path) -> Path:
    record = build_variant(
        name,
        cfg,  # type: ignore[arg-type]
        SEED,
        root / "data",
        root / "models" / "baseline",
        out.parent / cfg.source if cfg.source != "baseline" else root / "variants" / "baseline",  # type: ignore[attr-defined]
        out,
    )
    assert record.status == "ok", record.reason
    return out


def _accuracy(variant_dir: Path, root: Path) -> float:
    test = load_split(root / "data", "test")
    return accuracy(run_variant(variant_dir, test.x), test.y)


def _zstd19(path: Path) -> int:
    return len(zstandard.ZstdCompressor(level=19).compress(path.read_bytes()))


@pytest.fixture(scope="module")
def clustered(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ClusteredConfig(technique="clustered", source="baseline", clusters=16, finetune_epochs=2)
    return _build(tiny_workspace, "clustered", cfg, tmp_path_factory.mktemp("cl") / "clustered")


def test_clustered_onnx_has_at_most_clusters_values_per_conv_weight(clustered: Path) -> None:
    record = read_record(clustered)
    counts = distinct_weight_values(model_path(clustered, record))
    # every conv of the tiny ResNet (stem, 2 per stage, 2 shortcuts), BN folded in: 9 weights
    conv = {name: n for name, n in counts.items() if n <= 16}
    assert record.extra["clustered_layers"] == 9
    assert len(conv) >= 9, counts
    # the unclustered classifier keeps its many values: the count is not trivially small
    assert max(counts.values()) > 16, counts


def test_clustered_keeps_accuracy_and_compresses_better(
    clustered: Path, tiny_workspace: Path
) -> None:
    base = tiny_workspace / "variants" / "baseline"
    assert _accuracy(clustered, tiny_workspace) >= _accuracy(base, tiny_workspace) - 0.05
    base_z = _zstd19(model_path(base, read_record(base)))
    clustered_z = _zstd19(model_path(clustered, read_record(clustered)))
    assert base_z / clustered_z >= 2.0, (base_z, clustered_z)


def test_low_rank_measures_fewer_macs_and_keeps_accuracy(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    cfg = LowRankConfig(technique="low_rank", source="baseline", rank_ratio=0.5, finetune_epochs=3)
    out = _build(tiny_workspace, "low_rank", cfg, tmp_path / "low_rank")
    record = read_record(out)
    assert record.extra["factorized"], record.extra
    assert record.macs is not None and record.extra["macs_before"] is not None
    assert record.extra["macs_before"] / record.macs >= 1.5, record
    assert record.params is not None and record.params < record.extra["params_before"]
    # the saved torch model is the factorized one: MACs counted again from it agree
    model = load_torch_model(out, record)
    assert count_macs_params(model, (1, 16, 16))[0] == record.macs
    base = tiny_workspace / "variants" / "baseline"
    assert _accuracy(out, tiny_workspace) >= _accuracy(base, tiny_workspace) - 0.10
    # the torch module kept for the variants built from this one is neither measured nor
    # published: size and manifest are the deployable model's
    from tasks.evaluate import model_size
    from tasks.variant import TORCH_FILE, published_files

    assert (out / TORCH_FILE).is_file()
    assert model_size(out) == model_path(out, record).stat().st_size
    assert TORCH_FILE not in published_files(out) and record.model_file in published_files(out)


def test_low_rank_that_saves_nothing_is_a_one_line_failure(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    cfg = LowRankConfig(technique="low_rank", source="baseline", rank_ratio=0.99)
    record = build_variant("lr", cfg, SEED, tiny_workspace / "data",
                           tiny_workspace / "models" / "baseline",
                           tiny_workspace / "variants" / "baseline", tmp_path / "lr")  # fmt: skip
    assert record.status == "failed"
    assert record.reason is not None and "\n" not in record.reason
    assert "no conv/linear layer of this model needs fewer MACs" in record.reason


@pytest.mark.slow
def test_deep_compression_chain_resolves_and_builds(tiny_workspace: Path, tmp_path: Path) -> None:
    raw = {
        "variants": {
            "dc_pruned": {"technique": "pruned", "source": "baseline", "ratio": 0.5,
                          "round_to": 4, "finetune_epochs": 2},
            "dc_clustered": {"technique": "clustered", "source": "dc_pruned", "clusters": 16,
                             "layers": "conv_linear", "finetune_epochs": 2},
            "deep_compression": {"technique": "tflite_int8", "source": "dc_clustered",
                                 "calibration_samples": 64, "per_channel": False},
        }
    }  # fmt: skip
    params = parse_params(raw)
    for name, cfg in params.variants.items():
        _build(tiny_workspace, name, cfg, tmp_path / name)
    pruned, shared = read_record(tmp_path / "dc_pruned"), read_record(tmp_path / "dc_clustered")
    final = read_record(tmp_path / "deep_compression")
    assert isinstance(params.variants["dc_pruned"], PrunedConfig)
    assert isinstance(params.variants["deep_compression"], TfliteInt8Config)
    assert shared.source == "dc_pruned" and shared.parent_sha256 == pruned.model_sha256
    assert final.source == "dc_clustered" and final.parent_sha256 == shared.model_sha256
    # clustered started from the pruned network, not the baseline: its MACs are the pruned ones,
    # less the batch norms it folded into the convolutions
    assert shared.macs is not None and pruned.macs is not None
    assert 0.95 * pruned.macs <= shared.macs <= pruned.macs
    counts = distinct_weight_values(model_path(tmp_path / "dc_clustered", shared))
    assert max(counts.values()) <= 16, counts
    base = tiny_workspace / "variants" / "baseline"
    base_z = _zstd19(model_path(base, read_record(base)))
    final_z = _zstd19(model_path(tmp_path / "deep_compression", final))
    assert base_z / final_z >= 10, (base_z, final_z)
    assert _accuracy(tmp_path / "deep_compression", tiny_workspace) >= 0.5
    assert np.isfinite(final_z)


def test_pre_activation_batch_norm_is_left_unfolded_and_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DenseNet's BN -> ReLU -> Conv: clustered refused it ("does not follow a conv") and named
    it mp_layer175. Now each BN is folded only into the conv whose output it reads, and only
    where that keeps the outputs (a DenseNet also concatenates that output); the others stay,
    named by the model's own module paths."""
    import torch
    from torch import nn

    from tasks.techniques.clustered import fold_batch_norm
    from tests.nets.densenet import build

    torch.manual_seed(0)
    model = build(num_classes=10, in_channels=1)
    for module in model.modules():  # trained-like statistics: a fold is not a no-op
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    probe = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        expected = model.eval()(probe)
    fold_batch_norm(model, "clustered", (1, 32, 32))
    with torch.no_grad():
        assert torch.allclose(model(probe), expected, atol=1e-4)
    said = capsys.readouterr().out
    assert "batch norm left unfolded" in said
    for path in ("features.1.0.norm1", "features.1.1.norm1", "features.2"):
        assert path in said
    assert isinstance(model.get_submodule("features.1.0.norm1"), nn.BatchNorm2d)

"""pruned: structural channel pruning with torch-pruning, then fine-tuning, exported to ONNX."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from tasks.config import PrunedConfig
from tasks.data import Preprocess, Split
from tasks.errors import VariantError
from tasks.export import write_onnx_variant
from tasks.models import count_macs_params, modularize
from tasks.train import FitSettings, fit
from tasks.variant import VariantRecord


def prune_channels(
    model: nn.Module, preprocess: Preprocess, ratio: float, round_to: int | None = None
) -> nn.Module:
    """Remove the lowest-magnitude channels of every prunable layer (the classifier is kept),
    leaving a multiple of `round_to` channels per layer when it is set."""
    import torch_pruning as tp

    example = torch.zeros(1, *preprocess.input_shape)
    classifiers = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.out_features == preprocess.num_classes
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning warns about layers it leaves alone
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=classifiers,
            round_to=round_to,
        )
        pruner.step()
    return model


def prune(
    name: str,
    cfg: PrunedConfig,
    teacher: nn.Module,
    train: Split,
    val: Split,
    test: Split,
    preprocess: Preprocess,
    baseline_sha256: str | None,
    seed: int,
    out_dir: Path,
) -> VariantRecord:
    """Prune a copy of the baseline to cfg.ratio, fine-tune it, and write the ONNX variant."""
    import copy

    model = copy.deepcopy(teacher)
    if isinstance(model, torch.fx.GraphModule):  # a user's .pt2 program: give it real layers
        model = modularize(model)
    before_macs, before_params = count_macs_params(model, preprocess.input_shape)
    model = prune_channels(model, preprocess, cfg.ratio, cfg.round_to)
    after_macs, after_params = count_macs_params(model, preprocess.input_shape)
    if after_macs is None or before_macs is None or after_macs >= before_macs:
        raise VariantError(
            f"{name}: torch-pruning removed no channels from this model "
            f"({type(teacher).__name__}); it found no prunable Conv2d/Linear layers"
        )
    print(
        f"{name}: MACs {before_macs / 1e6:.1f}M → {after_macs / 1e6:.1f}M, params {before_params:,} → {after_params:,}"
    )
    if cfg.finetune_epochs:
        settings = FitSettings(cfg.finetune_epochs, cfg.batch_size, cfg.lr)
        fit(model, train, val, preprocess, settings, seed, name)
    return write_onnx_variant(
        model,
        preprocess,
        preprocess.normalize(test.x),
        out_dir,
        name=name,
        technique="pruned",
        source="baseline",
        settings=cfg.model_dump(),
        parent_sha256=baseline_sha256,
        baseline_sha256=baseline_sha256,
        extra={"macs_before": before_macs, "params_before": before_params},
    )

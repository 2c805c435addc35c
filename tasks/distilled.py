"""distilled: a smaller student trained on the teacher's softened logits plus labels, exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tasks.config import DistilledConfig
from tasks.data import Preprocess, Split
from tasks.export import write_onnx_variant
from tasks.models import DEFAULT_FACTORY, build_from_factory
from tasks.train import FitSettings, default_kwargs, fit
from tasks.variant import VariantRecord


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al.: alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(student, labels)."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def distill(
    name: str,
    cfg: DistilledConfig,
    teacher: nn.Module,
    train: Split,
    val: Split,
    test: Split,
    preprocess: Preprocess,
    baseline_sha256: str | None,
    seed: int,
    out_dir: Path,
) -> VariantRecord:
    """Train the default CNN at cfg.width against the teacher and write the ONNX variant."""
    torch.manual_seed(seed)
    student = build_from_factory(DEFAULT_FACTORY, default_kwargs(preprocess, cfg.width))
    teacher.eval()

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        return distillation_loss(logits, teacher_logits, labels, cfg.temperature, cfg.alpha)

    settings = FitSettings(cfg.epochs, cfg.batch_size, cfg.lr)
    fit(student, train, val, preprocess, settings, seed, name, loss_fn=loss_fn)
    return write_onnx_variant(
        student,
        preprocess,
        preprocess.normalize(test.x),
        out_dir,
        name=name,
        technique="distilled",
        source="baseline",
        settings=cfg.model_dump(),
        parent_sha256=baseline_sha256,
        baseline_sha256=baseline_sha256,
        extra={"student": DEFAULT_FACTORY, "student_width": cfg.width},
    )

"""distilled: a smaller student trained on the teacher's softened logits plus labels, exported to ONNX.

torch is imported where it is used: the technique table is read where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.errors import VariantError
from tasks.techniques.base import BuildContext, Technique, TechniqueConfig
from tasks.variant import VariantRecord

if TYPE_CHECKING:
    import torch
    from torch import nn


class DistilledConfig(TechniqueConfig):
    technique: Literal["distilled"]
    width: PositiveInt = 12
    epochs: PositiveInt = 12
    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.7
    lr: Annotated[float, Field(gt=0)] = 3e-3
    batch_size: PositiveInt = 64


def build(context: BuildContext, config: DistilledConfig) -> VariantRecord:
    """A student of the baseline as an ONNX variant."""
    teacher = context.teacher()
    if teacher is None:
        raise VariantError(f"{context.name}: distillation needs the baseline torch model")
    return distill(
        context.name,
        config,
        teacher,
        context.split("train"),
        context.split("val"),
        context.split("test"),
        context.preprocess(),
        context.baseline_sha256(),
        context.seed,
        context.out_dir,
    )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al.: alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(student, labels)."""
    from torch.nn import functional as F

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
    import torch

    from tasks.export import write_onnx_variant
    from tasks.models import DEFAULT_FACTORY, build_from_factory
    from tasks.train import FitSettings, default_kwargs, fit

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


TECHNIQUE = Technique(
    name="distilled",
    config=DistilledConfig,
    starts_from="torch",
    runtime="onnxruntime",
    produces_onnx=True,
    build=build,
    uses=("tasks.export", "tasks.models", "tasks.train"),
)

"""distilled: a smaller student trained on the teacher's softened logits plus labels, exported to ONNX.

The student is of the baseline's family by default: a pretrained baseline's architecture
(EfficientNet-Lite0, MobileNetV2) at `width_multiplier`; the default CNN at `width` for a baseline
trained here; for an imported one (a factory or a .pt2, whose family ModelPress cannot build),
the teacher's own architecture narrowed to `width_multiplier` of its channels (by channel
pruning, as `pruned` does) with its weights re-initialised, or the default CNN where that is no
smaller. `student` names one instead. A student no smaller than the teacher is warned about.

torch is imported where it is used: the technique table is read where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from tasks.config import PositiveInt, PretrainedArch
from tasks.data import Preprocess, Split
from tasks.errors import VariantError
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord

if TYPE_CHECKING:
    import torch
    from torch import nn


# "same": the baseline's family; "cnn": tasks.models' default CNN; "teacher": the teacher's own
# architecture, narrowed; or a pretrained architecture
StudentChoice = Literal["same", "cnn", "teacher", PretrainedArch]
PRETRAINED_FACTORY_PREFIX = "tasks.pretrained:"


class DistilledConfig(TechniqueConfig):
    technique: Literal["distilled"]
    student: StudentChoice = "same"
    width: PositiveInt = 12  # a CNN student's channels
    # a pretrained-family or narrowed-teacher student's width multiplier; it starts untrained
    # (ImageNet weights exist only at 1.0, the teacher's own size)
    width_multiplier: Annotated[float, Field(gt=0, le=2)] = 0.5
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
        _baseline_factory(context),
        context.split("train"),
        context.split("val"),
        context.split("test"),
        context.preprocess(),
        context.baseline_sha256(),
        context.seed,
        context.out_dir,
    )


def _baseline_factory(context: BuildContext) -> str | None:
    """The factory baseline.json rebuilds the teacher from (None: an imported .pt2)."""
    from tasks.io import read_json

    assert context.baseline_dir is not None  # teacher() returned a model
    return read_json(context.baseline_dir / "baseline.json").get("factory")


def student_arch(choice: str, baseline_factory: str | None) -> str:
    """The student's family: 'cnn', 'teacher' or a pretrained architecture; "same" follows the
    baseline (an imported one: its own architecture, narrowed)."""
    from tasks.models import DEFAULT_FACTORY

    if choice != "same":
        return choice
    if baseline_factory and baseline_factory.startswith(PRETRAINED_FACTORY_PREFIX):
        return baseline_factory.removeprefix(PRETRAINED_FACTORY_PREFIX)
    return "cnn" if baseline_factory == DEFAULT_FACTORY else "teacher"


def build_student(
    cfg: DistilledConfig,
    baseline_factory: str | None,
    preprocess: Preprocess,
    teacher: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, object]]:
    """The untrained student and what variant.json's `extra` records about it."""
    from tasks.models import DEFAULT_FACTORY, build_from_factory
    from tasks.train import default_kwargs

    arch = student_arch(cfg.student, baseline_factory)
    _say_ignored(cfg, arch)
    if arch == "teacher":
        if teacher is None:
            raise ValueError("a narrowed-teacher student needs the teacher")
        return narrowed(teacher, preprocess, cfg.width_multiplier), {
            "student": "teacher",
            "student_arch": baseline_factory or "the baseline's .pt2",
            "student_width": cfg.width_multiplier,
        }
    if arch == "cnn":
        kwargs = default_kwargs(preprocess, cfg.width)
        return build_from_factory(DEFAULT_FACTORY, kwargs), {
            "student": DEFAULT_FACTORY,
            "student_width": cfg.width,
        }
    factory = f"{PRETRAINED_FACTORY_PREFIX}{arch}"
    kwargs = {
        "num_classes": preprocess.num_classes,
        "in_channels": preprocess.channels,
        "image_size": preprocess.image_size,
        "width": cfg.width_multiplier,
    }
    return build_from_factory(factory, kwargs), {
        "student": factory,
        "student_arch": arch,
        "student_width": cfg.width_multiplier,
    }


def _say_ignored(cfg: DistilledConfig, arch: str) -> None:
    """A knob this student does not read, set in params.yaml, is said once: it used to be
    dropped in silence (and still recorded in the manifest's settings, as if it had counted)."""
    unread = "width_multiplier" if arch == "cnn" else "width"
    if unread in cfg.model_fields_set:
        read = "width" if arch == "cnn" else "width_multiplier"
        student = {"cnn": "the default CNN", "teacher": "the teacher narrowed"}.get(arch, arch)
        print(
            f"distilled: {unread}: {getattr(cfg, unread)} is not read by this student "
            f"({student}); it takes {read}: {getattr(cfg, read)}",
            flush=True,
        )


def narrowed(teacher: nn.Module, preprocess: Preprocess, width: float) -> nn.Module:
    """A copy of `teacher` with `width` of each prunable layer's channels (the classifier's
    outputs kept), every layer's weights re-initialised: the same architecture, smaller."""
    import copy

    from tasks.models import with_layers
    from tasks.techniques.pruned import prune_channels

    student = with_layers(copy.deepcopy(teacher).eval())
    if width < 1:
        student = prune_channels(student, preprocess, ratio=1 - width, round_to=None)
    for module in student.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        statistics = getattr(module, "reset_running_stats", None)
        if callable(statistics):
            statistics()
    return student.train()


def distill(
    name: str,
    cfg: DistilledConfig,
    teacher: nn.Module,
    baseline_factory: str | None,
    train: Split,
    val: Split,
    test: Split,
    preprocess: Preprocess,
    baseline_sha256: str | None,
    seed: int,
    out_dir: Path,
) -> VariantRecord:
    """Train the student (build_student) against the teacher and write the ONNX variant."""
    import torch

    from tasks.export import write_onnx_variant
    from tasks.models import count_macs_params
    from tasks.train import FitSettings, distillation_loss, fit

    torch.manual_seed(seed)
    teacher.eval()
    teacher_size = count_macs_params(teacher, preprocess.input_shape)
    student, about_student = build_student(cfg, baseline_factory, preprocess, teacher)
    size = count_macs_params(student, preprocess.input_shape)
    narrowed_in_vain = about_student["student"] == "teacher" and not _smaller(size, teacher_size)
    if cfg.student == "same" and narrowed_in_vain:  # nothing to narrow (a single Linear, say)
        print(
            f"{name}: the baseline's architecture narrowed is no smaller than it "
            f"({_sizes(size, teacher_size)}): the default CNN at width {cfg.width} instead",
            flush=True,
        )
        torch.manual_seed(seed)
        cnn = cfg.model_copy(update={"student": "cnn"})
        student, about_student = build_student(cnn, baseline_factory, preprocess)
        size = count_macs_params(student, preprocess.input_shape)
    about = f"student {about_student['student']} width {about_student['student_width']}"
    print(f"{name}: {about}: params {size[1]:,}, MACs {_millions(size[0])}", flush=True)
    if not _smaller(size, teacher_size):  # trained all the same: the gates judge what it gains
        print(
            f"{name}: warning: the {about} is no smaller than the baseline "
            f"({_sizes(size, teacher_size)}): set variants.{name}.width_multiplier (or width, "
            "student) lower",
            flush=True,
        )

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
        extra=about_student,
    )


def _millions(macs: int | None) -> str:
    return "unknown" if macs is None else f"{macs / 1e6:.1f}M"


def _smaller(size: tuple[int | None, int], than: tuple[int | None, int]) -> bool:
    """Fewer parameters, or fewer MACs (where both are known)."""
    (macs, params), (their_macs, their_params) = size, than
    return params < their_params or (
        macs is not None and their_macs is not None and macs < their_macs
    )


def _sizes(size: tuple[int | None, int], than: tuple[int | None, int]) -> str:
    return f"params {size[1]:,} vs {than[1]:,}, MACs {_millions(size[0])} vs {_millions(than[0])}"


TECHNIQUE = Technique(
    name="distilled",
    config=DistilledConfig,
    starts_from="torch",
    runtime="onnxruntime",
    produces_onnx=True,
    build=build,
    # pruned: its channel pruning narrows an imported teacher into its student
    uses=(
        "tasks.export",
        "tasks.models",
        "tasks.pretrained",
        "tasks.train",
        "tasks.techniques.pruned",
    ),
)

"""The distillation student: of the baseline's family unless named, the default CNN for a
baseline trained here (unchanged), a narrower EfficientNet-Lite0 for the pretrained one, the
teacher's own architecture narrowed for an imported one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.config import BaselineConfig, TrainConfig
from tasks.data import Preprocess, load_preprocess, load_split
from tasks.export import MODEL_FILE
from tasks.models import DEFAULT_FACTORY, build_from_factory, count_macs_params
from tasks.techniques.context import BuildContext
from tasks.techniques.distilled import TECHNIQUE, DistilledConfig, build_student, student_arch
from tasks.train import default_kwargs, make_baseline, save_baseline
from tasks.variant import read_record
from tests.unit.test_pretrained import fashion_dir  # noqa: F401  (the fixture: real images)

DIGITS = Preprocess(image_size=32, channels=1, num_classes=10, mean=[0.5], std=[0.5])


@pytest.mark.parametrize(
    ("choice", "baseline_factory", "expected"),
    [
        ("same", "tasks.pretrained:efficientnet_lite0", "efficientnet_lite0"),
        ("same", "tasks.pretrained:mobilenet_v2", "mobilenet_v2"),
        ("same", DEFAULT_FACTORY, "cnn"),
        ("same", "my_models:net", "teacher"),  # an imported family: itself, narrowed
        ("same", None, "teacher"),  # a .pt2 baseline
        ("mobilenet_v2", "tasks.pretrained:efficientnet_lite0", "mobilenet_v2"),
        ("efficientnet_lite0", DEFAULT_FACTORY, "efficientnet_lite0"),
        ("cnn", "tasks.pretrained:efficientnet_lite0", "cnn"),
    ],
)
def test_student_family(choice: str, baseline_factory: str | None, expected: str) -> None:
    assert student_arch(choice, baseline_factory) == expected


def test_default_student_of_a_trained_baseline_is_todays_cnn() -> None:
    """The default params.yaml's `distilled` (width 12) builds the very model it built before."""
    cfg = DistilledConfig(technique="distilled", source="baseline", width=12)
    torch.manual_seed(0)
    student, extra = build_student(cfg, DEFAULT_FACTORY, DIGITS)
    torch.manual_seed(0)
    before = build_from_factory(DEFAULT_FACTORY, default_kwargs(DIGITS, 12))
    assert extra == {"student": DEFAULT_FACTORY, "student_width": 12}
    assert student.state_dict().keys() == before.state_dict().keys()
    for key, value in before.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key


@pytest.mark.slow  # fine-tunes a real EfficientNet-Lite0 (~20 s)
def test_distils_real_efficientnet_lite0_into_a_narrower_one(
    fashion_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    baseline_cfg = BaselineConfig(source="pretrained", arch="efficientnet_lite0")
    train_cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-2, threads=2, max_steps_per_epoch=2)
    teacher = make_baseline(baseline_cfg, train_cfg, fashion_dir, seed=0)
    save_baseline(teacher, baseline_cfg, tmp_path / "baseline")
    cfg = DistilledConfig(
        technique="distilled", source="baseline", width_multiplier=0.5, epochs=1, batch_size=16
    )
    context = BuildContext(
        name="distilled",
        seed=0,
        source_dir=tmp_path / "baseline",
        out_dir=tmp_path / "distilled",
        data_dir=fashion_dir,
        baseline_dir=tmp_path / "baseline",
    )

    record = TECHNIQUE.build(context, cfg)

    assert record.extra["student"] == "tasks.pretrained:efficientnet_lite0"
    assert record.extra["student_arch"] == "efficientnet_lite0"
    assert record.extra["student_width"] == 0.5
    assert read_record(tmp_path / "distilled").extra["student_arch"] == "efficientnet_lite0"
    assert record.settings["student"] == "same"
    assert record.params is not None and record.macs is not None
    assert teacher.macs is not None
    assert 1_000_000 < record.params < 0.4 * teacher.params  # Lite0 x0.5: 1.03 M vs 3.38 M
    assert 2_500_000 < record.macs < 0.4 * teacher.macs  # 3.0 M vs 8.2 M MACs at 32 px
    assert count_macs_params(
        build_from_factory(
            record.extra["student"],
            {"num_classes": 10, "in_channels": 3, "image_size": 32, "width": 0.5},
        ),
        (3, 32, 32),
    ) == (record.macs, record.params)

    import onnxruntime as ort

    test = load_split(fashion_dir, "test")
    x = load_preprocess(fashion_dir).normalize(test.x)
    session = ort.InferenceSession(str(tmp_path / "distilled" / MODEL_FILE))
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (len(test), 10)
    assert np.isfinite(logits).all()
    assert record.extra["onnx_max_abs_diff"] < 1e-3


def _imported_teacher() -> torch.nn.Module:
    """An imported net ModelPress has no factory for: convs, batch norm, SiLU, a linear head."""
    from torch import nn

    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(1, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.SiLU(),
        nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    teacher.train()
    with torch.no_grad():
        teacher(torch.rand(16, 1, 32, 32))  # running statistics that are not the defaults
    return teacher.eval()


def test_an_imported_teacher_s_student_is_its_architecture_narrowed_and_untrained() -> None:
    """Before, an imported baseline's student was the default CNN, whatever the baseline: on an
    unseen 3.4 MMAC MobileViT-style net that student had 16.3 MMACs and ran 2.3x slower."""
    teacher = _imported_teacher()
    cfg = DistilledConfig(technique="distilled", source="baseline", width_multiplier=0.5)

    student, extra = build_student(cfg, "my_models:net", DIGITS, teacher)

    assert extra == {"student": "teacher", "student_arch": "my_models:net", "student_width": 0.5}
    convs = [m for m in student.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32]
    assert student[-1].in_features == 32 and student[-1].out_features == 10
    assert [c.out_channels for c in teacher.modules() if isinstance(c, torch.nn.Conv2d)] == [32, 64]
    assert torch.equal(student[1].running_mean, torch.zeros(16))  # statistics reset
    kept = teacher[0].weight[: convs[0].out_channels]
    assert not torch.allclose(convs[0].weight, kept)  # weights re-initialised, not copied
    macs, params = count_macs_params(student, DIGITS.input_shape)
    teacher_macs, teacher_params = count_macs_params(teacher, DIGITS.input_shape)
    assert macs is not None and teacher_macs is not None
    assert macs < 0.4 * teacher_macs and params < 0.4 * teacher_params


def test_a_student_no_smaller_than_its_teacher_is_named_in_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tasks.data import Split
    from tasks.techniques.distilled import distill

    teacher = _imported_teacher()
    cfg = DistilledConfig(
        technique="distilled", source="baseline", student="teacher", width_multiplier=1.0, epochs=1
    )
    split = Split(x=np.zeros((4, 1, 32, 32), np.float32), y=np.zeros(4, np.int64))
    distill("distilled", cfg, teacher, None, split, split, split, DIGITS, None, 0, tmp_path / "d")
    out = capsys.readouterr().out
    assert (
        "distilled: warning: the student teacher width 1.0 is no smaller than the baseline" in out
    )


def test_a_teacher_with_nothing_to_narrow_gets_the_default_cnn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A single Linear (the classifier, kept) cannot be narrowed: `student: same` falls back to
    the default CNN at `width`, which is smaller, and trains it."""
    from torch import nn

    from tasks.data import Split
    from tasks.techniques.distilled import distill

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)).eval()
    cfg = DistilledConfig(technique="distilled", source="baseline", width=4, epochs=1)
    rng = np.random.default_rng(0)
    split = Split(x=rng.random((20, 1, 32, 32), np.float32), y=np.arange(20) % 10)

    record = distill(
        "distilled", cfg, teacher, None, split, split, split, DIGITS, None, 0, tmp_path / "d"
    )

    assert "the default CNN at width 4 instead" in capsys.readouterr().out
    assert record.status == "ok"
    assert (record.extra["student"], record.extra["student_width"]) == (DEFAULT_FACTORY, 4)
    assert record.params is not None and record.params < 32 * 32 * 10 + 10


def test_a_knob_the_student_does_not_read_is_said_once(capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.data import Preprocess
    from tasks.techniques.distilled import DistilledConfig, build_student

    preprocess = Preprocess(image_size=16, channels=1, num_classes=10, mean=[0.5], std=[0.25])
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    cfg = DistilledConfig(technique="distilled", source="baseline", width=12)
    build_student(cfg, None, preprocess, teacher)  # a .pt2 teacher: the student narrows it
    said = capsys.readouterr().out
    assert "distilled: width: 12 is not read by this student (the teacher narrowed)" in said
    build_student(
        DistilledConfig(technique="distilled", source="baseline"), None, preprocess, teacher
    )
    assert "is not read" not in capsys.readouterr().out  # defaults: nothing to say

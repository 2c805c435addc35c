"""train: an imported model's normalisation is what the user stated, and a mis-fed one gets a hint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tasks.config import BaselineConfig, DataConfig, TrainConfig
from tasks.data import Preprocess, prepare, write_prepared
from tasks.train import import_hint, make_baseline


def _raw_pixel_model(tmp_path: Path) -> Path:
    """A small MLP trained here on raw [0, 1] digits pixels (8x8), saved as a torch.export .pt2."""
    prepared = prepare(DataConfig(image_size=8, normalize="none"), seed=0)
    train = prepared.splits["train"]
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path / "raw.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 1, 8, 8),)), str(path))
    return path


def _imported_accuracy(tmp_path: Path, model: Path, normalize: str) -> tuple[float, Path]:
    data_dir = tmp_path / f"data-{normalize}"
    write_prepared(prepare(DataConfig(image_size=8, normalize=normalize), seed=0), data_dir)
    cfg = BaselineConfig(source="pt2", path=str(model))
    result = make_baseline(cfg, TrainConfig(), data_dir, seed=0, root=tmp_path)
    return result.test_accuracy, data_dir


def test_normalize_none_feeds_raw_pixels_to_an_imported_model(tmp_path: Path) -> None:
    model = _raw_pixel_model(tmp_path)
    raw_accuracy, _ = _imported_accuracy(tmp_path, model, "none")
    train_stats_accuracy, _ = _imported_accuracy(tmp_path, model, "train")
    assert raw_accuracy >= 0.9  # as it scored where it was trained
    assert train_stats_accuracy < raw_accuracy - 0.1  # what the old default did to it


def test_a_mis_normalised_import_ends_the_run_with_what_to_check(tmp_path: Path) -> None:
    from flows._console import result_text
    from flows.nightly import NightlyResult
    from tasks.params_file import parse_params
    from tasks.train import import_hints

    model = _raw_pixel_model(tmp_path)
    accuracy, data_dir = _imported_accuracy(tmp_path, model, "train")  # the wrong statistics
    params = parse_params(
        {"baseline": {"source": "pt2", "path": str(model)}, "data": {"normalize": "train"}}
    )
    hints = import_hints(params.baseline, params.gates, accuracy, Path(data_dir))
    result = NightlyResult(
        model="m",
        version=None,
        status="nothing-passed",
        published=[],
        rejected={},
        approval=None,
        registry_uri="registry",
        run_dir="run",
        hints=hints,
    )
    text = result_text(result)
    assert f"  check:     baseline: the imported model scores {accuracy:.2f}" in text
    assert "label order (labels 0.. are 0, 1, 2, 3, 4, ...)" in text


def _preprocess(**changes: object) -> Preprocess:
    fields: dict = dict(image_size=32, channels=3, num_classes=8, mean=[0.5] * 3, std=[0.2] * 3)
    return Preprocess(**(fields | changes))


def test_hint_names_what_to_check_when_an_import_is_far_below_the_gate() -> None:
    names = ["cat", "dog", "owl", "elk", "bee", "ant", "fox", "yak"]
    hint = import_hint("pt2", 0.31, 0.9, _preprocess(class_names=names))
    assert hint is not None and "\n" not in hint
    assert hint.startswith("baseline: the imported model scores 0.31 on the test split")
    for what in ("normalisation", "channel order", "input size", "label order"):
        assert what in hint
    assert "mean [0.5, 0.5, 0.5]" in hint and "data.normalize" in hint
    assert "RGB" in hint and "data.image_size 32" in hint and "cat, dog, owl, elk, bee" in hint


@pytest.mark.parametrize(
    ("source", "accuracy", "gate"),
    [("train", 0.31, 0.9), ("pt2", 0.85, 0.9), ("factory", 0.95, 0.9), ("pt2", 0.1, None)],
)
def test_no_hint_when_trained_here_near_the_gate_or_ungated(
    source: str, accuracy: float, gate: float | None
) -> None:
    assert import_hint(source, accuracy, gate, _preprocess()) is None


def test_a_fixed_batch_export_is_named_with_how_to_export_it(tmp_path: Path) -> None:
    """torch.export specialises the batch size unless told otherwise; the evaluator feeds
    batches, so a batch-1 program must be refused with the fix, not as a shape mismatch."""
    from tasks.errors import ModelError
    from tasks.models import load_pt2
    from tasks.train import check_model_fits

    class Flat(nn.Module):  # reads the batch size off the input: a static export bakes it in
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], -1)

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Flat(), nn.Linear(4 * 8 * 8, 3))
    fixed, dynamic = tmp_path / "fixed.pt2", tmp_path / "dynamic.pt2"
    torch.export.save(torch.export.export(net.eval(), (torch.zeros(1, 1, 8, 8),)), fixed)
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        net.eval(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, dynamic)
    preprocess = Preprocess(image_size=8, channels=1, mean=[0.0], std=[1.0], num_classes=3)
    with pytest.raises(ModelError, match=r"batch of 1 only .*Dim\('batch'\)") as caught:
        check_model_fits(load_pt2(fixed), preprocess, str(fixed))
    assert "\n" not in str(caught.value)
    check_model_fits(load_pt2(dynamic), preprocess, str(dynamic))  # the fix it names works


class _ChannelShuffle(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def test_a_pt2_programs_batch_stays_dynamic_through_onnx_export(tmp_path: Path) -> None:
    """A channel shuffle reads the batch size from the input: in a .pt2 program that is an
    aten.sym_size the ONNX trace froze into Reshape's shape, and ONNX Runtime then refused
    every batch but the example's."""
    import numpy as np
    import onnxruntime as ort

    from tasks.export import export_onnx
    from tasks.models import load_pt2

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        _ChannelShuffle(),
        nn.Conv2d(8, 8, 1, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "shuffle.pt2")
    preprocess = Preprocess(
        image_size=16, channels=3, num_classes=4, mean=[0.5] * 3, std=[0.25] * 3
    )
    export_onnx(load_pt2(tmp_path / "shuffle.pt2"), preprocess, tmp_path / "model.onnx")
    x = torch.rand(5, 3, 16, 16)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(logits, model(x).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("published", "noted"),
    [(["baseline"], True), (["baseline", "tflite_int8"], False), ([], False)],
)
def test_a_version_with_only_the_baseline_says_no_compressed_variant_passed(
    published: list[str], noted: bool
) -> None:
    """A new user's every variant failed or was rejected, and 'published: baseline' read as
    success."""
    from flows._console import result_text
    from flows.nightly import NightlyResult

    result = NightlyResult(
        model="m",
        version="1" if published else None,
        status="published" if published else "nothing-passed",
        published=published,
        rejected={"pruned": "accuracy 0.10 < 0.90"},
        approval=None,
        registry_uri="registry",
        run_dir="run",
    )
    text = result_text(result)
    assert ("no compressed variant passed its gates" in text) is noted


def test_source_train_with_a_factory_trains_that_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`source: train` + `factory:` is the user's architecture trained here, not the default
    CNN under the user's name (it was, silently)."""
    (tmp_path / "user_arch_mlp.py").write_text(
        "from torch import nn\n"
        "def build(hidden=24):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),"
        " nn.Linear(hidden, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data_dir = tmp_path / "data"
    write_prepared(prepare(DataConfig(image_size=8), seed=0), data_dir)
    cfg = BaselineConfig(
        source="train", factory="user_arch_mlp:build", factory_kwargs={"hidden": 24}
    )
    result = make_baseline(cfg, TrainConfig(epochs=10, lr=0.01), data_dir, seed=0, root=tmp_path)
    assert (result.factory, result.factory_kwargs) == ("user_arch_mlp:build", {"hidden": 24})
    assert result.params == 64 * 24 + 24 + 24 * 10 + 10
    assert result.test_accuracy > 0.25  # trained (chance is 0.1; an MLP on shifted 8x8 digits)

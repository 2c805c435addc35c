"""Content hashes of local inputs: every byte that can change a result changes the hash."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from tasks.config import BaselineConfig, DataConfig
from tasks.errors import DataError, ModelError
from tasks.io import file_checksums
from tasks.lineage import code_sha256, data_lineage, model_lineage, sha256_tree
from tasks.unchanged import unchanged_in, unchanged_since


def _tree(root: Path) -> Path:
    for name, payload in {"a/1.png": b"one", "a/2.png": b"two", "b/3.png": b"three"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return root


def test_tree_hash_changes_with_a_byte_a_rename_or_a_new_file(tmp_path: Path) -> None:
    root = _tree(tmp_path / "images")
    first = sha256_tree(root)
    assert sha256_tree(root) == first
    (root / "a/1.png").write_bytes(b"onf")
    edited = sha256_tree(root)
    assert edited != first
    (root / "a/1.png").rename(root / "b/1.png")  # the same image under another class
    moved = sha256_tree(root)
    assert moved not in (first, edited)
    (root / "b/4.png").write_bytes(b"")
    assert sha256_tree(root) not in (first, edited, moved)


def test_data_lineage_hashes_the_npz_file(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"not really npz")
    cfg = DataConfig(source="npz", path="d.npz")
    lineage = data_lineage(cfg, tmp_path)
    assert lineage["data_sha256"] == hashlib.sha256(b"not really npz").hexdigest()
    assert lineage["data_path"] == "d.npz"


def test_data_lineage_of_a_missing_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.path: .*gone.npz does not exist"):
        data_lineage(DataConfig(source="npz", path="gone.npz"), tmp_path)


def test_embedded_digits_are_keyed_by_the_bundled_file() -> None:
    lineage = data_lineage(DataConfig(), Path("."))
    assert lineage["data"] == "digits" and len(lineage["data_sha256"]) == 64


def test_model_lineage_of_a_factory_hashes_its_source_and_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lineage_factory_mod.py").write_text("def build():\n    return None\n")
    (tmp_path / "w.pt").write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = BaselineConfig(source="factory", factory="lineage_factory_mod:build", path="w.pt")
    first = model_lineage(cfg, tmp_path)
    assert first["weights_sha256"] == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "lineage_factory_mod.py").write_text("def build():\n    return 1\n")
    assert model_lineage(cfg, tmp_path)["factory_source_sha256"] != first["factory_source_sha256"]
    sys.modules.pop("lineage_factory_mod", None)


def test_model_lineage_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"baseline.path: .*m.pt2: .pt2 file not found"):
        model_lineage(BaselineConfig(source="pt2", path="m.pt2"), tmp_path)
    (tmp_path / "w.pt").write_bytes(b"w")
    missing = BaselineConfig(source="factory", factory="no_such_module_xyz:build", path="w.pt")
    with pytest.raises(ModelError, match=r"baseline.factory: .*no_such_module_xyz"):
        model_lineage(missing, tmp_path)


def test_training_code_is_part_of_the_key() -> None:
    from tasks.code_closure import import_closure

    # tasks.models (the architectures) is keyed through tasks.train's import of it
    assert "tasks.models" in import_closure("tasks.train")
    assert code_sha256("tasks.train") != code_sha256("tasks.data")
    assert code_sha256("tasks.train") == code_sha256("tasks.train")


def _manifest(directory: Path, inputs: dict) -> dict:
    return {
        "version": "3",
        "lineage": {"inputs": inputs},
        "variants": {"pruned": {"files": file_checksums(directory)}},
    }


def test_unchanged_needs_the_same_variants_files_and_input_hashes(tmp_path: Path) -> None:
    variant = tmp_path / "pruned"
    variant.mkdir()
    (variant / "model.onnx").write_bytes(b"onnx")
    (variant / "variant.json").write_text(json.dumps({"name": "pruned"}))
    inputs = {"data_sha256": "d" * 64, "model_sha256": "m" * 64, "model_rev": "v1"}
    previous = _manifest(variant, inputs)

    assert unchanged_since(previous, inputs, {"pruned": variant}) == "3"
    # another rev naming the same bytes is the same input
    assert unchanged_since(previous, inputs | {"model_rev": "main"}, {"pruned": variant}) == "3"
    assert unchanged_since(None, inputs, {"pruned": variant}) is None
    assert (
        unchanged_since(previous, inputs | {"data_sha256": "e" * 64}, {"pruned": variant}) is None
    )
    assert unchanged_since(previous, inputs, {"pruned": variant, "baseline": variant}) is None
    (variant / "model.onnx").write_bytes(b"onnY")
    assert unchanged_since(previous, inputs, {"pruned": variant}) is None


def test_files_equal_to_an_older_version_are_not_published_again(tmp_path: Path) -> None:
    """The issue's byte-identical tflite_int8 republished as version 3: version 2 held other
    files, and only the latest was compared."""
    variant = tmp_path / "pruned"
    variant.mkdir()
    (variant / "model.onnx").write_bytes(b"onnx")
    (variant / "variant.json").write_text(json.dumps({"name": "pruned"}))
    inputs = {"data_sha256": "d" * 64, "model_sha256": "m" * 64}
    first = _manifest(variant, inputs) | {"version": "1"}
    (variant / "model.onnx").write_bytes(b"onnY")
    second = _manifest(variant, inputs) | {"version": "2"}
    (variant / "model.onnx").write_bytes(b"onnx")  # tonight's build: version 1's bytes again
    newest_first = [second, first]
    assert unchanged_since(second, inputs, {"pruned": variant}) is None  # the old comparison
    assert unchanged_in(newest_first, inputs, {"pruned": variant}) == "1"
    (variant / "model.onnx").write_bytes(b"onnZ")
    assert unchanged_in(newest_first, inputs, {"pruned": variant}) is None
    assert unchanged_in([], inputs, {"pruned": variant}) is None


def test_a_variant_held_among_others_is_unchanged_only_when_asked(tmp_path: Path) -> None:
    """A search's pick alone: already published if the last version holds its files under any
    name; the nightly's set must equal the version's."""
    pick, other = tmp_path / "trial_4", tmp_path / "tflite_int8"
    for directory, payload in ((pick, b"int8"), (other, b"int8")):
        directory.mkdir()
        (directory / "model.tflite").write_bytes(payload)
        (directory / "variant.json").write_text("{}")
    inputs = {"data_sha256": "d" * 64, "model_sha256": "m" * 64}
    previous = {
        "version": "7",
        "lineage": {"inputs": inputs},
        "variants": {
            "baseline": {"files": {"model.onnx": {"sha256": "0" * 64, "size_bytes": 4}}},
            "tflite_int8": {"files": file_checksums(other)},
        },
    }

    assert unchanged_since(previous, inputs, {"trial_4": pick}) is None
    assert unchanged_since(previous, inputs, {"trial_4": pick}, each_held=True) == "7"
    (pick / "model.tflite").write_bytes(b"int9")
    assert unchanged_since(previous, inputs, {"trial_4": pick}, each_held=True) is None
    (pick / "model.tflite").write_bytes(b"int8")
    assert (
        unchanged_since(previous, inputs | {"data_sha256": "e" * 64}, {"p": pick}, each_held=True)
        is None
    )


def test_a_factory_baseline_records_its_module_source(tmp_path: Path) -> None:
    """baseline.json names the code every later stage rebuilds the model from, so a changed
    module changes the baseline's output (what `dvc repro` compares), not only new weights."""
    import tasks.models
    from tasks.io import read_json, sha256_file
    from tasks.train import BaselineResult, save_baseline

    kwargs = {"num_classes": 2, "in_channels": 1, "width": 4}
    result = BaselineResult(
        model=tasks.models.resnet_cnn(**kwargs),
        kind="train",
        factory=tasks.models.DEFAULT_FACTORY,
        factory_kwargs=kwargs,
        test_accuracy=0.5,
        macs=None,
        params=1,
    )
    save_baseline(result, BaselineConfig(), tmp_path / "baseline")
    record = read_json(tmp_path / "baseline" / "baseline.json")
    assert record["factory_source_sha256"] == sha256_file(Path(tasks.models.__file__))


def test_a_factory_trained_here_is_keyed_by_its_module_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lineage_trained_mod.py").write_text("def build():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = BaselineConfig(source="train", factory="lineage_trained_mod:build")
    first = model_lineage(cfg, tmp_path)
    assert (first["model"], first["factory"]) == ("train", "lineage_trained_mod:build")
    (tmp_path / "lineage_trained_mod.py").write_text("def build():\n    return 1\n")
    assert model_lineage(cfg, tmp_path)["factory_source_sha256"] != first["factory_source_sha256"]
    assert model_lineage(BaselineConfig(), tmp_path) == {"model": "train"}
    sys.modules.pop("lineage_trained_mod", None)

"""params.yaml parsing: the repo's file loads; every mistake is one line naming the dotted key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.errors import ConfigError
from tasks.params_file import load_params, parse_params
from tasks.params_model import Params
from tasks.techniques import builtin_techniques, technique_table
from tasks.techniques.distilled import DistilledConfig
from tasks.techniques.pruned import PrunedConfig
from tasks.techniques.tensorrt_fp16 import TensorrtFp16Config
from tasks.techniques.tflite_int8 import TfliteInt8Config
from tests.helpers import REPO_ROOT, write_params

REPO_PARAMS = REPO_ROOT / "params.yaml"


@pytest.fixture(scope="module")
def repo_raw() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text())


def _merged(raw: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of raw with extra merged in (written out here, independent of the code)."""
    out = copy.deepcopy(raw)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _error(raw: dict[str, Any], origin: str = "params.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw, origin=origin)
    message = str(info.value)
    assert message.strip(), "error message is empty"
    assert "\n" not in message, f"error message spans several lines: {message!r}"
    assert message.startswith(f"{origin}: "), message
    return message


# ---- the repo's params.yaml -------------------------------------------------------------------


def test_repo_params_load_with_their_values() -> None:
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    assert params.seed == 0
    assert params.data.source == "digits"
    assert params.data.image_size == 32
    assert params.data.channels == 1
    assert params.data.num_classes is None
    splits = params.data.splits
    assert (splits.train, splits.calib, splits.val, splits.test) == (0.4, 0.1, 0.1, 0.4)
    assert params.baseline.source == "train"
    assert params.train.width == 32
    assert params.train.lr == pytest.approx(0.003)
    assert set(params.variants) == {
        "tflite_int8",
        "pruned",
        "distilled",
        "tensorrt_fp16",
        "distilled_int8",
        "pruned_int8",
    }


def test_repo_variants_parse_into_their_technique_models() -> None:
    variants = load_params(REPO_PARAMS).variants
    assert isinstance(variants["tflite_int8"], TfliteInt8Config)
    assert isinstance(variants["pruned"], PrunedConfig)
    assert isinstance(variants["distilled"], DistilledConfig)
    assert isinstance(variants["tensorrt_fp16"], TensorrtFp16Config)
    assert variants["pruned"].ratio == pytest.approx(0.4)
    assert variants["distilled"].width == 12
    assert variants["distilled"].alpha == pytest.approx(0.7)
    assert variants["distilled_int8"].technique == "tflite_int8"
    assert variants["distilled_int8"].source == "distilled"
    assert variants["pruned_int8"].source == "pruned"
    assert variants["tflite_int8"].calibration_samples == 180


def test_params_are_frozen() -> None:
    params = load_params(REPO_PARAMS)
    with pytest.raises(Exception, match="frozen"):
        params.data.image_size = 64  # type: ignore[misc]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "{}\n"])
def test_an_empty_file_is_refused_not_taken_as_all_defaults(tmp_path: Path, text: str) -> None:
    """All defaults were no variants, UI approval and a registry beside the file: a run that
    waited a day for a reviewer with nothing to review."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: the file is empty (or only comments)")
    assert "variants:" in str(info.value)


@pytest.mark.parametrize(
    ("variants", "loop"),
    [
        ({"a": {"source": "b"}, "b": {"source": "a"}}, "a -> b -> a"),
        ({"a": {"source": "a"}}, "a -> a"),
        (
            {
                "x": {"source": "baseline"},
                "a": {"source": "b"},
                "b": {"source": "c"},
                "c": {"source": "b"},
            },
            "b -> c -> b",
        ),
    ],
)
def test_a_cycle_of_sources_is_refused_naming_it(
    repo_raw: dict[str, Any], variants: dict[str, Any], loop: str
) -> None:
    """It used to pass, and the night spun at full CPU in in_dependency_order for ever."""
    raw = dict(repo_raw)
    raw["variants"] = {name: {"technique": "pruned", **spec} for name, spec in variants.items()}
    raw["gates"] = {**raw["gates"], "per_variant": {}}
    raw["search"] = {}
    message = _error(raw)
    assert f"the sources form a cycle ({loop})" in message
    assert "must end at baseline" in message


def test_the_planner_never_spins_on_a_cycle() -> None:
    from types import SimpleNamespace

    from tasks.plan import in_dependency_order

    cycle = {"a": SimpleNamespace(source="b"), "b": SimpleNamespace(source="a")}
    with pytest.raises(ValueError, match="never reach baseline"):
        in_dependency_order(cycle)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["int8_é", "x" * 65, "-int8", "int8.v2"])
def test_a_variant_name_the_registry_or_a_file_system_would_refuse_is_refused_at_load(
    repo_raw: dict[str, Any], name: str
) -> None:
    raw = dict(repo_raw)
    raw["variants"] = {name: {"technique": "tflite_int8", "source": "baseline"}}
    raw["gates"] = {**raw["gates"], "per_variant": {}}
    raw["search"] = {}
    assert "use 1-64 ASCII letters, digits and '_'" in _error(raw)


@pytest.mark.parametrize(
    ("sections", "name"),
    [
        ({}, "digits-resnet"),
        ({"data": {"source": "npz", "path": "inputs/shoes_v2.npz"}}, "shoes-v2-resnet"),
        ({"baseline": {"source": "pt2", "path": "models/My Net.pt2"}}, "My-Net"),
        (
            {"baseline": {"source": "factory", "factory": "pkg.nets:build_net", "path": "w.pt"}},
            "build-net",
        ),
        (
            {"baseline": {"source": "pretrained", "arch": "mobilenet_v2"}},
            "mobilenet-v2",
        ),
        (
            {
                "baseline": {"source": "pt2", "path": "a.pt2"},
                "registry": {"model_name": "shop-classifier"},
            },
            "shop-classifier",
        ),
    ],
    ids=["digits", "npz", "pt2", "factory", "pretrained", "named"],
)
def test_an_unnamed_registry_entry_takes_the_models_name(
    sections: dict[str, Any], name: str
) -> None:
    """A user's own model is not published under the digits example's name."""
    data = {"normalize": "none"} if "baseline" in sections else {}
    raw = sections | {"data": sections.get("data", {}) | data}
    assert parse_params(raw).registry.model_name == name


# ---- unknown keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"sed": 1}, "sed"),
        ({"data": {"sizee": 16}}, "data.sizee"),
        ({"data": {"splits": {"tran": 0.6}}}, "data.splits.tran"),
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"baseline": {"pth": "x.pt2"}}, "baseline.pth"),
    ],
    ids=["top-level", "data.sizee", "data.splits.tran", "train.epoch", "baseline.pth"],
)
def test_unknown_key_names_the_dotted_key(
    repo_raw: dict[str, Any], extra: dict[str, Any], key: str
) -> None:
    message = _error(_merged(repo_raw, extra))
    assert message == f"params.yaml: {key}: unknown key"


def test_unknown_key_inside_a_variant_names_the_dotted_key(repo_raw: dict[str, Any]) -> None:
    raw = _merged(
        repo_raw,
        {"variants": {"small": {"technique": "pruned", "source": "baseline", "ratioo": 0.3}}},
    )
    assert _error(raw) == "params.yaml: variants.small.ratioo: unknown key"


def test_unknown_key_in_a_variant_named_like_its_technique(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"variants": {"pruned": {"ratioo": 0.3}}})
    assert _error(raw) == "params.yaml: variants.pruned.ratioo: unknown key"


# ---- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "detail"),
    [
        ({"train": {"lr": -0.1}}, "train.lr", "greater than 0 (got -0.1)"),
        ({"train": {"epochs": 0}}, "train.epochs", "greater than 0 (got 0)"),
        ({"data": {"image_size": 3}}, "data.image_size", "greater than or equal to 8 (got 3)"),
        ({"data": {"channels": 2}}, "data.channels", "1 or 3 (got 2)"),
        ({"seed": "abc"}, "seed", "valid integer"),
        ({"data": {"source": "csv"}}, "data.source", "'digits', 'npz', 'imagefolder' or 'idx'"),
        ({"data": {"splits": {"train": 0.0}}}, "data.splits.train", "greater than 0"),
    ],
    ids=[
        "negative-lr",
        "zero-epochs",
        "image-size-3",
        "channels-2",
        "seed-str",
        "source",
        "split-0",
    ],
)
def test_bad_value_names_the_key(
    repo_raw: dict[str, Any], extra: dict[str, Any], key: str, detail: str
) -> None:
    message = _error(_merged(repo_raw, extra))
    assert message.startswith(f"params.yaml: {key}: "), message
    assert detail in message


def test_split_fractions_must_sum_to_one(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"data": {"splits": {"train": 0.3}}})
    message = _error(raw)
    assert message == "params.yaml: data.splits: split fractions must add up to 1.0, got 0.900"


def test_ratio_above_one_names_the_variant_key(repo_raw: dict[str, Any]) -> None:
    raw = _merged(
        repo_raw,
        {"variants": {"half": {"technique": "pruned", "source": "baseline", "ratio": 1.5}}},
    )
    message = _error(raw)
    assert message.startswith("params.yaml: variants.half.ratio: "), message
    assert "less than 1 (got 1.5)" in message


def test_ratio_above_one_in_the_repo_pruned_variant(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"variants": {"pruned": {"ratio": 1.5}}})
    assert _error(raw).startswith("params.yaml: variants.pruned.ratio: ")


def test_mean_length_must_match_channels(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"data": {"mean": [0.5, 0.5]}})
    message = _error(raw)
    assert "mean needs 1 value(s), got 2" in message


def test_npz_source_needs_a_path(repo_raw: dict[str, Any]) -> None:
    message = _error(_merged(repo_raw, {"data": {"source": "npz"}}))
    assert "source 'npz' needs data.path" in message


def test_pt2_baseline_needs_a_path(repo_raw: dict[str, Any]) -> None:
    message = _error(_merged(repo_raw, {"baseline": {"source": "pt2"}}))
    assert "source 'pt2' needs baseline.path" in message


@pytest.mark.parametrize(
    ("extra", "origin"),
    [
        ({"baseline": {"source": "pt2", "path": "m.pt2"}}, "baseline.source pt2"),
        (
            {"baseline": {"source": "factory", "factory": "pkg.m:build", "path": "w.pt"}},
            "baseline.source factory",
        ),
        ({"fetch": {"repo": "git@x:y.git", "model_path": "m.pt2"}}, "fetch.model_path"),
        (  # a mean without its std is not a stated normalisation either
            {"baseline": {"source": "pt2", "path": "m.pt2"}, "data": {"mean": [0.5]}},
            "baseline.source pt2",
        ),
    ],
)
def test_imported_model_must_state_its_normalisation(
    repo_raw: dict[str, Any], extra: dict[str, Any], origin: str
) -> None:
    message = _error(_merged(repo_raw, extra))
    assert message.startswith(f"params.yaml: data.normalize: an imported model ({origin})")
    for choice in ("data.mean and data.std", "data.normalize: none", "data.normalize: train"):
        assert choice in message


@pytest.mark.parametrize(
    "data",
    [{"normalize": "none"}, {"normalize": "train"}, {"mean": [0.1], "std": [0.3]}],
)
def test_imported_model_with_stated_normalisation_loads(
    repo_raw: dict[str, Any], data: dict[str, Any]
) -> None:
    params = parse_params(
        _merged(repo_raw, {"baseline": {"source": "pt2", "path": "m.pt2"}, "data": data})
    )
    assert params.baseline.source == "pt2"


def test_trained_baseline_keeps_the_train_split_default(repo_raw: dict[str, Any]) -> None:
    assert parse_params(repo_raw).data.normalize is None  # prepare uses train-split statistics


def test_normalize_and_mean_std_together_are_refused(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"data": {"normalize": "none", "mean": [0.5], "std": [0.2]}})
    assert "data: normalize 'none' and mean/std both given; keep one of them" in _error(raw)


def test_factory_must_be_module_colon_function(repo_raw: dict[str, Any]) -> None:
    raw = _merged(
        repo_raw, {"baseline": {"source": "factory", "factory": "mypkg.build", "path": "w.pt"}}
    )
    message = _error(raw)
    assert "'package.module:function'" in message
    assert "'mypkg.build'" in message


# ---- techniques and the variant graph ---------------------------------------------------------


def test_unknown_technique_lists_the_valid_ones(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"variants": {"x": {"technique": "magic", "source": "baseline"}}})
    message = _error(raw)
    assert message.startswith("params.yaml: variants.x: unknown technique 'magic'"), message
    assert "expected one of " + ", ".join(builtin_techniques()) in message
    for technique in builtin_techniques():
        assert technique in message


def test_missing_technique_lists_the_valid_ones(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"variants": {"x": {"source": "baseline"}}})
    message = _error(raw)
    assert "variants.x: missing 'technique'" in message
    assert ", ".join(builtin_techniques()) in message


def test_source_naming_a_missing_variant_is_refused(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"variants": {"x": {"technique": "tflite_int8", "source": "nosuch"}}})
    message = _error(raw)
    assert "variants.x.source: 'nosuch' is not 'baseline' nor a variant" in message


TABLE = technique_table()
TORCH_MAKERS = ", ".join(sorted(n for n, t in TABLE.items() if t.produces_torch))


@pytest.mark.parametrize("technique", [n for n, t in TABLE.items() if t.starts_from == "torch"])
@pytest.mark.parametrize("source", ["distilled", "tflite_int8"])
def test_torch_technique_needs_a_source_with_a_torch_model(
    repo_raw: dict[str, Any], technique: str, source: str
) -> None:
    raw = _merged(repo_raw, {"variants": {"x": {"technique": technique, "source": source}}})
    message = _error(raw)
    assert {"clustered", "low_rank", "pruned"} <= set(TORCH_MAKERS.split(", "))
    assert (
        f"variants.x.source: technique '{technique}' starts from a torch model and "
        f"'{source}' has none (use baseline or a variant of: {TORCH_MAKERS})"
    ) in message


def test_torch_technique_may_start_from_a_pruned_variant(repo_raw: dict[str, Any]) -> None:
    raw = _merged(repo_raw, {"variants": {"x": {"technique": "clustered", "source": "pruned"}}})
    assert parse_params(raw).variants["x"].source == "pruned"


def test_int8_of_an_int8_variant_is_refused(repo_raw: dict[str, Any]) -> None:
    raw = _merged(
        repo_raw, {"variants": {"x": {"technique": "tflite_int8", "source": "tflite_int8"}}}
    )
    message = _error(raw)
    assert "variants.x.source: 'tflite_int8' does not produce ONNX" in message
    onnx_makers = ", ".join(sorted(n for n, t in TABLE.items() if t.produces_onnx))
    assert {"clustered", "distilled", "low_rank", "pruned"} <= set(onnx_makers.split(", "))
    assert f"baseline, {onnx_makers}" in message


def test_int8_of_a_tensorrt_variant_is_refused(repo_raw: dict[str, Any]) -> None:
    raw = _merged(
        repo_raw, {"variants": {"x": {"technique": "tflite_int8", "source": "tensorrt_fp16"}}}
    )
    assert "variants.x.source: 'tensorrt_fp16' does not produce ONNX" in _error(raw)


def test_variant_may_not_be_called_baseline(repo_raw: dict[str, Any]) -> None:
    raw = _merged(
        repo_raw, {"variants": {"baseline": {"technique": "tflite_int8", "source": "baseline"}}}
    )
    assert (
        "variants.baseline: use 1-64 ASCII letters, digits and '_' in variant names "
        "(starting with a letter or digit), not 'baseline'" in _error(raw)
    )


def test_int8_of_pruned_and_distilled_is_accepted(repo_raw: dict[str, Any]) -> None:
    params = parse_params(repo_raw)
    assert params.variants["pruned_int8"].source == "pruned"
    assert params.variants["distilled_int8"].source == "distilled"


# ---- overrides and files ----------------------------------------------------------------------


def test_overrides_merge_deeply() -> None:
    params = load_params(
        REPO_PARAMS,
        {
            "data": {"splits": {"train": 0.5, "test": 0.3}},
            "train": {"epochs": 2},
            "variants": {"pruned": {"ratio": 0.25}},
        },
    )
    splits = params.data.splits
    assert (splits.train, splits.calib, splits.val, splits.test) == (0.5, 0.1, 0.1, 0.3)
    assert params.data.image_size == 32  # sibling keys survive
    assert params.train.epochs == 2
    assert params.train.width == 32
    assert params.train.lr == pytest.approx(0.003)
    assert params.variants["pruned"].ratio == pytest.approx(0.25)
    assert params.variants["pruned"].finetune_epochs == 5  # sibling of the overridden key
    assert len(params.variants) == 6  # other variants kept


def test_override_with_an_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_params(REPO_PARAMS, {"train": {"epochz": 2}})
    assert str(info.value) == f"{REPO_PARAMS}: train.epochz: unknown key"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == f"{path}: file not found"


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        (
            "data: [1, 2\n  image_size: }\n",
            "2:13",
            "but got ':' (while parsing a flow sequence at line 1)",
        ),
        ("seed: 1\nmodel: a: b\n", "2:9", "mapping values are not allowed here"),
        ('seed: 1\ndata:\n  path: "open\n', "4:1", "while scanning a quoted scalar at line 3"),
    ],
    ids=["unclosed-bracket", "mapping-in-a-value", "unclosed-quote"],
)
def test_invalid_yaml_names_the_line_and_column(
    tmp_path: Path, text: str, position: str, problem: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{position}: not valid YAML: "), message
    assert problem in message, message
    assert "\n" not in message


def test_validation_errors_name_the_line_of_the_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ndata:\n  image_size: 16\n  channels: 1\n  image_sise: 16\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == f"{path}:5: data.image_sise: unknown key"


def test_nested_gate_errors_name_the_line_of_the_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("gates:\n  per_variant:\n    pruned:\n      max_accuracy_dropp: 1\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == f"{path}:4: gates.per_variant.pruned.max_accuracy_dropp: unknown key"


def test_a_value_from_an_override_names_no_line_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ndata:\n  image_size: 16\n")
    with pytest.raises(ConfigError) as info:
        load_params(path, {"data": {"image_size": 3}})
    assert str(info.value).startswith(f"{path}: data.image_size: "), str(info.value)


def test_non_mapping_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == f"{path}: expected a mapping at the top level"


def test_file_errors_carry_the_file_as_origin(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"image_size": 3}}))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}:2: data.image_size: ")


def test_unknown_key_in_a_per_variant_gate_names_the_dotted_key(
    repo_raw: dict[str, Any],
) -> None:
    raw = copy.deepcopy(repo_raw)
    raw.setdefault("gates", {})["per_variant"] = {"distilled": {"max_accuracy_dropp": 1.0}}
    assert _error(raw) == "params.yaml: gates.per_variant.distilled.max_accuracy_dropp: unknown key"


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_unreadable_params_file_names_the_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "params.yaml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"seed: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_factory_module_beside_params_yaml_is_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's `factory: inputs.my_model:build` with `inputs/my_model.py` beside params.yaml:
    the `modelpress` command's sys.path holds neither that folder nor the working directory."""
    import sys

    from tasks.lineage import module_source_sha256
    from tasks.models import build_from_factory

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "inputs").mkdir()
    source = "from torch import nn\n\ndef build(classes):\n    return nn.Linear(4, classes)\n"
    (tmp_path / "inputs" / "beside_params_model.py").write_text(source)
    params = write_params(tmp_path)
    load_params(params)
    model = build_from_factory("inputs.beside_params_model:build", {"classes": 3})
    assert model.out_features == 3
    assert len(module_source_sha256("inputs.beside_params_model", "baseline.factory")) == 64

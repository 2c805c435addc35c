"""The technique table: built-in techniques, one params.yaml names and an installed one are found,
checked and dispatched the same way; every mistake is one line naming where it is."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tasks.errors import ConfigError
from tasks.params_file import load_params, parse_params
from tasks.techniques import (
    BUILTIN,
    Technique,
    builtin_techniques,
    installed_techniques,
    runtimes_produced,
    technique_named,
    technique_table,
)
from tasks.techniques.context import BuildContext
from tasks.techniques.pruned import PrunedConfig
from tests.helpers import PLUGIN_TECHNIQUE, REPO_ROOT, write_params

PLUGIN = PLUGIN_TECHNIQUE
BF16 = {"technique": "bf16_weights", "source": "baseline"}


@pytest.fixture(scope="module")
def repo_raw() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _with(raw: dict[str, Any], **top: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    variants = top.pop("variants", {})
    out.update(top)
    out["variants"] = out["variants"] | variants
    return out


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw, origin="params.yaml")
    message = str(info.value)
    assert "\n" not in message, f"error message spans several lines: {message!r}"
    assert message.startswith("params.yaml: "), message
    return message


# ---- the built-in table -----------------------------------------------------------------------


KNOWN = [  # the built-ins this test knows; one added later has its own test and the contract's
    "tflite_int8",
    "pruned",
    "distilled",
    "tensorrt_fp16",
    "openvino_int8",
    "tflite_fp16",
    "tflite_dynamic",
    "onnx_int8",
    "qat_int8",
    "clustered",
    "low_rank",
]


def test_builtin_table_in_its_order_with_what_each_declares() -> None:
    table = {name: t for name, t in builtin_techniques().items() if name in KNOWN}
    assert list(table) == KNOWN
    torch_starting = {"pruned", "distilled", "qat_int8", "clustered", "low_rank"}
    assert {n for n, t in table.items() if t.starts_from == "torch"} == torch_starting
    assert {n for n, t in table.items() if t.produces_onnx} == {
        "pruned",
        "distilled",
        "clustered",
        "low_rank",
    }
    # a torch technique may start from these (the Deep Compression chain: pruned → clustered)
    assert {n for n, t in table.items() if t.produces_torch} == {"pruned", "clustered", "low_rank"}
    assert {n: t.runtime for n, t in table.items()} == {
        "tflite_int8": "litert",
        "pruned": "onnxruntime",
        "distilled": "onnxruntime",
        "tensorrt_fp16": "tensorrt",
        "openvino_int8": "openvino",
        "tflite_fp16": "litert",
        "tflite_dynamic": "litert",
        "onnx_int8": "onnxruntime",
        "qat_int8": "litert",
        "clustered": "onnxruntime",
        "low_rank": "onnxruntime",
    }
    assert {n: t.build_on for n, t in table.items() if t.build_on} == {"tensorrt_fp16": "cuda"}
    assert runtimes_produced(builtin_techniques())[:4] == (
        "onnxruntime",
        "litert",
        "tensorrt",
        "openvino",
    )
    # the hard-swish rewrite, and the ONNX → LiteRT conversion the LiteRT techniques share
    assert table["tflite_int8"].uses == (
        "tasks.int8_friendly",
        "tasks.tflite_convert",
        "tasks.litert_debugger",  # float_fallback's layer errors and requantization
    )
    assert (
        table["tflite_fp16"].uses
        == table["tflite_dynamic"].uses
        == (
            "tasks.techniques.litert_weights",  # the conversion the two share
            "tasks.tflite_convert",
        )
    )
    for name, technique in table.items():
        assert technique.modules == tuple(
            sorted(
                {
                    f"tasks.techniques.{name}",
                    "tasks.technique",
                    "tasks.techniques.context",  # the build context's loaders
                    *technique.uses,
                }
            )
        )
        assert all(importlib.util.find_spec(module) for module in technique.uses)


def test_reading_the_table_imports_no_torch() -> None:
    """params.yaml is validated where torch is absent (an edge runner, the CLI's quick commands)."""
    import sys

    from tests import processes

    script = (
        "import sys; from tasks.params_file import load_params; load_params('params.yaml'); "
        "print('torch' in sys.modules, 'tensorflow' in sys.modules)"
    )
    done = processes.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_unknown_technique_names_the_known_ones_in_one_line(repo_raw: dict[str, Any]) -> None:
    message = _error(
        _with(repo_raw, variants={"x": {"technique": "sorcery", "source": "baseline"}})
    )
    assert message == (
        "params.yaml: variants.x: unknown technique 'sorcery'; "
        f"expected one of {', '.join(BUILTIN)}"
    )
    with pytest.raises(ConfigError, match=r"^unknown technique 'sorcery'; expected one of tflite"):
        technique_named("sorcery")


def test_a_declaration_that_contradicts_itself_is_refused() -> None:
    with pytest.raises(TypeError, match=r"PrunedConfig.technique must be Literal\['shrink'\]"):
        Technique(
            name="shrink",
            config=PrunedConfig,
            starts_from="torch",
            runtime="onnxruntime",
            produces_onnx=True,
            build=lambda context, config: None,
        )
    with pytest.raises(TypeError, match="produces_onnx needs runtime 'onnxruntime'"):
        Technique(
            name="pruned",
            config=PrunedConfig,
            starts_from="torch",
            runtime="litert",
            produces_onnx=True,
            build=lambda context, config: None,
        )


# ---- a technique named in params.yaml ---------------------------------------------------------


def test_referenced_technique_joins_the_table_after_the_builtin_ones(
    repo_raw: dict[str, Any],
) -> None:
    params = parse_params(
        _with(
            repo_raw,
            techniques=[PLUGIN],
            variants={
                "bf16": BF16,
                # a plugin that produces ONNX is a source like pruned and distilled
                "bf16_int8": {"technique": "tflite_int8", "source": "bf16"},
            },
        )
    )
    assert type(params.variants["bf16"]).__name__ == "Bf16WeightsConfig"
    assert params.variants["bf16"].rounding == "nearest"
    assert params.techniques == [PLUGIN]
    assert list(technique_table((PLUGIN,)))[-1] == "bf16_weights"
    # without the reference, the same variant is an unknown technique
    message = _error(_with(repo_raw, variants={"bf16": BF16}))
    assert "variants.bf16: unknown technique 'bf16_weights'" in message


def test_referenced_technique_is_validated_like_a_builtin(repo_raw: dict[str, Any]) -> None:
    bad_key = _with(repo_raw, techniques=[PLUGIN], variants={"b": BF16 | {"roundin": "x"}})
    assert _error(bad_key) == "params.yaml: variants.b.roundin: unknown key"
    bad_value = _with(repo_raw, techniques=[PLUGIN], variants={"b": BF16 | {"rounding": "up"}})
    assert _error(bad_value).startswith("params.yaml: variants.b.rounding: Input should be")
    unknown = _error(_with(repo_raw, techniques=[PLUGIN], variants={"b": {"technique": "zz"}}))
    assert unknown.endswith(f"expected one of {', '.join(BUILTIN)}, bf16_weights")
    from_int8 = _with(
        repo_raw, techniques=[PLUGIN], variants={"b": BF16 | {"source": "tflite_int8"}}
    )
    assert "variants.b.source: 'tflite_int8' does not produce ONNX (use one of: baseline, " in (
        _error(from_int8)
    )
    assert "bf16_weights, clustered, distilled, low_rank, pruned variants)" in _error(from_int8)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("tests.plugins.bf16_weights", "expected 'package.module:OBJECT'"),
        ("no_such_pkg.sharpen:TECHNIQUE", "cannot import 'no_such_pkg.sharpen' (No module named"),
        ("tests.plugins.bf16_weights:NOPE", "module 'tests.plugins.bf16_weights' has no 'NOPE'"),
        (
            "tests.plugins.bf16_weights:build",
            "is a function, expected a tasks.techniques.Technique",
        ),
        ("tasks.techniques.pruned:TECHNIQUE", None),  # the same object: harmless
    ],
    ids=["no-colon", "no-module", "no-object", "not-a-technique", "builtin-again"],
)
def test_bad_reference_is_one_line_naming_the_field(
    tmp_path: Path, reference: str, expected: str | None
) -> None:
    path = write_params(tmp_path, {"techniques": [PLUGIN, reference]})
    if expected is None:
        assert load_params(path).techniques == [PLUGIN, reference]
        return
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message, message
    line = path.read_text().splitlines().index("techniques:") + 1
    assert message.startswith(f"{path}:{line + 2}: techniques.1: "), message
    assert expected in message


def test_a_second_technique_with_a_builtin_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "my_pruned.py").write_text(
        "from tasks.techniques import Technique\n"
        "from tasks.techniques.pruned import PrunedConfig, build\n"
        "TECHNIQUE = Technique(name='pruned', config=PrunedConfig, starts_from='torch',\n"
        "                      runtime='onnxruntime', produces_onnx=True, build=build)\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(tmp_path))
        path = write_params(tmp_path, {"techniques": ["my_pruned:TECHNIQUE"]})
        with pytest.raises(ConfigError) as info:
            load_params(path)
    assert str(info.value).endswith(
        "techniques: my_pruned:TECHNIQUE: technique 'pruned' is already defined by "
        "tasks.techniques.pruned"
    ), info.value


# ---- a technique an installed package registers -----------------------------------------------


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An installed distribution's metadata on sys.path, registering the test plugin under the
    entry-point group, as `pip install` of a package declaring it would leave it."""
    info = tmp_path / "site" / "mp_bf16-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mp-bf16\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[modelpress.techniques]\nbf16_weights = {PLUGIN}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    installed_techniques.cache_clear()
    yield
    installed_techniques.cache_clear()


def test_installed_technique_is_found_without_naming_it(
    installed_plugin: None, repo_raw: dict[str, Any]
) -> None:
    assert list(installed_techniques()) == ["bf16_weights"]
    params = parse_params(_with(repo_raw, variants={"bf16": BF16}))
    assert type(params.variants["bf16"]).__name__ == "Bf16WeightsConfig"
    # named in params.yaml as well: the same object, found twice, is one technique
    assert parse_params(_with(repo_raw, techniques=[PLUGIN], variants={"bf16": BF16}))


# ---- the dispatch -----------------------------------------------------------------------------


def test_compress_dispatches_a_referenced_technique(tiny_workspace: Path, tmp_path: Path) -> None:
    from tasks.compress import compress
    from tasks.data import load_split
    from tasks.evaluate import run_variant
    from tasks.variant import read_record

    path = write_params(tmp_path, {"techniques": [PLUGIN], "variants": {"bf16": BF16}})
    params = load_params(path)
    out = tmp_path / "bf16"
    record = compress(
        params,
        "bf16",
        tiny_workspace / "data",
        tiny_workspace / "models" / "baseline",
        tiny_workspace / "variants" / "baseline",
        out,
    )
    assert record.status == "ok" and record == read_record(out)
    assert (record.technique, record.runtime, record.source) == (
        "bf16_weights",
        "onnxruntime",
        "baseline",
    )
    assert record.extra["weights_changed"] > 1000
    test = load_split(tiny_workspace / "data", "test")
    base = run_variant(tiny_workspace / "variants" / "baseline", test.x)
    rounded = run_variant(out, test.x)
    assert 0 < np.abs(base - rounded).max() < 0.1 * np.abs(base).max()
    assert (base.argmax(1) == rounded.argmax(1)).mean() >= 0.98


def test_build_context_away_from_the_data_reads_the_source_record(tiny_workspace: Path) -> None:
    """On a runner (no prepared data, no baseline): preprocess from the source's variant.json."""
    from tasks.data import load_preprocess

    here = BuildContext(
        name="x",
        seed=0,
        source_dir=tiny_workspace / "variants" / "baseline",
        out_dir=tiny_workspace / "unused",
    )
    assert here.teacher() is None and here.baseline_sha256() is None
    expected = load_preprocess(tiny_workspace / "data")
    assert here.preprocess().mean == expected.mean and here.preprocess().std == expected.std
    with pytest.raises(Exception, match="split 'test' asked for where no data was prepared"):
        here.split("test")


def test_a_technique_declaring_an_unknown_runtime_is_refused_when_declared() -> None:
    """'tvm' used to be accepted and failed only when its first variant was evaluated; the
    declaration's list of runtimes is the runtime table's."""
    from tasks.runtimes import RUNTIMES
    from tasks.technique import RUNTIME_NAMES

    assert set(RUNTIME_NAMES) == set(RUNTIMES)
    from typing import Literal

    from tasks.techniques import TechniqueConfig

    class CompiledConfig(TechniqueConfig):
        technique: Literal["compiled"]

    with pytest.raises(TypeError, match=r"runtime 'tvm' is not one ModelPress evaluates; "
                       r"expected one of onnxruntime, litert, openvino, tensorrt"):  # fmt: skip
        Technique(
            name="compiled", config=CompiledConfig, starts_from="onnx", runtime="tvm",
            produces_onnx=False, build=lambda context, config: None,
        )  # fmt: skip


def test_the_readme_technique_table_lists_every_builtin_technique_with_its_runtime() -> None:
    """The README's table is kept by hand: it lacked qat_int8, clustered and low_rank. Every
    built-in technique has a row, and the row's runtime is the one it declares."""
    runtime_words = {
        "onnxruntime": "ONNX Runtime",
        "litert": "LiteRT",
        "openvino": "OpenVINO",
        "tensorrt": "TensorRT",
    }
    text = (REPO_ROOT / "README.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line.rsplit("|", 2)[1]
        for line in text.splitlines()
        if line.startswith("| `")
    }
    for name, technique in builtin_techniques().items():
        assert name in rows, f"README's technique table has no row for {name}"
        assert runtime_words[technique.runtime] in rows[name], (name, rows[name])

"""The search's plain parts: the search: section's checks, trial variants named by content, the
known-good first trials, and the Pareto front (on numbers)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tasks.errors import ConfigError
from tasks.params_file import load_params
from tasks.pareto import pareto_front
from tasks.search import known_good, plan_variants
from tasks.techniques import technique_table
from tests.helpers import write_params

SEARCH = {
    "chains": [["tflite_int8"], ["pruned", "tflite_int8"]],
    "space": {
        "pruned.ratio": {"low": 0.2, "high": 0.7},
        "pruned.round_to": [4, 8, 16],
        "tflite_int8.calibration_samples": [64, 128],
    },
    "fixed": {"pruned.finetune_epochs": 1},
}


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = write_params(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["search"] = SEARCH  # replaces params.yaml's, whose space names other chains
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_quantization_aware_training_after_pruning_is_a_chain(params_file: Path) -> None:
    """The escalation past post-training int8 for a pruned model: qat_int8 from the pruned step."""
    chains = [["tflite_int8"], ["pruned", "tflite_int8"], ["pruned", "qat_int8"]]
    search = load_params(params_file, {"search": {"chains": chains}}).search
    assert search is not None
    planned = plan_variants(
        ["pruned", "qat_int8"], {"pruned.ratio": 0.3}, search, technique_table()
    )
    (pruned, pruned_cfg), (qat, qat_cfg) = planned.items()
    assert pruned_cfg.source == "baseline" and qat_cfg.source == pruned
    assert qat.startswith("pruned_qat_int8_")


def test_chains_given_as_an_override_leave_out_the_other_techniques_knobs(
    params_file: Path,
) -> None:
    """`modelpress search --chain tflite_int8` on a file that also searches pruning."""
    only_int8 = load_params(params_file, {"search": {"chains": [["tflite_int8"]]}}).search
    assert only_int8 is not None
    assert only_int8.chains == [["tflite_int8"]]
    assert set(only_int8.space) == {"tflite_int8.calibration_samples"}
    assert only_int8.fixed == {}
    # a knob the override itself names for a technique in no chain is still refused
    with pytest.raises(ConfigError, match=r"technique 'pruned' is in no search\.chains entry"):
        load_params(
            params_file,
            {"search": {"chains": [["tflite_int8"]], "fixed": {"pruned.round_to": 8}}},
        )


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        (
            {"space": {"pruned.ratioo": [0.3]}},
            "search.space.pruned.ratioo: unknown knob of technique 'pruned'; its knobs: ratio, ",
        ),
        (
            {"space": {"pruned.ratio": {"low": 0.2, "high": 1.5}}},
            "search.space.pruned.ratio: Input should be less than 1 (got 1.5)",
        ),
        (
            {"space": {"pruned.ratio": {"low": 0.5, "high": 0.2}}},
            "search.space.pruned.ratio: low 0.5 is above high 0.2",
        ),
        ({"space": {"pruned.ratio": {"low": 0.2, "hi": 0.5}}}, "search.space.pruned.ratio"),
        (
            {"space": {"sharpen.amount": [1]}},
            "search.space.sharpen.amount: expected 'technique.knob'",
        ),
        ({"space": {"distilled.width": [8]}}, "technique 'distilled' is in no search.chains entry"),
        (
            {"fixed": {"pruned.round_to": 0}},
            "search.fixed.pruned.round_to: Input should be greater than 0",
        ),
        (
            {"chains": [["tflite_int8", "pruned"]]},
            "search.chains.0: 'pruned' starts from a torch model and 'tflite_int8' has none; "
            "put it first or after one of: ",
        ),
        ({"chains": [["int4"]]}, "search.chains.0: unknown technique 'int4'"),
        ({"constraints": {"max_drop": 1.0}}, "search.constraints.max_drop: unknown key"),
        ({"objective": {"runner": "phone"}}, "search.objective.runner: 'phone' is not a profile"),
        ({"budget": {"trials": None}}, "search.budget: give trials and/or seconds"),
    ],
)
def test_a_bad_search_entry_is_one_line_naming_it(
    params_file: Path, search: dict, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_params(params_file, {"search": search})
    message = str(error.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(str(params_file))


def test_fixed_knobs_are_checked_together(params_file: Path) -> None:
    """QAT's freeze_bn_after <= epochs holds for the values a trial gets together: one epoch
    frozen after one is valid, though the default freeze_bn_after (2) alone is not with it."""
    qat = {"chains": [["pruned", "qat_int8"]], "space": {"pruned.ratio": [0.3]}}
    together = {"qat_int8.epochs": 1, "qat_int8.freeze_bn_after": 1}
    fixed = {**together, "qat_int8.freeze_observers_after": 1}
    search = load_params(params_file, {"search": {**qat, "fixed": fixed}}).search
    assert search is not None and search.fixed["qat_int8.epochs"] == 1
    too_late = {**fixed, "qat_int8.freeze_bn_after": 2}
    with pytest.raises(ConfigError) as error:
        load_params(params_file, {"search": {**qat, "fixed": too_late}})
    assert "freeze_bn_after must be at most epochs (1)" in str(error.value)
    bad_value = {**fixed, "qat_int8.lr": -1.0}  # found while checking epochs: named as lr
    with pytest.raises(ConfigError) as error:
        load_params(params_file, {"search": {**qat, "fixed": bad_value}})
    assert "search.fixed.qat_int8.lr: Input should be greater than 0 (got -1.0)" in str(error.value)


def test_trial_variants_are_named_by_their_content(params_file: Path) -> None:
    params = load_params(params_file)
    table = technique_table()
    knobs = {"pruned.ratio": 0.3, "pruned.round_to": 8, "tflite_int8.calibration_samples": 64}
    first = plan_variants(["pruned", "tflite_int8"], knobs, params.search, table)
    again = plan_variants(["pruned", "tflite_int8"], dict(knobs), params.search, table)
    other = plan_variants(
        ["pruned", "tflite_int8"],
        knobs | {"tflite_int8.calibration_samples": 128},
        params.search,
        table,
    )
    assert list(first) == list(
        again
    )  # equal configs share names, so the compress cache serves them
    (pruned, int8), (pruned_other, int8_other) = list(first), list(other)
    assert pruned == pruned_other and int8 != int8_other  # only the changed step is new
    assert first[int8].source == pruned
    assert first[pruned].ratio == 0.3 and first[pruned].finetune_epochs == 1  # fixed knob applied
    assert first[int8].calibration_samples == 64


def test_known_good_trials_come_first_and_stay_inside_the_space(params_file: Path) -> None:
    params = load_params(params_file)
    trials = known_good(params.search, params.variants, technique_table())
    # chain by chain, cheapest first: the tiny params.yaml's tflite_int8 (calibration 64), then
    # the chain pruned → int8, which no variant describes: its defaults (ratio 0.4, round_to 8;
    # calibration 200 is no choice, so the sampler picks it)
    assert trials == [
        {"chain": "tflite_int8", "tflite_int8.calibration_samples": 64},
        {"chain": "pruned+tflite_int8", "pruned.ratio": 0.4, "pruned.round_to": 8},
    ]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def test_pareto_front_on_known_points() -> None:
    # (-accuracy, p50 ms, size)
    points = [
        (-0.99, 2.0, 300.0),  # most accurate
        (-0.98, 1.0, 300.0),  # faster, a little less accurate
        (-0.98, 1.5, 300.0),  # dominated by the one above
        (-0.90, 1.0, 100.0),  # smallest
        (-0.90, 1.0, 100.0),  # the same numbers twice: both stay
        (-0.80, 3.0, 400.0),  # dominated by everything
    ]
    assert pareto_front(points) == [0, 1, 3, 4]


def test_pareto_front_is_exactly_the_non_dominated_points() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = [tuple(float(v) for v in row) for row in rng.integers(0, 6, size=(15, 3))]
        front = set(pareto_front(points))
        for i, j in itertools.permutations(range(len(points)), 2):
            if i in front:
                assert not _dominates(points[j], points[i])
        for i in set(range(len(points))) - front:
            assert any(_dominates(points[j], points[i]) for j in front)


def _metrics_row(accuracy: float, size: int) -> Any:
    from tasks.evaluate import VariantMetrics

    return VariantMetrics(
        status="ok",
        technique="pruned",
        source="baseline",
        runtime="onnxruntime",
        accuracy=accuracy,
        accuracy_drop=None,
        agreement=0.95,
        kl_divergence=None,
        per_class_accuracy=None,
        size_bytes=size,
        compressed_size_bytes=size // 2,
        size_ratio=None,
        params=None,
        macs=None,
        cpu_fp16_accuracy=None,
        reason=None,
        split="test",
        samples=100,
    )


def test_a_trial_says_how_far_it_fell_short_of_each_gate(params_file: Path) -> None:
    from tasks.benchmark import BenchmarkRow
    from tasks.expectations import Check, SuiteResult
    from tasks.search import TrialPlan
    from tasks.search_results import best_attempt, best_feasible, outcome_of, study_values

    params = load_params(params_file)
    plan = TrialPlan(
        7,
        ("pruned",),
        {"pruned.ratio": 0.5},
        plan_variants(["pruned"], {"pruned.ratio": 0.5}, params.search, technique_table()),
    )
    name = plan.variant
    labels = np.arange(100) % 10
    base, variant = labels.copy(), labels.copy()
    variant[:4] = (variant[:4] + 1) % 10  # 4 of 100 wrong where the baseline was right ...
    base[10:12] = (base[10:12] + 1) % 10  # ... and 2 right where the baseline was wrong
    predictions = {"labels": labels, "pred__baseline": base, f"pred__{name}": variant}
    bench = [BenchmarkRow(variant=name, runner="edge-cpu", status="ok", p50_ms=0.8)]
    checks = [
        Check(
            "drop_upper <= max_accuracy_drop",
            "expect_column_max_to_be_between",
            "drop_upper",
            False,
            9.8,
            1.0,
        ),
        Check(
            "agreement >= min_agreement",
            "expect_column_min_to_be_between",
            "agreement",
            False,
            0.95,
            0.97,
        ),
        Check(
            "accuracy >= min_accuracy",
            "expect_column_min_to_be_between",
            "accuracy",
            True,
            0.96,
            0.9,
        ),
    ]
    suites = {name: SuiteResult(f"variant.{name}", False, checks)}
    metrics = {name: _metrics_row(0.96, 5000)}
    short = outcome_of(plan, metrics, predictions, bench, suites, "p50", "edge-cpu", 0.95)
    assert not short.feasible and short.objective == 0.8 and short.drop == 2.0
    # Tango's bound on 4 lost and 2 gained of 100: wider than the 5.5 McNemar gave given 6 discordant
    assert short.drop_upper is not None and 6.0 < short.drop_upper < 10.0
    assert short.shortfalls == [
        "drop_upper <= max_accuracy_drop: 9.8 vs 1 (short by 8.8)",
        "agreement >= min_agreement: 0.95 vs 0.97 (short by 0.02)",
    ]
    assert short.violation == pytest.approx(8.8 / 1.0 + 0.02 / 0.97, abs=1e-6)
    assert study_values(short) == [0.8, short.drop_upper]
    passed = {name: SuiteResult(f"variant.{name}", True, checks[2:])}
    by_size = outcome_of(plan, metrics, predictions, bench, passed, "size", "edge-cpu", 0.95)
    assert by_size.feasible and by_size.objective == 5000 and by_size.violation == 0
    assert best_feasible([short, by_size]) is by_size
    assert best_feasible([short]) is None and best_attempt([short]) is short


def test_modelpress_search_refuses_a_bad_knob_in_one_line_before_starting_prefect(
    params_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    raw = yaml.safe_load(params_file.read_text())
    raw["search"]["space"]["pruned.ratioo"] = [0.3]
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SystemExit) as stopped:
        main(["search", "--params", str(params_file), "--verbose"])
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert err == (
        f"error: {params_file}: search.space.pruned.ratioo: unknown knob of technique 'pruned'; "
        "its knobs: ratio, round_to, scope, finetune_epochs, lr, batch_size, distill_alpha, "
        "distill_temperature\n"
    )
    assert out == ""


def test_the_real_example_searches_from_its_own_variants() -> None:
    """examples/fashion-efficientnet: its first trials are its hand-written int8 and pruned
    int8 variants, knob for knob, under their names: the nightly's builds serve them."""
    example = Path(__file__).parents[2] / "examples" / "fashion-efficientnet" / "params.yaml"
    params = load_params(example)
    table = technique_table()
    first = known_good(params.search, params.variants, table)
    assert [t["chain"] for t in first] == ["tflite_int8", "pruned+tflite_int8"]
    for trial, listed in zip(first, ["tflite_int8", "pruned_int8"], strict=True):
        chain = trial["chain"].split("+")
        knobs = {k: v for k, v in trial.items() if k != "chain"}
        planned = plan_variants(chain, knobs, params.search, table, params.variants)
        written = [listed]
        while params.variants[written[0]].source != "baseline":
            written.insert(0, params.variants[written[0]].source)
        assert planned == {name: params.variants[name] for name in written}
        # without the listed variants, the same configs under names of their content
        unnamed = plan_variants(chain, knobs, params.search, table)
        assert list(unnamed.values())[-1].model_dump(exclude={"source"}) == params.variants[
            listed
        ].model_dump(exclude={"source"})
        assert not set(unnamed) & set(params.variants)


def test_the_space_size_counts_each_chain_s_choices() -> None:
    from tasks.search import space_size
    from tasks.search_config import SearchConfig

    def size(space: dict[str, Any], chains: list[list[str]] | None = None) -> int | None:
        chains = chains or SEARCH["chains"]
        return space_size(SearchConfig.model_validate({"space": space, "chains": chains}))

    # int8 alone: 2 calibration sizes; pruned + int8: 3 round_to x 2 ratios x the same 2
    discrete = {
        "pruned.ratio": [0.3, 0.5],
        "pruned.round_to": [4, 8, 16],
        "tflite_int8.calibration_samples": [64, 128],
    }
    assert size(discrete) == 2 + 3 * 2 * 2
    stepped = {"pruned.ratio": {"low": 0.2, "high": 0.6, "step": 0.1}}
    assert size(stepped, [["pruned"]]) == 5  # 0.2, 0.3, 0.4, 0.5, 0.6
    assert size({"pruned.round_to": {"low": 2, "high": 16, "step": 2}}, [["pruned"]]) == 8
    assert size({"pruned.ratio": {"low": 0.2, "high": 0.6}}, [["pruned"]]) is None  # continuous
    assert size({}, [["tflite_int8"], ["pruned"]]) == 2  # each chain with its defaults


def test_a_repeated_configuration_does_not_count_against_the_budget() -> None:
    """Two trials of one variant (a sampler's repeat, answered from the study) are one."""
    import optuna

    from tasks.search import OUTCOME, distinct_trials, finished_trials

    study = optuna.create_study(directions=["minimize", "minimize"])
    for variant in ["pruned_a", "pruned_b", "pruned_a"]:
        trial = study.ask()
        trial.set_user_attr(OUTCOME, {"variant": variant, "status": "ok"})
        study.tell(trial, [1.0, 0.5])
    study.ask()  # left running by an interrupted run: neither finished nor distinct
    assert finished_trials(study) == 3
    assert distinct_trials(study) == 2


def test_an_interrupted_trial_is_queued_again_once_unless_a_finished_twin_answers_it(
    params_file: Path, tmp_path: Path
) -> None:
    import optuna

    from tasks.search import OUTCOME, open_study

    search = load_params(params_file).search
    assert search is not None
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = open_study(search, "s", storage, seed=0)
    # ratio 0.3 measured, then a run killed while trying 0.3 again and 0.6
    for ratio, finished in [(0.3, True), (0.3, False), (0.6, False)]:
        study.enqueue_trial({"pruned.ratio": ratio})
        trial = study.ask()
        trial.suggest_float("pruned.ratio", 0.2, 0.7)
        if finished:
            trial.set_user_attr(OUTCOME, {"variant": "pruned_a", "status": "ok"})
            study.tell(trial, [1.0, 0.5])
    resumed = open_study(search, "s", storage, seed=0)
    states = [t.state for t in resumed.get_trials(deepcopy=False)]
    assert optuna.trial.TrialState.RUNNING not in states
    queued = resumed.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in queued] == [{"pruned.ratio": 0.6}]
    again = open_study(search, "s", storage, seed=0)  # opened again: still queued once
    assert len(again.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1


def test_a_sampled_combination_no_technique_accepts_is_a_failed_trial_not_a_crash(
    params_file: Path,
) -> None:
    import optuna

    from tasks.search import suggest_plan
    from tasks.search_results import refused_outcome

    # each value is valid with the other knob's default; epochs 2 with freeze 3 is not
    space = {"qat_int8.epochs": [2, 3], "qat_int8.freeze_bn_after": [1, 3]}
    search = load_params(
        params_file, {"search": {"chains": [["pruned", "qat_int8"]], "space": space}}
    ).search
    assert search is not None
    study = optuna.create_study(directions=["minimize", "minimize"])
    knobs = {"qat_int8.epochs": 2, "qat_int8.freeze_bn_after": 3}
    study.enqueue_trial({"chain": "pruned+qat_int8", **knobs})
    plan = suggest_plan(study.ask(), search, technique_table())
    assert plan.invalid is not None and "freeze_bn_after must be at most epochs (2)" in plan.invalid
    assert plan.variants == {} and plan.variant.startswith("pruned_qat_int8_invalid_")
    refused = refused_outcome(plan)
    assert (refused.status, refused.feasible) == ("invalid", False)
    assert refused.knobs.items() >= knobs.items()  # with the pruning knobs sampled for it
    assert refused.reason == plan.invalid


# ---- the pick against what is already published -------------------------------------------------


def _manifest(**variants: dict) -> dict:
    return {
        "version": "3",
        "variants": {"baseline": {"metrics": {"size_bytes": 9000}}}
        | {name: {"metrics": metrics} for name, metrics in variants.items()},
    }


def test_the_incumbent_is_the_latest_versions_best_by_the_objective() -> None:
    from tasks.search_results import best_published

    fast = {
        "size_bytes": 900,
        "benchmarks": [{"runner": "edge-cpu", "status": "ok", "p50_ms": 0.2}],
    }
    small = {
        "size_bytes": 500,
        "compressed_size_bytes": 450,
        "benchmarks": [
            {"runner": "edge-cpu", "status": "ok", "p50_ms": 0.3},
            {"runner": "cloud-cpu", "status": "ok", "p50_ms": 0.1},
        ],
    }
    manifest = _manifest(fast=fast, small=small)
    assert best_published(manifest, "p50", "edge-cpu").variant == "fast"
    assert best_published(manifest, "p50", "cloud-cpu").variant == "small"
    assert best_published(manifest, "size", "edge-cpu").objective == 500
    assert best_published(manifest, "compressed_size", "edge-cpu").objective == 450
    assert best_published(_manifest(), "p50", "edge-cpu") is None  # the baseline does not count


def test_a_pick_must_be_distinguishably_better_than_the_incumbent() -> None:
    from tasks.search_results import Incumbent, beats_incumbent
    from tasks.speed import SpeedRatio

    incumbent = Incumbent("3", "tflite_int8_a1", 0.0316)
    label = "the published tflite_int8_a1 (version 3)"
    # the pick: 1 % faster on its row, indistinguishable when timed together
    noise = SpeedRatio(label, 0.99, 0.96, 1.02, 6, 0.0313, 0.0316)
    better, found = beats_incumbent("p50", 0.0313, incumbent, "edge-cpu", noise)
    assert not better and "not distinguishable in speed from the published tflite_int8_a1" in found
    faster = SpeedRatio(label, 0.8, 0.78, 0.82, 6, 0.025, 0.0316)
    assert beats_incumbent("p50", 0.025, incumbent, "edge-cpu", faster)[0]
    untimed = beats_incumbent("p50", 0.02, incumbent, "edge-cpu", "timed out after 600s")
    assert untimed == (False, f"not timed together with {label}: timed out after 600s")
    by_size = Incumbent("3", "pruned_b2", 1000)
    assert beats_incumbent("size", 999, by_size, "edge-cpu")[0]
    assert not beats_incumbent("size", 1000, by_size, "edge-cpu")[0]


def test_no_batch_starts_that_would_end_past_the_seconds_budget() -> None:
    import time

    from flows.search import _stop_reason
    from tasks.search_config import SearchConfig

    cfg = SearchConfig.model_validate({"budget": {"trials": None, "seconds": 30}})
    started = time.monotonic() - 10
    assert _stop_reason(cfg, 1, None, started, 0, last_batch_s=5) is None
    reason = _stop_reason(cfg, 1, None, started, 0, last_batch_s=40)
    assert reason is not None and "the next batch would end past it (the last took 40 s)" in reason

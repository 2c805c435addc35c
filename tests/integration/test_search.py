"""The search flow against a real Prefect server on the tiny digits data: a study that resumes
from its SQLite file without rebuilding, repeats that cost nothing, a space measured whole that
ends the search, a Pareto front checked on its numbers, the pick offered and published through
the review, and a goal no trial can meet (report, exit code 3)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import FAST_BENCHMARK, write_params

pytestmark = pytest.mark.slow

NO_GATES: dict[str, Any] = {  # every measured trial feasible: the subject here is the search
    "min_accuracy": None,
    "max_accuracy_drop": None,
    "max_worst_class_drop": None,
    "min_agreement": None,
    "min_speedup": None,
    "min_size_reduction": None,
    "max_slowdown": None,
}
SEARCH: dict[str, Any] = {
    "objective": {"minimize": "p50", "runner": "cloud-cpu"},
    "chains": [["pruned"]],
    # three configs: the sampler comes back to measured ones (answered from the study, free)
    "space": {"pruned.ratio": [0.3, 0.4, 0.5]},
    "fixed": {"pruned.finetune_epochs": 1, "pruned.round_to": 4},
    "budget": {"trials": 2},
    "batch": 2,
}


def _params(tmp_path: Path, search: dict[str, Any] | None = None) -> Path:
    path = write_params(
        tmp_path,
        {
            "train": {"epochs": 4},
            "benchmark": FAST_BENCHMARK,
            "gates": {"defaults": NO_GATES},
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "digits-search"},
        },
    )
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = {"pruned": raw["variants"]["pruned"]}  # the hand-written variant: ratio 0.5
    raw["gates"]["per_variant"] = {}
    raw["search"] = SEARCH | (search or {})  # replaces params.yaml's, whose space names others
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def searched(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One search of 2 distinct trials, then an interrupted trial left RUNNING in its study."""
    import optuna

    from flows.search import search

    tmp = tmp_path_factory.mktemp("search")
    params = _params(tmp)
    workdir = tmp / "work"
    first = search(params_file=str(params), approval="auto", workdir=str(workdir))
    study = optuna.load_study(study_name=first.study, storage=first.storage)
    # a run killed mid-batch leaves its trial RUNNING: here the ratio no trial measured yet
    (missing,) = {0.3, 0.4, 0.5} - {t.knobs["pruned.ratio"] for t in first.trials}
    study.enqueue_trial({"chain": "pruned", "pruned.ratio": missing})
    abandoned = study.ask()
    abandoned.suggest_categorical("chain", ["pruned"])
    abandoned.suggest_categorical("pruned.ratio", [0.3, 0.4, 0.5])
    return {"tmp": tmp, "params": params, "workdir": workdir, "first": first, "missing": missing}


def test_search_offers_its_pick_and_publishes_it_when_approved(searched: dict[str, Any]) -> None:
    from tasks.params_file import load_params
    from tasks.registry import open_registry

    first = searched["first"]
    assert first.status == "found" and first.ran == len(first.trials) >= 2
    assert len({t.variant for t in first.trials}) == 2  # repeats, if any, were not counted
    assert first.stopped == "budget of 2 distinct trial(s) spent"
    # the hand-written variant's knobs (ratio 0.5) were among the first, known-good trials
    assert any(t.knobs == {"pruned.ratio": 0.5} for t in first.trials[:2])
    assert all(t.status == "ok" and t.feasible for t in first.trials)
    # ranked on val; the pick alone then measured on test, and published with those numbers
    assert {t.split for t in first.trials} == {"val"}
    assert first.pick.objective == min(t.objective for t in first.trials)
    assert first.outcome is not None and first.outcome.status == "published"
    registry = open_registry(load_params(searched["params"]).registry)
    manifest = registry.read_manifest("digits-search", first.outcome.version)
    assert list(manifest["variants"]) == [first.pick.variant]  # the pick alone is offered
    published = manifest["variants"][first.pick.variant]["metrics"]
    assert published["split"] == "test" and published["accuracy"] is not None
    report = Path(first.report)
    assert report.is_file() and (report.parent / "search-pareto.png").stat().st_size > 0
    assert "### Pareto set" in report.read_text()


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def test_pareto_set_is_non_dominated(searched: dict[str, Any]) -> None:
    trials = {t.number: t for t in searched["first"].trials if t.status == "ok"}

    def point(t: Any) -> tuple[float, float, float]:
        return (-t.accuracy, t.p50_ms, float(t.size_bytes))

    front = searched["first"].pareto
    assert front and set(front) <= set(trials)
    for number in front:
        assert not any(_dominates(point(t), point(trials[number])) for t in trials.values())
    variants_on_front = {trials[n].variant for n in front}
    for t in trials.values():  # everything off the front is dominated by a trial on it
        if t.variant not in variants_on_front:
            assert any(_dominates(point(trials[n]), point(t)) for n in front)


def test_a_resumed_search_rebuilds_nothing(searched: dict[str, Any]) -> None:
    from flows.search import search

    first = searched["first"]
    before = {t.variant for t in first.trials}
    resumed = search(
        params_file=str(searched["params"]),
        overrides={"search": {"budget": {"trials": 3}}},
        approval="auto",
        workdir=str(searched["workdir"]),
    )
    assert resumed.study == first.study
    kept = resumed.trials[: len(first.trials)]
    assert [t.number for t in kept] == [t.number for t in first.trials]  # the first run's, kept
    # the abandoned trial was queued again and run first: the third ratio, the only variant built
    again = resumed.trials[len(first.trials)]
    assert again.knobs == {"pruned.ratio": searched["missing"]} and again.status == "ok"
    after = {t.variant for t in resumed.trials}
    assert len(after) == 3 and resumed.built == [again.variant] == list(after - before)
    assert resumed.stopped == "budget of 3 distinct trial(s) spent"
    # a new pick is offered only when timed distinguishably faster than the published one
    assert resumed.outcome is not None
    assert resumed.outcome.status in ("unchanged", "published", "not-better-than-published")


def test_a_space_measured_whole_ends_the_search(searched: dict[str, Any]) -> None:
    """A bigger budget than the space holds: nothing to ask once all three ratios are measured."""
    from flows.search import search

    where = {"params_file": str(searched["params"]), "workdir": str(searched["workdir"])}
    search(**where, overrides={"search": {"budget": {"trials": 3}}}, approval="auto")
    whole = search(**where, overrides={"search": {"budget": {"trials": 10}}}, approval="auto")
    assert whole.ran == 0 and whole.built == []
    assert whole.stopped == "every one of the space's 3 configuration(s) measured"
    assert whole.pick is not None and whole.pick.variant in whole.cached  # offered again, cached
    assert (
        "Stopped: every one of the space's 3 configuration(s) measured."
        in Path(whole.report).read_text()
    )


@pytest.mark.parametrize("pair", ["min_speedup", "=3", "min_speedup="])
def test_a_malformed_constraint_is_one_line_and_exit_2(
    pair: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import search_main

    with pytest.raises(SystemExit) as stopped:
        search_main(["--constraint", pair])
    assert stopped.value.code == 2
    assert f"--constraint {pair!r}: expected GATE=VALUE" in capsys.readouterr().err


def test_an_unreachable_goal_ends_with_the_report_and_exit_3(
    searched: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import EXIT_INFEASIBLE, search_main

    # the goal given on the command line: the params file (and its caches) stay the same
    where = ["--params", str(searched["params"]), "--workdir", str(searched["workdir"])]
    goal = ["--constraint", "max_accuracy_drop=0.0", "--constraint", "min_speedup=10"]
    with pytest.raises(SystemExit) as stopped:
        search_main([*where, "--trials", "2", "--chain", "pruned", *goal])
    assert stopped.value.code == EXIT_INFEASIBLE
    out, err = capsys.readouterr()
    assert "search: no trial met the gates" in err
    assert "search: infeasible — no trial of 2 met the gates; best attempt trial" in out
    # another study over the same ratios: the fixture's variants are cached (when this test runs
    # alone, the ratio the fixture left unmeasured may be built)
    counts = re.search(r"\((\d+) this run; built (\d+), cached (\d+)\)", out)
    assert counts is not None and int(counts[2]) <= 1 and int(counts[3]) >= 1
    report = Path(out.split("report: ")[1].split()[0])
    text = report.read_text()
    assert "**No trial met the goal.**" in text
    # every trial says how far it fell short: 10x faster than the baseline is out of reach
    rows = [line for line in text.splitlines() if line.startswith("| ") and "pruned" in line]
    assert len(rows) >= 2
    assert all("min_speedup" in row and "| no |" in row for row in rows)

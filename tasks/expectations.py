"""The checks ModelPress runs as real Great Expectations validations, and their outcomes.

A `Rule` is a check before it runs (the GX expectation and its arguments); `GxRunner` runs rules
on a pandas frame through an ephemeral context → pandas data source → dataframe asset →
whole-dataframe batch → ExpectationSuite → ValidationDefinition → Checkpoint, and gives back one
`Check` per rule. The data suite (tasks/data_checks.py) and the variant gates
(tasks/variant_gates.py) are built from these.

Great Expectations is imported lazily (its import costs seconds). GX_ANALYTICS_ENABLED defaults
to false when a context is built: these machines have no outside network.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DOCS_SITE = "modelpress"

Number = float | int


@dataclass(frozen=True)
class Check:
    """One expectation's outcome; `observed` and `threshold` are None where not numeric."""

    name: str  # e.g. "accuracy >= min_accuracy"
    expectation: str  # the GX expectation type, e.g. "expect_column_min_to_be_between"
    column: str
    success: bool
    observed: float | int | None
    threshold: float | int | None
    detail: str = ""  # what the numbers stand for, e.g. which classes are too small
    explanation: str | None = (
        None  # said instead of observed vs threshold where those are not enough
    )


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    success: bool
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.success]

    def describe(self) -> str:
        """One line: the suite and, for each failing check, observed vs threshold."""
        if self.success:
            return f"{self.suite}: all {len(self.checks)} check(s) passed"
        parts = [_describe_check(check) for check in self.failures]
        return f"{self.suite}: {len(parts)} check(s) failed: " + "; ".join(parts)


def _describe_check(check: Check) -> str:
    if check.explanation:
        return f"{check.name}: {check.explanation}"
    unit = " violating sample(s)" if check.expectation.endswith("in_set") else ""
    detail = f": {check.detail}" if check.detail else ""
    return (
        f"{check.name} [{check.column}] "
        f"(observed {_fmt(check.observed)}{unit} vs threshold {_fmt(check.threshold)}{detail})"
    )


def _fmt(value: Number | None) -> str:
    if value is None:
        return "none"
    return str(value) if isinstance(value, int) else f"{value:.6g}"


@dataclass(frozen=True)
class Rule:
    """A check before it runs: the GX expectation class and its keyword arguments."""

    name: str
    expectation: str  # class name in great_expectations.expectations
    column: str
    threshold: Number | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    explanation: str | None = None
    detail: str = ""


def at_least(name: str, column: str, threshold: Number) -> Rule:
    return Rule(name, "ExpectColumnMinToBeBetween", column, threshold, {"min_value": threshold})


def at_most(name: str, column: str, threshold: Number) -> Rule:
    return Rule(name, "ExpectColumnMaxToBeBetween", column, threshold, {"max_value": threshold})


def in_set(name: str, column: str, values: list[Any]) -> Rule:
    # Observed is the number of samples outside the set, so the threshold is 0.
    return Rule(name, "ExpectColumnValuesToBeInSet", column, 0, {"value_set": values})


class GxRunner:
    """One ephemeral GX context shared by several suites; Data Docs built once at the end."""

    def __init__(self, docs_dir: Path | None) -> None:
        self.context = _make_context(docs_dir)
        self.source = self.context.data_sources.add_pandas("modelpress")
        self.docs = docs_dir is not None

    def run(self, suite_name: str, frame: pd.DataFrame, rules: list[Rule]) -> list[Check]:
        """Validate `frame` against `rules` as suite `suite_name` through a Checkpoint."""
        import great_expectations as gx

        batch = self.source.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe(
            "all"
        )
        suite = self.context.suites.add(gx.ExpectationSuite(name=suite_name))
        for rule in rules:
            suite.add_expectation(_expectation(rule))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
        )
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=suite_name, validation_definitions=[definition], result_format="SUMMARY"
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        by_name = {rule.name: rule for rule in rules}
        return [
            _to_check(result, by_name[result.expectation_config.meta["check"]])
            for run in outcome.run_results.values()
            for result in run.results
        ]

    def build_docs(self) -> None:
        """Write the HTML Data Docs site (index.html and one page per validation)."""
        if self.docs:
            self.context.build_data_docs(site_names=[DOCS_SITE])


def _make_context(docs_dir: Path | None) -> Any:
    """An in-memory GX context, quiet, with a local Data Docs site when docs_dir is given."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        # No default temp-dir docs site: the only site is the one we configure below.
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        context.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return context


def _expectation(rule: Rule) -> Any:
    import great_expectations.expectations as gxe

    expectation_class = getattr(gxe, rule.expectation)
    return expectation_class(column=rule.column, meta={"check": rule.name}, **rule.kwargs)


def _to_check(result: Any, rule: Rule) -> Check:
    payload = result.result or {}
    raw = payload.get("observed_value", payload.get("unexpected_count"))
    return Check(
        name=rule.name,
        expectation=result.expectation_config.type,
        column=rule.column,
        success=bool(result.success),
        observed=_plain_number(raw),
        threshold=rule.threshold,
        detail=rule.detail,
        explanation=rule.explanation,
    )


def _plain_number(value: Any) -> Number | None:
    """numpy scalars → int/float; NaN, strings and lists → None."""
    if isinstance(value, bool | np.bool_) or value is None:
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value):
        return float(value)
    return None


def suite_result(suite: str, checks: list[Check]) -> SuiteResult:
    return SuiteResult(suite=suite, success=all(c.success for c in checks), checks=checks)

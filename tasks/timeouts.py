"""How long a night may take: each stage's bound, and the nightly's, sized from its work.

The nightly's default bound is the sum of what its stages may take on the longest path: the
export and the builds along the longest source chain (each `timeouts.build_s`; variants on one
level build at once), the evaluation, every runner's benchmark bound, the review's wait when a
person approves, and a margin for the steps that are not bounded one by one (data checks,
publishing). A stage past its bound is stopped there; the nightly's bound is the backstop.
"""

from __future__ import annotations

from tasks.errors import ModelPressError
from tasks.params_model import Params
from tasks.technique import VariantConfig

# data preparation, checks, validation and publishing: seconds on the default model, minutes on
# a large one; bounded together rather than one by one
MARGIN_S = 1_800


class NightTimedOut(ModelPressError, TimeoutError):
    """The nightly ran past its bound (timeouts.night_s, or the sum of its stages')."""


class StageTimedOut(ModelPressError, TimeoutError):
    """A stage of the night (training, evaluation) ran past its bound in timeouts."""


def chain_depth(variants: dict[str, VariantConfig]) -> int:
    """The most builds one after another: a variant built from another waits for it."""
    depth: dict[str, int] = {"baseline": 0}

    def of(name: str) -> int:
        if name not in depth:
            depth[name] = of(variants[name].source) + 1 if name in variants else 0
        return depth[name]

    return max((of(name) for name in variants), default=0)


def night_bound_s(params: Params) -> int:
    """timeouts.night_s, or the sum of the stages' bounds."""
    bounds = params.timeouts
    if bounds.night_s is not None:
        return bounds.night_s
    builds = (1 + chain_depth(params.variants)) * bounds.build_s  # the export, then the chain
    benchmarks = sum(params.runners[name].timeout_s for name in params.benchmark.runners)
    review = params.review.timeout_s if params.review.approval == "ui" else 0
    search = 0
    if params.search.run_in_nightly and params.search.budget.seconds is not None:
        search = int(params.search.budget.seconds)
    return builds + bounds.evaluate_s + benchmarks + review + search + MARGIN_S


def describe_bound(params: Params) -> str:
    """Where the bound comes from, for the line that says it fired."""
    if params.timeouts.night_s is not None:
        return f"timeouts.night_s = {params.timeouts.night_s} s"
    return f"{night_bound_s(params)} s, the sum of its stages' bounds (set timeouts.night_s)"

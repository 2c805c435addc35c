"""speed: what a same-session comparison of two models' latency can claim.

A variant's speed against what it came from (the baseline, its source) is measured in one
process on one runner, the two models' latency trials interleaved (A B, B A, A B, ...), so both
see the same moment of the machine: a busy second slows both, not one. Each round gives the
ratio of the two trials' p50s; the claim is the geometric mean of those ratios with a 95 %
t-interval over the rounds. "Faster" is said only when the whole interval is below 1 (or below
1 / a stated minimum gain), "slower" only when it is all above 1; otherwise the two are not
distinguishable on this evidence, and that is what is said.

A leaf module (numpy only): edge runners, which have no scipy, build these records too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Two-sided 97.5 % quantiles of Student's t for 1..10 degrees of freedom (no scipy on edge runners).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)

Verdict = Literal["faster", "slower", "indistinguishable"]


def t_quantile_975(degrees_of_freedom: int) -> float:
    """Student's t at 0.975; past 10 degrees of freedom 2.0 (within 5 % of the exact value)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees_of_freedom: got {degrees_of_freedom}; expected >= 1")
    return _T975[degrees_of_freedom - 1] if degrees_of_freedom <= len(_T975) else 2.0


@dataclass(frozen=True)
class SpeedRatio:
    """A variant's p50 over a reference's on one runner, measured interleaved in one session."""

    reference: str
    ratio: float  # variant p50 / reference p50: below 1 the variant is faster
    low: float  # 95 % interval of the ratio
    high: float
    rounds: int
    variant_p50_ms: float  # medians of the rounds' p50s, for the reader
    reference_p50_ms: float
    measured_at: str = ""  # UTC, ISO 8601: when the session ran
    reused: bool = (
        False  # the same two files, images, runner and code measured in an earlier session
    )

    @property
    def speedup(self) -> tuple[float, float, float]:
        """(speedup, its lower bound, its upper bound): the reference's p50 over the variant's."""
        return 1.0 / self.ratio, 1.0 / self.high, 1.0 / self.low

    def verdict(self, min_gain: float = 1.0) -> Verdict:
        """faster when even the interval's slow end beats `min_gain`; slower when its fast end
        is still slower than the reference; indistinguishable otherwise."""
        if self.high < 1.0 / max(min_gain, 1.0):
            return "faster"
        if self.low > 1.0:
            return "slower"
        return "indistinguishable"

    def describe(self, runner: str) -> str:
        """e.g. 'on edge-cpu 1.12x slower than baseline (1.10-1.14x, 0.104 vs 0.093 ms, 5
        interleaved rounds, this session)'."""
        kind = self.verdict()
        if kind == "slower":
            head, low, high = f"{_times(self.ratio)} slower", self.low, self.high
        elif kind == "faster":
            head, low, high = f"{_times(1 / self.ratio)} faster", 1 / self.high, 1 / self.low
        else:
            head = "not distinguishable in speed"
            low, high = 1 / self.high, 1 / self.low
        when = f"session of {self.measured_at}, reused" if self.reused else "this session"
        span = (
            f"{low:.2f}-{high:.2f}x"
            if kind != "indistinguishable"
            else f"speedup {low:.2f}-{high:.2f}x"
        )
        return (
            f"on {runner} {head} {'than' if kind != 'indistinguishable' else 'from'} {self.reference} "
            f"({span}, {self.variant_p50_ms:.3g} vs {self.reference_p50_ms:.3g} ms p50, "
            f"{self.rounds} interleaved rounds, {when})"
        )

    def short(self) -> str:
        """For a table cell: '2.41x faster (2.30-2.52)', '1.12x slower (1.10-1.14)' or
        '~ (0.97-1.04x)', marked 'reused' when timed in an earlier session."""
        kind = self.verdict()
        if kind == "faster":
            text = f"{_times(1 / self.ratio)} faster ({1 / self.high:.2f}-{1 / self.low:.2f})"
        elif kind == "slower":
            text = f"{_times(self.ratio)} slower ({self.low:.2f}-{self.high:.2f})"
        else:
            text = f"~ ({1 / self.high:.2f}-{1 / self.low:.2f}x)"
        return f"{text}, reused" if self.reused else text


def ratio_interval(
    variant_p50s: list[float], reference_p50s: list[float]
) -> tuple[float, float, float]:
    """(ratio, low, high): the geometric mean of the rounds' variant/reference p50 ratios and its
    95 % t-interval. Paired rounds: a slow moment that slows both cancels in the ratio."""
    if len(variant_p50s) != len(reference_p50s) or len(variant_p50s) < 2:
        raise ValueError(
            f"rounds: {len(variant_p50s)} and {len(reference_p50s)} p50s; expected the same "
            "number, at least 2"
        )
    logs = np.log(np.asarray(variant_p50s, dtype=np.float64)) - np.log(
        np.asarray(reference_p50s, dtype=np.float64)
    )
    mean = float(logs.mean())
    half = t_quantile_975(len(logs) - 1) * float(logs.std(ddof=1)) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 2 else f"{ratio:.1f}x"

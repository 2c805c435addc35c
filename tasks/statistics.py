"""statistics: the intervals every judgment of the pipeline rests on.

A leaf module (numpy, scipy and the error types only): the drop gate, the worst-class gate, the data suite's
"can this test split certify the gate at all" check, the search and the int8 studies all read
their evidence from here, so a bound means the same thing wherever it is printed.

The accuracy drop of a variant against the baseline is a difference of two *paired*
proportions (both models see the same images). With b = baseline right and variant wrong,
c = baseline wrong and variant right, n = images, the drop is (b - c) / n. Its interval is
Tango's score interval (Tango 1998, Statistics in Medicine 17:891-908): unlike McNemar's
interval conditioned on b + c, it treats the discordance rate as unknown too, so 359 images on
which both models agree still leave a drop of about 1 point possible, as they should.

The gate reads the upper end of a two-sided interval at `confidence`: a one-sided test whose
error (passing a variant whose true drop equals the gate) is (1 - confidence) / 2, 2.5 % at
the default 0.95. tests/unit/test_statistics.py checks that rate by simulation;
`python scripts/drop_coverage.py` prints the full table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tasks.errors import DataError

FloatArray = NDArray[np.float64]

_BISECTION_STEPS = 60  # halves [-1, 1] to below 1e-17: past float precision


def critical_value(confidence: float) -> float:
    """The standard normal quantile of a two-sided interval at `confidence` (1.96 at 0.95)."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2.0))


def _tango_score(delta: FloatArray, b: FloatArray, c: FloatArray, n: FloatArray) -> FloatArray:
    """Tango's score statistic at drop `delta` (a proportion), elementwise.

    The nuisance parameter (the rate of c-type discordance) is its maximum-likelihood estimate
    under the constraint that the true drop is `delta`: the root of A x^2 + B x + C = 0.
    The statistic decreases monotonically in delta.
    """
    a_coef = 2.0 * n
    b_coef = -b - c + (2.0 * n - b + c) * delta
    c_coef = -c * delta * (1.0 - delta)
    root = np.sqrt(np.maximum(b_coef * b_coef - 4.0 * a_coef * c_coef, 0.0))
    rate_c = (-b_coef + root) / (2.0 * a_coef)
    variance = n * (2.0 * rate_c + delta * (1.0 - delta))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (b - c - n * delta) / np.sqrt(variance)
    # variance 0 only at delta = +-1 with every image discordant in that direction: the score
    # is then exactly 0 (the data sit on the bound)
    return np.where(variance > 0, score, 0.0)


def tango_bounds(
    b: ArrayLike, c: ArrayLike, n: ArrayLike, confidence: float
) -> tuple[FloatArray, FloatArray]:
    """(lower, upper) of Tango's two-sided score interval for (b - c) / n, as proportions.

    Vectorised: b, c and n broadcast, so a simulation solves thousands of intervals at once.
    Each bound is the drop at which the score equals the critical value, found by bisection.
    """
    b_arr, c_arr, n_arr = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (b, c, n)))
    z = critical_value(confidence)

    def solve(target: float) -> FloatArray:
        # score(low) >= target >= score(high): bisection keeps that bracket
        low = np.full(b_arr.shape, -1.0)
        high = np.full(b_arr.shape, 1.0)
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2.0
            above = _tango_score(middle, b_arr, c_arr, n_arr) >= target
            low = np.where(above, middle, low)
            high = np.where(above, high, middle)
        return (low + high) / 2.0

    return solve(z), solve(-z)


def paired_counts(
    labels: ArrayLike, base_pred: ArrayLike, variant_pred: ArrayLike
) -> tuple[int, int, int]:
    """(b, c, n): baseline right and variant wrong, the reverse, and the number of images."""
    labels_arr, base, variant = (
        np.asarray(a).reshape(-1) for a in (labels, base_pred, variant_pred)
    )
    sizes = [len(labels_arr), len(base), len(variant)]
    if len(set(sizes)) != 1 or sizes[0] == 0:
        raise DataError(
            f"predictions: labels/baseline/variant have {sizes} samples; "
            "expected the same non-zero number"
        )
    base_right, variant_right = base == labels_arr, variant == labels_arr
    b = int(np.sum(base_right & ~variant_right))
    c = int(np.sum(~base_right & variant_right))
    return b, c, sizes[0]


def paired_drop_interval(
    labels: ArrayLike,
    base_pred: ArrayLike,
    variant_pred: ArrayLike,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Accuracy drop (baseline minus variant) in points: (point, lower, upper), Tango's interval.

    The upper end is what the drop gate judges; it is above 0 even when the models agree on
    every image, by as much as the number of images leaves possible.
    """
    b, c, n = paired_counts(labels, base_pred, variant_pred)
    lower, upper = tango_bounds(b, c, n, confidence)
    return 100.0 * (b - c) / n, 100.0 * float(lower), 100.0 * float(upper)


def worst_class_drop_bound(
    labels: ArrayLike,
    base_pred: ArrayLike,
    variant_pred: ArrayLike,
    confidence: float = 0.95,
) -> tuple[int, float, float]:
    """The class whose drop may be largest: (class, its drop in points, its upper bound).

    Each class's drop gets its own Tango interval over that class's images, so a class of
    30 images cannot certify what a class of 3,000 can. Ties go to the lowest class index.
    """
    labels_arr, base, variant = (
        np.asarray(a).reshape(-1) for a in (labels, base_pred, variant_pred)
    )
    paired_counts(labels_arr, base, variant)  # same sizes, not empty
    classes = np.unique(labels_arr)
    counts = [
        paired_counts(labels_arr[labels_arr == k], base[labels_arr == k], variant[labels_arr == k])
        for k in classes
    ]
    b, c, n = (np.array(column, dtype=np.float64) for column in zip(*counts, strict=True))
    _, upper = tango_bounds(b, c, n, confidence)
    worst = int(np.argmax(upper))
    return (
        int(classes[worst]),
        float(100.0 * (b[worst] - c[worst]) / n[worst]),
        float(100.0 * upper[worst]),
    )


UNCERTIFIABLE = 2**62  # what smallest_certifying_size answers for a gate of 0 points


def smallest_certifying_size(max_drop_points: float, confidence: float) -> int:
    """The fewest images on which a drop gate of `max_drop_points` can pass at all: even with
    baseline and variant agreeing on every image, fewer leave a larger drop possible.

    With b = c = 0, Tango's upper bound is z^2 / (n + z^2) in closed form.
    """
    if max_drop_points >= 100.0:
        return 1
    if max_drop_points <= 0.0:  # no finite number of images rules out every drop above 0
        return UNCERTIFIABLE
    z = critical_value(confidence)
    gate = max_drop_points / 100.0
    return max(1, math.ceil(z * z * (1.0 - gate) / gate - 1e-9))


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact two-sided binomial interval for successes / trials."""
    from scipy.stats import beta

    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    )
    return low, high


def simulate_pass_rate(
    n: int,
    drop_points: float,
    discordance: float,
    gate_points: float,
    confidence: float,
    repeats: int,
    seed: int = 0,
    bounds: Any = None,
) -> float:
    """The share of `repeats` simulated test splits of `n` images on which a variant whose true
    drop is `drop_points` and whose discordance rate (b + c) / n is `discordance` passes a gate
    of `gate_points` (its upper bound at most the gate).

    `bounds(b, c, n, confidence) -> (lower, upper)` as proportions; Tango's by default. The
    coverage test and benchmarks/drop_coverage.py use it: at a true drop equal to the gate the
    rate must not exceed (1 - confidence) / 2.
    """
    drop, rate = drop_points / 100.0, discordance
    if not 0 <= abs(drop) <= rate <= 1:
        raise ValueError(f"discordance {rate} must be at least |drop| {abs(drop)} and at most 1")
    p_b, p_c = (rate + drop) / 2.0, (rate - drop) / 2.0
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [p_b, p_c, 1.0 - p_b - p_c], size=repeats)
    # every distinct (b, c) once: far fewer intervals to solve than draws
    pairs, inverse = np.unique(draws[:, :2], axis=0, return_inverse=True)
    solve = bounds or tango_bounds
    _, upper = solve(pairs[:, 0], pairs[:, 1], np.full(len(pairs), n), confidence)
    passed = 100.0 * np.asarray(upper) <= gate_points
    return float(np.mean(passed[np.asarray(inverse).reshape(-1)]))

"""statistics: the drop bound holds its error rate, by simulation, where the old one did not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.statistics import (
    clopper_pearson,
    paired_drop_interval,
    simulate_pass_rate,
    smallest_certifying_size,
    tango_bounds,
)

CONFIDENCE = 0.95
NOMINAL = (1 - CONFIDENCE) / 2  # the gate reads the upper end: a one-sided 2.5 % test
REPEATS = 3000


def _allowed(repeats: int = REPEATS) -> float:
    """The nominal error plus three standard errors of a simulated rate."""
    return NOMINAL + 3 * math.sqrt(NOMINAL * (1 - NOMINAL) / repeats)


def conditional_mcnemar_bounds(
    b: np.ndarray, c: np.ndarray, n: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """The bound ModelPress gated on before: Clopper-Pearson on b given b + c, mapped to the
    drop as if the number of discordant images were known. Kept here to show it fails."""
    lows, highs = [], []
    for bi, ci, ni in zip(b, c, n, strict=True):
        discordant = int(bi + ci)
        if discordant == 0:
            lows.append(0.0)
            highs.append(0.0)
            continue
        low, high = clopper_pearson(int(bi), discordant, confidence)
        lows.append((2 * low - 1) * discordant / ni)
        highs.append((2 * high - 1) * discordant / ni)
    return np.array(lows), np.array(highs)


# (n, discordance rates) at a true drop equal to a 1-point gate; a discordance rate equal
# to the drop means the variant never gains an image the baseline misses
GRID = [
    (50, [0.01, 0.05, 0.2]),
    (359, [0.01, 0.015, 0.03, 0.1, 0.3]),
    (2000, [0.01, 0.015, 0.03, 0.1, 0.3]),
    (10000, [0.01, 0.03, 0.1]),
]


@pytest.mark.parametrize(("n", "rates"), GRID)
def test_a_variant_whose_true_drop_equals_the_gate_rarely_passes(
    n: int, rates: list[float]
) -> None:
    for rate in rates:
        passed = simulate_pass_rate(n, 1.0, rate, 1.0, CONFIDENCE, REPEATS, seed=n)
        assert passed <= _allowed(), f"n={n} discordance={rate}: passed {passed:.4f}"


def test_the_old_conditional_bound_passes_such_variants_far_too_often() -> None:
    # the same simulation on the bound gated before: at 359 images, a variant 1 point worse
    # that never gains an image passes the 1-point gate about half the time
    passed = simulate_pass_rate(
        359, 1.0, 0.01, 1.0, CONFIDENCE, REPEATS, seed=1, bounds=conditional_mcnemar_bounds
    )
    assert passed > 10 * _allowed()
    tango = simulate_pass_rate(359, 1.0, 0.01, 1.0, CONFIDENCE, REPEATS, seed=1)
    assert tango <= _allowed()


def test_a_variant_truly_better_than_the_gate_passes_on_enough_images() -> None:
    # the bound is not simply wide: 10,000 images certify a variant with no real drop
    passed = simulate_pass_rate(10000, 0.0, 0.02, 1.0, CONFIDENCE, 500, seed=3)
    assert passed > 0.95


def test_359_agreeing_images_cannot_certify_a_1_point_gate() -> None:
    labels = np.arange(359) % 10
    _, _, upper = paired_drop_interval(labels, labels, labels)
    assert 1.0 < upper < 1.1
    assert smallest_certifying_size(1.0, CONFIDENCE) == 381
    _, _, upper_381 = paired_drop_interval(*(np.arange(381) % 10,) * 3)
    _, _, upper_380 = paired_drop_interval(*(np.arange(380) % 10,) * 3)
    assert upper_381 <= 1.0 < upper_380


def test_bounds_are_vectorised_and_ordered() -> None:
    b = np.array([0, 3, 30, 0])
    c = np.array([0, 0, 2, 5])
    lower, upper = tango_bounds(b, c, np.full(4, 300), CONFIDENCE)
    point = (b - c) / 300
    assert np.all(lower <= point) and np.all(point <= upper)
    assert upper[3] < 0  # five gains and no loss: the variant is better, and the bound says so
    assert np.all((lower >= -1) & (upper <= 1))


def test_every_image_lost_sits_on_the_edge() -> None:
    lower, upper = tango_bounds(20, 0, 20, CONFIDENCE)
    assert upper == pytest.approx(1.0) and 0.6 < lower < 1.0

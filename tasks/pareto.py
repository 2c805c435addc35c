"""The Pareto front: the points no other point dominates. One implementation for the review's
plot (latency vs accuracy) and the search's report (accuracy vs latency vs size)."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates, every coordinate minimised (a point
    dominates another when it is no worse everywhere and better somewhere); equal points both stay."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            all(a <= b for a, b in zip(q, p, strict=True))
            and any(a < b for a, b in zip(q, p, strict=True))
            for j, q in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front

"""Rankings and choices that do not flip with last-digit noise.

The same run on another x86-64 CPU can differ in the last digits (vectorised sums are added
in another order), and a long optimization run can amplify that. Every choice and ranking of
the suites therefore compares numbers *rounded to a stated tolerance*: values equal after
rounding are ties, resolved by a fixed order (the grid's, or the optimizers') and reported
as ties.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# Scores are compared to 4 significant digits: a relative tolerance of about 1e-4.
SIGNIFICANT_DIGITS = 4
# The valley study's criterion is a log10 (in decades); it is compared to 3 decimals, a
# relative tolerance of 0.2% on the gap it measures.
DECADE_DECIMALS = 3


def comparable(value: float | None, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits, for comparisons; None, NaN and inf
    (missing or diverged) compare as +inf."""
    if value is None or not math.isfinite(value):
        return math.inf
    return float(f"{value:.{digits - 1}e}")


def comparable_decades(value: float | None, decimals: int = DECADE_DECIMALS) -> float:
    """A score in decades rounded to ``decimals`` decimals (None, NaN, inf: +inf)."""
    if value is None or not math.isfinite(value):
        return math.inf
    return round(value, decimals) + 0.0  # + 0.0: -0.0 and 0.0 are one value


def first_best(scores: Sequence[float]) -> int:
    """The index of the lowest score (scores already made comparable); ties: the first."""
    return min(range(len(scores)), key=lambda i: (scores[i], i)) if scores else 0


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """Competition ranks (1, 1, 3, ...) of comparable scores, lower is better: equal scores
    share a rank."""
    ordered = sorted(scores.values())
    return {name: ordered.index(score) + 1 for name, score in scores.items()}


def rank_label(name: str, by_rank: Mapping[str, int]) -> str:
    """``"3/13"``, or ``"=3/13"`` when another shares that rank."""
    rank = by_rank[name]
    shared = sum(other == rank for other in by_rank.values()) > 1
    return f"{'=' if shared else ''}{rank}/{len(by_rank)}"

"""A mean over runs with its spread and Student-t interval: the one estimate every table and figure shows."""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple, Sequence

__all__ = ["Estimate", "estimate", "interval_text"]


class Estimate(NamedTuple):
    """A mean over runs, the runs' std (ddof=1) and a Student-t interval of the mean; no spread for one run."""

    mean: float
    n: int
    std: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def sem(self) -> float | None:
        """Standard error of the mean, std/√n."""
        return None if self.std is None else self.std / math.sqrt(self.n)


def estimate(values: Sequence[float | None], confidence: float = 0.95) -> Estimate | None:
    """Mean, std and t-interval (half-width t_{(1+c)/2, n-1}·std/√n) of the finite values; None if none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    mean = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return Estimate(mean, 1)
    from scipy.stats import t

    std = statistics.stdev(xs)
    half = float(t.ppf((1 + confidence) / 2, len(xs) - 1)) * std / math.sqrt(len(xs))
    return Estimate(mean, len(xs), std, mean - half, mean + half)


def interval_text(confidence: float = 0.95) -> str:
    """How the report's intervals are computed, in words."""
    return (f"{100 * confidence:g}% interval of the mean over final seeds: mean ± t_{{{(1 + confidence) / 2:g}, n-1}}"
            "·std/√n (Student t, std with ddof = 1); none for a single seed")

"""The expected best of k trials, from the trials a cell has run: one rule for the report's tuning noise
(`report/noise.py`) and the search's adaptive allocation (`search/allocation.py`), which must agree on
whether a cell's search still rises.

With the values sorted v_(1) ≤ … ≤ v_(m), the maximum of k draws with replacement is v_(i) with probability
(i/m)^k − ((i−1)/m)^k, so its mean and variance are exact sums (Dodge et al. 2019, "Show Your Work", EMNLP;
code: dodgejesse/show_your_work, `expected_max_performance.samplemax`). Only numpy: both the report and the
search read it, and neither imports the other (docs/design.md, "The layers").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = ["best_of_k", "doubling_gain", "max_probabilities", "next_trial_gain"]


def max_probabilities(m: int, k: int) -> np.ndarray:
    """P(the maximum of k draws with replacement from m ranked items is the item of rank i), i = 1..m."""
    import numpy as np

    ranks = np.arange(1, m + 1) / m
    return ranks**k - (ranks - 1 / m) ** k


def best_of_k(values: Sequence[float], ks: Sequence[int]) -> list[tuple[float, float]]:
    """(mean, std) of the best of k draws with replacement from `values`, for each k (exact)."""
    import numpy as np

    v = np.sort(np.asarray(values, dtype=float))
    out = []
    for k in ks:
        p = max_probabilities(v.size, int(k))
        mean = float(p @ v)
        out.append((mean, float(math.sqrt(max(float(p @ (v - mean) ** 2), 0.0)))))
    return out


def doubling_gain(values: Sequence[float], k: int) -> float:
    """How much the expected best rose over the last doubling of the search, ⌈k/2⌉ → k trials: whether the
    best-of-k curve still rises at k (the report's "search-limited?", the allocation's plateau test)."""
    (at_half, _), (at_k, _) = best_of_k(values, [math.ceil(k / 2), k])
    return at_k - at_half


def next_trial_gain(values: Sequence[float], k: int) -> float:
    """The expected best of k + 1 trials less that of k: what one more trial is expected to add."""
    (now, _), (after, _) = best_of_k(values, [k, k + 1])
    return after - now

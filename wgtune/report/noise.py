"""Tuning noise: how much a cell's result owes to its search, computed from its search trials.

A cell's point on the curve is the chosen config (best validation worst-group accuracy over its
search trials) re-trained on final seeds. Two things about the search decide how far to trust it:

- Expected best validation worst-group accuracy after k trials, k = 1..m (m = the cell's finished
  search trials): the expected maximum of k draws with replacement from the m observed values,
  computed exactly from order statistics, as Dodge et al. 2019 ("Show Your Work", EMNLP; code:
  dodgejesse/show_your_work, `expected_max_performance.samplemax`, whose mean and variance
  `plot.py` draws) do: with the values sorted v_(1) ≤ … ≤ v_(m), P(max = v_(i)) = (i/m)^k − ((i−1)/m)^k
  (`tracking/best_of_k.py`, shared with the search's adaptive allocation).
  "Search-limited" says the curve still rises at the budget beyond the point's noise: the last
  doubling of the budget (k = ⌈m/2⌉ → m) raised the expected best by more than the standard error
  of the cell's point over its final seeds (the error bar the curve shows), so another doubling
  would likely move the point visibly. Without ≥ 2 final seeds the noise is the standard deviation
  of the best of m (the spread of a re-run search), a stricter bar. (Against that spread alone the
  test would almost never fire: for uniform values the gain of a doubling is ≈ one sd of the max.)
- The spread of the chosen config's test worst-group accuracy under a re-run search: the same
  order statistics give the probability that each trial is the argmax of a re-run of m trials
  (ties go to the earliest trial, as `select_trial` breaks them), hence the mean, standard
  deviation and 5–95% range of the test worst-group accuracy a re-run would select. It is read
  from the search trials' own test metrics (one seed each), so it includes their seed noise; and
  like any bootstrap of a maximum it errs narrow (0.88× the true spread on simulated searches,
  see SEARCH_RESAMPLE), so read it as a lower bound.

`replicates` draws the same two sources for a bootstrap of the scaling fits (`scaling.py`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Sequence

from wgtune.tracking.best_of_k import best_of_k, doubling_gain, max_probabilities

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CellSamples", "TuningNoise", "best_of_k", "rerun_choice", "replicates", "tuning_noise"]

SEARCH_RESAMPLE = 0.5
"""The bootstrap redraws ⌈m·this⌉ of a cell's m search trials (an m-out-of-n bootstrap, Politis & Romano
1994): redrawing all m under-states how much the argmax moves (the bootstrap of a maximum is
inconsistent, Bickel & Freedman 1981); on simulated searches (m = 6–40) all m gave 0.88× the true
spread of the chosen config's quality, half of them 1.1–1.15×, so the intervals err wide."""
RERUN_RANGE = (0.05, 0.95)
"""The quantiles of the re-run spread shown as its range."""


class CellSamples(NamedTuple):
    """What a cell's numbers are made of: final-seed test worst-group accuracies (finished seeds), and
    per search trial (in start order) its validation and test worst-group accuracy, and the chosen one."""

    final_worst: tuple[float, ...] = ()
    search_val: tuple[float, ...] = ()
    search_test: tuple[float, ...] = ()
    chosen: int | None = None


class TuningNoise(NamedTuple):
    """A cell's tuning noise (module docstring): expected best-of-k, search-limited, re-run spread."""

    n_trials: int
    best_of_k: tuple[tuple[float, float], ...]
    """(mean, std) of the best validation worst-group accuracy after k = 1..n_trials trials."""
    gain_last_doubling: float
    noise: float
    """What the gain is compared with: the final seeds' standard error, else the sd of the best of m."""
    noise_kind: str
    search_limited: bool
    rerun_test_mean: float | None
    rerun_test_std: float | None
    rerun_test_low: float | None
    rerun_test_high: float | None


def _order(val: Sequence[float]) -> list[int]:
    """Trial indices from the one a re-run would choose last to first: by value, the earliest highest on ties."""
    return sorted(range(len(val)), key=lambda i: (val[i], -i))


def rerun_choice(val: Sequence[float], test: Sequence[float], k: int | None = None) -> tuple[float, float, float, float]:
    """Mean, std and RERUN_RANGE quantiles of the test value of the argmax-validation trial of a re-run
    of k (default all) trials drawn with replacement from these."""
    import numpy as np

    order = _order(val)
    t = np.asarray([test[i] for i in order], dtype=float)
    p = max_probabilities(len(order), len(order) if k is None else k)
    mean = float(p @ t)
    std = math.sqrt(max(float(p @ (t - mean) ** 2), 0.0))
    by_value = np.argsort(t, kind="stable")
    cdf = np.cumsum(p[by_value])
    low, high = (float(t[by_value][min(int(np.searchsorted(cdf, q)), t.size - 1)]) for q in RERUN_RANGE)
    return mean, std, low, high


def tuning_noise(samples: CellSamples) -> TuningNoise | None:
    """The cell's tuning noise, or None without ≥ 2 finished search trials that logged validation."""
    val = [v for v in samples.search_val if math.isfinite(v)]
    m = len(val)
    if m < 2:
        return None
    curve = tuple(best_of_k(val, range(1, m + 1)))
    gain = doubling_gain(val, m)
    pairs = [(v, t) for v, t in zip(samples.search_val, samples.search_test) if math.isfinite(v) and math.isfinite(t)]
    rerun: tuple[float | None, ...] = (None,) * 4
    if len(pairs) >= 2:
        rerun = rerun_choice([v for v, _ in pairs], [t for _, t in pairs])
    seeds = [v for v in samples.final_worst if math.isfinite(v)]
    if len(seeds) >= 2:
        import statistics

        noise, kind = statistics.stdev(seeds) / math.sqrt(len(seeds)), "seed standard error"
    else:
        noise, kind = curve[-1][1], "sd of the best of m"
    return TuningNoise(m, curve, gain, noise, kind, gain > noise, *rerun)


def replicates(samples: CellSamples, n: int, rng: np.random.Generator) -> np.ndarray:
    """n bootstrap replicates of the cell's mean final-seed test worst-group accuracy, resampling both
    the final seeds and the search outcome.

    Seeds: resampled with replacement, their deviations from the mean scaled by √(s/(s−1)) first so
    the replicates' variance is the unbiased s²/s rather than (s−1)/s of it (Davison & Hinkley 1997,
    §3.3, rescaled residuals); one seed adds no spread. Search: ⌈m·SEARCH_RESAMPLE⌉ of the m trials
    drawn with replacement, the replicate's chosen trial is their argmax by validation; the cell's value moves by the
    difference between that trial's test worst-group accuracy and the chosen trial's (the final
    seeds of another config were never run, so its search run stands in for them).
    """
    import numpy as np

    seeds = np.asarray(samples.final_worst, dtype=float)
    if seeds.size == 0:
        raise ValueError("a cell without final seeds has no replicates")
    mean = float(seeds.mean())
    if seeds.size > 1:
        dev = (seeds - mean) * math.sqrt(seeds.size / (seeds.size - 1))
        values = mean + dev[rng.integers(0, seeds.size, (n, seeds.size))].mean(axis=1)
    else:
        values = np.full(n, mean)
    val, test = np.asarray(samples.search_val, dtype=float), np.asarray(samples.search_test, dtype=float)
    usable = np.flatnonzero(np.isfinite(val) & np.isfinite(test))
    if samples.chosen is None or samples.chosen not in usable or usable.size < 2:
        return values
    order = _order([float(val[i]) for i in usable])
    rank = np.empty(usable.size, dtype=int)
    rank[order] = np.arange(usable.size)           # higher rank = chosen first
    draws = rng.integers(0, usable.size, (n, math.ceil(usable.size * SEARCH_RESAMPLE)))
    picked = draws[np.arange(n), np.argmax(rank[draws], axis=1)]
    return values + test[usable[picked]] - test[samples.chosen]

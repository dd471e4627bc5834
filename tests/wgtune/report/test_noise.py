"""Tuning noise: exact best-of-k against enumeration, the re-run choice, search-limited, the bootstrap draws."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from wgtune.report.build import build_report
from wgtune.report.noise import CellSamples, best_of_k, replicates, rerun_choice, tuning_noise
from wgtune.report.tables import to_frame
from wgtune.tracking.records import CellRecord, TrialRecord

VALUES = [0.61, 0.72, 0.55, 0.72, 0.80]


def test_best_of_k_equals_enumerating_every_draw() -> None:
    for k in (1, 2, 3):
        draws = [max(c) for c in itertools.product(VALUES, repeat=k)]
        (mean, sd), = best_of_k(VALUES, [k])
        assert mean == pytest.approx(np.mean(draws), rel=1e-12)
        assert sd == pytest.approx(np.std(draws), rel=1e-9)
    curve = best_of_k(VALUES, range(1, 6))
    assert curve[0][0] == pytest.approx(np.mean(VALUES))
    assert all(a[0] < b[0] for a, b in zip(curve, curve[1:])) and curve[-1][0] < max(VALUES)


def test_the_rerun_choice_equals_enumerating_every_rerun_with_ties_to_the_earliest() -> None:
    test = [0.40, 0.50, 0.30, 0.60, 0.45]
    chosen = []
    for draw in itertools.product(range(len(VALUES)), repeat=3):
        best = min(draw, key=lambda i: (-VALUES[i], i))  # select_trial: highest, earliest on ties
        chosen.append(test[best])
    mean, sd, low, high = rerun_choice(VALUES, test, k=3)
    assert mean == pytest.approx(np.mean(chosen), rel=1e-12) and sd == pytest.approx(np.std(chosen), rel=1e-9)
    assert low == pytest.approx(np.quantile(chosen, 0.05, method="inverted_cdf"))
    assert high == pytest.approx(np.quantile(chosen, 0.95, method="inverted_cdf"))


def test_search_limited_when_the_last_doubling_beats_the_seed_error() -> None:
    # A search whose best is still climbing: widely spread values, final seeds that agree closely.
    climbing = tuning_noise(CellSamples((0.70, 0.701, 0.699), tuple(np.linspace(0.3, 0.8, 12)),
                                        tuple(np.linspace(0.3, 0.8, 12)), 11))
    assert climbing is not None and climbing.search_limited and climbing.noise_kind == "seed standard error"
    assert climbing.gain_last_doubling == pytest.approx(climbing.best_of_k[-1][0] - climbing.best_of_k[5][0])
    # A plateau: most trials reach the same value, so doubling the search gains little.
    flat = tuning_noise(CellSamples((0.70, 0.72, 0.68), (0.5, *[0.8] * 11), (0.4, *[0.7] * 11), 1))
    assert flat is not None and not flat.search_limited and flat.gain_last_doubling < 1e-6
    assert flat.rerun_test_std < 1e-6  # only a re-run that drew the one poor trial 12 times differs
    assert tuning_noise(CellSamples((0.7,), (0.8,), (0.7,), 0)) is None  # one trial: nothing to say


def test_replicates_spread_like_the_mean_of_the_seeds_and_move_with_the_search() -> None:
    rng = np.random.default_rng(0)
    seeds = (0.70, 0.74, 0.75)
    only_seeds = replicates(CellSamples(seeds), 20_000, rng)
    assert only_seeds.mean() == pytest.approx(np.mean(seeds), abs=1e-3)
    # Rescaled: the variance of the replicates is the unbiased s²/n.
    assert only_seeds.var() == pytest.approx(np.var(seeds, ddof=1) / 3, rel=0.05)
    search = CellSamples(seeds, (0.8, 0.7, 0.6), (0.72, 0.60, 0.50), 0)
    moved = replicates(search, 20_000, rng)
    assert moved.var() > only_seeds.var() and moved.max() <= only_seeds.max() + 1e-12  # the chosen is the best
    assert replicates(CellSamples((0.7,)), 5, rng).tolist() == [0.7] * 5
    with pytest.raises(ValueError, match="without final seeds"):
        replicates(CellSamples(), 5, rng)


def _trial(cell: str, n: int, val: float, test: float) -> TrialRecord:
    return TrialRecord(f"r{n}", cell, f"t{n}", "", "FINISHED", "tpe", "search", {"lr": str(n)},
                       {"best/val_worst_acc": val, "best/test_worst_acc": test}, n, None, None)


def test_the_report_carries_tuning_noise_per_cell_into_cells_csv() -> None:
    cell = CellRecord("c", "d", "resnet", "18", "resnet-18", 11_000_000, "erm", False)
    vals = [0.5, 0.6, 0.7, 0.65]
    trials = [_trial("c", i, v, v - 0.1) for i, v in enumerate(vals)]
    report = build_report([cell], trials)
    [row] = report.rows
    assert row.tuning is not None and row.tuning.n_trials == 4
    assert row.tuning.best_of_k == tuple(best_of_k(vals, range(1, 5)))
    assert row.samples.chosen == 2 and row.samples.search_val == tuple(vals)
    frame = to_frame(report)
    assert frame["tuning_trials"][0] == 4 and frame["search_limited"][0] in ("yes", "no")
    assert frame["best_val_at_budget_mean"][0] == pytest.approx(best_of_k(vals, [4])[0][0])
    assert math.isfinite(frame["rerun_test_worst_std"][0])

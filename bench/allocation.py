"""Adaptive allocation: the error of a study's fitted scaling exponent, adaptive vs fixed, at equal trials.

    .venv/bin/python bench/allocation.py [--reps 60] [--per-cell 20] [--jobs 2] [--output bench/results/allocation.md]

A simulated study (issue 16, item 3), no Ray and no training: one series of 8 cells, sizes N = 1M·2^i
(i = 0..7), each cell's validation worst-group accuracy a known response surface over (log10 lr,
log10 weight decay), driven through the product's `CellRouter` (suggest -> evaluate -> on_trial_complete, as
`bench/warm_start.py` drives it), one hyperopt TPE per cell (`n_startup` 5, the product default):

    x = log10 lr in [-5, 0], w = log10 weight_decay in [-6, -1]
    x*(N) = -2 - 0.25 log10(N / 1M)        (the best lr falls with size), w* = -3.5
    q = ((x - x*) / σ_c)^2 + ((w - w*) / 3)^2
    acc = FLOOR + (peak(N) - FLOOR) exp(-q / 2) + noise,  FLOOR 0.2, noise N(0, 0.005) from a sha256 of
          (repetition, cell, config): the same config of the same repetition reads the same under every strategy
    peak(N) = 1 - L(N),  L(N) = A (N / 1M)^(-β) + C,  A 0.3, β 0.5 (the known exponent), C 0.1

σ_c, the width of the ridge in decades of lr, is what makes a cell easy or hard to tune: 0.8 (a random draw
lands within σ of the best lr 1 time in 3) down to 0.25 (1 in 10). The cells' widths are
`WIDTHS`, mixed along the curve so hard cells sit at both ends and the middle.

A cell's point is the true (noiseless) accuracy of its chosen config (the best validation trial, earliest on
ties, as `tracking.selection.best_index` chooses), i.e. what infinitely many final seeds would show, so the
exponent's error is the search's alone. Its exponent is fitted to the 8 points' errors 1 - acc by the report's
own fit (`wgtune.report.fit.fit_power_law`: A·(N/1M)^-β + C, 5 residual degrees of freedom); on the true
peaks it returns β = 0.5 exactly.

Strategies, every one on the same repetition's surfaces, noise and cell seeds (paired):
  fixed            `--per-cell` trials per cell (the product default, `allocation: fixed`): 8 × 20 = 160;
  adaptive         `allocation: adaptive, study_trials: 160`: floor 8 per cell (n_startup + 3), cap 40,
                   plateau_gain 0.005 (the defaults);
  adaptive 2/3     the same with study_trials 107 (2/3 of 160);
  fixed 2/3        13 per cell (104 trials), for reference.
Each reports |β̂ − β| (mean and median over repetitions) and the trials it spent; against `fixed`, the paired
difference of mean |β̂ − β| with a 95% bootstrap interval (2000 resamples of the repetitions). The goal
(issue 16): a lower error at equal trials (the interval of adaptive − fixed entirely below 0), or the same
error with ≤ 2/3 of the trials, read as non-inferiority: adaptive 2/3's interval below +10% of fixed's error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import hp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script by `python -m bench`

from bench.machine import machine  # noqa: E402
from wgtune.report.fit import fit_power_law  # noqa: E402
from wgtune.search.allocation import FLOOR_TPE_TRIALS, PLATEAU_GAIN, AllocationPolicy  # noqa: E402
from wgtune.search.budget import CellBudget  # noqa: E402
from wgtune.search.router import CellRouter, SearchPlan  # noqa: E402
from wgtune.tracking.selection import best_index  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "allocation.md"
METRIC = "val/worst_acc"
N_STARTUP = 5
SIZES = tuple(1e6 * 2**i for i in range(8))
WIDTHS = (0.8, 0.3, 0.6, 0.25, 0.8, 0.35, 0.6, 0.3)
"""σ_c of each size: the lr ridge's width in decades (small: hard to tune)."""
A, BETA, C, FLOOR, NOISE, WD_WIDTH, W_BEST = 0.3, 0.5, 0.1, 0.2, 0.005, 3.0, -3.5
CAP_FACTOR = 2
NON_INFERIOR = 0.10
"""“The same β error”: adaptive's mean error exceeds fixed's by less than this fraction of it (95% interval)."""
"""Adaptive allocation's per-cell cap (`search.num_samples`) as a multiple of the fixed budget per cell."""


def peak(n: float) -> float:
    """The best validation worst-group accuracy a size can reach: 1 − L(N), the known scaling law."""
    return 1 - (A * (n / 1e6) ** -BETA + C)


def true_accuracy(i: int, params: dict[str, Any]) -> float:
    """Cell i's noiseless accuracy at `params`."""
    x, w = math.log10(params["lr"]), math.log10(params["weight_decay"])
    x_best = -2 - 0.25 * math.log10(SIZES[i] / 1e6)
    q = ((x - x_best) / WIDTHS[i]) ** 2 + ((w - W_BEST) / WD_WIDTH) ** 2
    return FLOOR + (peak(SIZES[i]) - FLOOR) * math.exp(-q / 2)


def observed(rep: int, i: int, params: dict[str, Any]) -> float:
    """What a trial reports: the true accuracy plus noise that is a function of (rep, cell, config)."""
    key = f"{rep}|{i}|{params['lr']:.9e}|{params['weight_decay']:.9e}"
    u = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    return true_accuracy(i, params) + NOISE * float(u.standard_normal())


def seed(*parts: object) -> int:
    """A seed derived from what identifies the search (STYLE rule 7)."""
    return int.from_bytes(hashlib.sha256(":".join(["allocation", *map(str, parts)]).encode()).digest()[:4], "big")


def space() -> dict[str, Any]:
    return {"lr": hp.loguniform("lr", math.log(1e-5), 0.0),
            "weight_decay": hp.loguniform("weight_decay", math.log(1e-6), math.log(1e-1))}


@dataclass(frozen=True)
class Strategy:
    label: str
    per_cell: int
    """Fixed: trials per cell; adaptive: the cap."""
    study_trials: int | None = None
    """Adaptive: the pool; None: fixed."""


@dataclass(frozen=True)
class Outcome:
    beta: float
    spent: tuple[int, ...]
    shortfall: tuple[float, ...]
    """peak − the chosen config's true accuracy, per cell."""


def study(rep: int, strategy: Strategy) -> Outcome:
    """One simulated study under `strategy`: every cell's search through one CellRouter, then the fit."""
    plans = [SearchPlan(f"c{i}", space(), CellBudget(strategy.per_cell), seed(rep, i), N_STARTUP)
             for i in range(len(SIZES))]
    policy = None
    if strategy.study_trials is not None:
        policy = AllocationPolicy(strategy.study_trials, N_STARTUP + FLOOR_TPE_TRIALS, strategy.per_cell, PLATEAU_GAIN)
    router = CellRouter(plans, metric=METRIC, mode="max", allocation=policy)
    trials: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(SIZES))}
    for n in range(100_000):
        suggestion = router.suggest(f"t{n}")
        if suggestion == CellRouter.FINISHED:
            break
        assert isinstance(suggestion, dict), "one trial at a time: the router never has to wait"
        i = int(suggestion["cell"][1:])
        value = observed(rep, i, suggestion["params"])
        router.on_trial_complete(f"t{n}", {METRIC: value})
        trials[i].append((value, true_accuracy(i, suggestion["params"])))
    points = []
    for i in range(len(SIZES)):
        chosen = best_index([v for v, _ in trials[i]])
        assert chosen is not None
        points.append(trials[i][chosen][1])
    fit = fit_power_law(list(SIZES), [1 - p for p in points])
    return Outcome(fit.beta, tuple(len(trials[i]) for i in range(len(SIZES))),
                   tuple(peak(n) - p for n, p in zip(SIZES, points)))


def repetition(args: tuple[int, tuple[Strategy, ...]]) -> dict[str, Outcome]:
    rep, strategies = args
    return {s.label: study(rep, s) for s in strategies}


def strategies(per_cell: int) -> tuple[Strategy, ...]:
    total, two_thirds = per_cell * len(SIZES), round(per_cell * len(SIZES) * 2 / 3)
    return (Strategy("fixed", per_cell),
            Strategy("adaptive", CAP_FACTOR * per_cell, total),
            Strategy("adaptive 2/3", CAP_FACTOR * per_cell, two_thirds),
            Strategy("fixed 2/3", round(per_cell * 2 / 3)))


def interval(diffs: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of paired differences."""
    means = diffs[rng.integers(0, diffs.size, (n, diffs.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def report(per_cell: int, reps: list[dict[str, Outcome]], wall: float, jobs: int) -> str:
    rng = np.random.default_rng(0)
    labels = [s.label for s in strategies(per_cell)]
    err = {k: np.array([abs(r[k].beta - BETA) for r in reps]) for k in labels}
    spent = {k: np.array([sum(r[k].spent) for r in reps]) for k in labels}
    truth = fit_power_law(list(SIZES), [1 - peak(n) for n in SIZES]).beta
    lines = [
        f"Simulated study: {len(SIZES)} cells (sizes 1M–{SIZES[-1] / 1e6:.0f}M parameters), known exponent "
        f"β = {BETA} (the report's fit on the true peaks: {truth:.4f}); {len(reps)} repetitions, every strategy "
        "on the "
        "same surfaces, noise and seeds (paired). Each cell's search is a real `CellRouter` TPE (n_startup "
        f"{N_STARTUP}) driven without Ray; its point is the true accuracy of its best validation trial; β̂ from "
        "`report.fit.fit_power_law`. Ridge widths σ (decades of lr; small = hard to tune): "
        + ", ".join(f"{w:g}" for w in WIDTHS) + ". See the docstring of `bench/allocation.py`.",
        "",
        "| strategy | trials spent (mean) | mean \\|β̂ − β\\| | median \\|β̂ − β\\| "
        "| vs fixed: Δ mean \\|β̂ − β\\| [95% CI] |",
        "|---|---|---|---|---|",
    ]
    verdicts = {}
    for k in labels:
        d = err[k] - err["fixed"]
        lo, hi = interval(d, rng)
        verdicts[k] = (float(d.mean()), lo, hi)
        vs = "—" if k == "fixed" else f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]"
        lines.append(f"| {k} | {spent[k].mean():.1f} | {err[k].mean():.4f} | {float(np.median(err[k])):.4f} | {vs} |")
    lines += ["", "Trials per cell (mean over repetitions) and shortfall of the chosen config below the cell's peak "
              "(mean, points of accuracy):", "",
              "| cell | σ | " + " | ".join(f"{k}: trials / shortfall" for k in labels) + " |",
              "|---|---|" + "---|" * len(labels)]
    for i in range(len(SIZES)):
        cells = [f"{np.mean([r[k].spent[i] for r in reps]):.1f} / "
                 f"{100 * np.mean([r[k].shortfall[i] for r in reps]):.2f}" for k in labels]
        lines.append(f"| {SIZES[i] / 1e6:.0f}M | {WIDTHS[i]:g} | " + " | ".join(cells) + " |")
    eq, two = verdicts["adaptive"], verdicts["adaptive 2/3"]
    lower_at_equal = eq[2] < 0
    equal_word = ("lower" if lower_at_equal else "higher: the whole interval is above 0" if eq[1] > 0
                  else "not lower: the interval reaches 0")
    margin = NON_INFERIOR * float(err["fixed"].mean())
    same_at_two_thirds = two[2] <= margin and spent["adaptive 2/3"].mean() <= 2 / 3 * spent["fixed"].mean() + 0.5
    lines += [
        "",
        f"Goal (issue 16: the same β error with ≤ 2/3 of the trials, or a lower error at equal trials): "
        f"**{'met' if lower_at_equal or same_at_two_thirds else 'missed'}**. "
        f"At equal trials adaptive − fixed = {eq[0]:+.4f} [{eq[1]:+.4f}, {eq[2]:+.4f}] "
        f"({equal_word}); "
        f"with 2/3 of the trials {two[0]:+.4f} [{two[1]:+.4f}, {two[2]:+.4f}] "
        f"({'the same error: within' if same_at_two_thirds else 'not the same error: the interval passes'} the "
        f"non-inferiority margin +{margin:.4f}, 10% of fixed's error).",
        "",
        f"{len(reps)} repetitions in {wall:.0f} s with {jobs} processes; {machine()}; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--per-cell", type=int, default=20, help="fixed allocation's trials per cell")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    work = [(rep, strategies(args.per_cell)) for rep in range(args.reps)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            reps = list(pool.map(repetition, work))
    else:
        reps = [repetition(w) for w in work]
    text = report(args.per_cell, reps, time.perf_counter() - started, args.jobs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    print("mean |β̂ − β| per strategy: " + ", ".join(
        f"{k} {statistics.mean(abs(r[k].beta - BETA) for r in reps):.4f}" for k in reps[0]))


if __name__ == "__main__":
    main()

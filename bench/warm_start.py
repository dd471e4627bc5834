"""Warm-start efficiency: trials a cell's search needs to come within ε of the known best.

    .venv/bin/python bench/warm_start.py [--reps 100] [--cap 100] [--eps 0.02] [--history 20] [--jobs 2]
                                         [--slope 0.5] [--output bench/results/warm_start.md]

Two objective families (issue 13): `--slope 0.5` (default), where the best lr falls 0.5 decades
per decade of parameters, and `--slope 0` (results in `warm_start_flat.md`), where it does not move.

About 3 minutes on two shared cores. Strategies, each a real `CellRouter` with one cell, driven
by suggest -> evaluate -> on_trial_complete (no Ray), all on the product's ERM space
(`load_space("erm")`: lr and weight_decay loguniform, batch_size and optimizer choices; momentum
and schedule fixed):

(a)  random     `SearchPlan(n_startup=cap)`: every suggestion is hyperopt's rand.suggest.
(b)  cold TPE   the product default, `n_startup=5`, no priors.
(c)  resumed    a previous cold-TPE run of the same cell (its first `--history` trials, another
                seed) fed back the way a re-launch does: MLflow-style string params in
                `Observation`s of a `CellSummary`, through `priors.cell_priors` (parse, encode,
                negate) into `SearchPlan.observations`; NEW trials are counted. Two readings, both
                shown: until a new trial is within ε (what the resumed search itself achieves),
                and until the cell's best is (0 when the history already holds one: that
                measures the history as much as the search).
(c0) control    (c)'s previous run going on in its own searcher past its history: what (c)
                would be if re-launching lost nothing. (c) ~ (c0) checks the injection path;
                (c) against (b) is then a property of TPE and the history length.
(d)  transfer   a new size with no history whose two neighbours (one smaller, one larger) each
                have a finished `--history`-trial cold-TPE run: `cell_priors` with
                `PriorSettings(transfer="neighbours", narrow="box", top_k=3)`: their best configs
                are proposed first, the space narrowed to a box around their top 3 each.
(d')            the same without narrowing (`narrow="none"`): first points only.
(d'')           `narrow="soft"`: the space is not narrowed; the size-aware prior fitted across the
                neighbours' sizes (search/size_prior.py) gives the first point (its centre) and
                the random start-up's draws (search/soft_prior.py, search/prior_tpe.py), then TPE.
(e), (e'), (e'') as (d), (d'), (d'') for a new size larger than both finished ones (extrapolation, the
                usual order of a scaling study), against (e0), cold TPE on that size.

Speed-up: the ratio of median trials, baseline over strategy, with a bootstrap 90% interval
(2000 resamples of the repetitions). A search that never comes within ε counts as `--cap` trials
and is reported as censored; medians stay exact while fewer than half are censored, means are
then lower bounds. Trials of a history are never counted, transfer first points are. Every part
of every repetition has its own seed, derived from its role and repetition number (sha256), so a
run is reproducible and independent of `--jobs`.

The objective: a synthetic "spurious_digits sweep". A real sweep cannot be replayed as a lookup
table (TPE proposes continuous values no table holds, and nearest-neighbour lookup would make
the landscape a step function), so the validation worst-group accuracy is a smooth function of
the config, shaped like one:

    x = log10 lr, w = log10 weight_decay, n = parameter count of the model size
    x*(n, opt, bs) = x0[opt] - s (log10 n - log10 2.8e6) + k[opt] log10(bs / 64), s = --slope
        muP-style at s = 0.5: the best lr falls as 1/sqrt(n) (0.18 decades between resnet-10x0.5 and
        resnet-18x0.5, 0.30 between resnet-18x0.5 and resnet-18); linear scaling with batch
        size for SGD (k=1), square-root for AdamW (k=0.5); x0: sgd -1.2 (lr 0.063), adamw -2.8
    w*(opt) = -3.5 for SGD (3e-4), -1.7 for AdamW (decoupled decay, 0.02)
    q = ((x - x* + 0.3 (w - w*)) / 0.6)^2 + ((w - w*) / 2.0)^2
        a ridge 0.6 decades wide (1 sd) in lr, broad in weight decay, tilted (more decay wants
        less lr, as the effective lr of a normalised net is ~ lr * wd)
    peak = 0.62 + 0.05 log10(n / 1e6) [bigger is better] - 0.012 [adamw] - {32: 0, 64: 0.004, 128: 0.012}[bs]
    acc = (0.12 + (peak - 0.12) exp(-q / 2)) / (1 + exp((x - x* - 0.7) / 0.05)) + noise
        floor 0.12: a model that learnt the spurious colour; 0.7 decades above x* training diverges
        and the worst group drops to 0. noise: uniform in [-0.005, 0.005] from a sha256 of
        (model, config): deterministic, smaller than ε, as this measures search, not seeds.

The known best of a size is the maximum of the noiseless function, found by a dense grid over
(x, w) for every (bs, opt) refined by Nelder-Mead; a trial is within ε when its (noisy) value
is >= best - ε. At ε = 0.02 that region holds 0.84% of the prior mass for resnet-18x0.5 (the
report gives the Monte-Carlo fraction), so random search needs ~80 trials in median and cold
TPE ~45: the ridge is narrow enough that search matters, as in a real sweep, and the cap of 100
censors few TPE runs. Looser ε (0.03, 0.05) are read from the same runs, as a search stopped at
ε has passed every looser one.

The tables are printed and written to ``bench/results/warm_start.md``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script by `python -m bench`

from hyperopt import __version__ as HYPEROPT_VERSION  # noqa: E402

from bench.machine import machine  # noqa: E402
from trainables.metrics import SELECTION_METRIC  # noqa: E402
from wgtune.search.budget import CellBudget  # noqa: E402
from wgtune.search.priors import CellPriors, cell_priors  # noqa: E402
from wgtune.search.router import CellRouter, SearchPlan  # noqa: E402
from wgtune.spec.grid import Cell
from wgtune.spec.schema import PriorSettings  # noqa: E402
from wgtune.spec.spaces import SearchSpace, load_space  # noqa: E402
from wgtune.tracking.records import loggable_params  # noqa: E402
from wgtune.tracking.summary import CellSummary, Observation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "warm_start.md"
METRIC = SELECTION_METRIC
N_STARTUP = 5  # the product default (grid `search.n_startup`)
LOOSER_EPS = (0.03, 0.05)
# Parameter counts of the product's ResNet ladder (trainables.models.count_parameters, 2 classes,
# 224 px), written out so this benchmark does not import torch.
SIZES = {"resnet-10x0.5": 1_230_754, "resnet-18x0.5": 2_799_394, "resnet-18": 11_177_538}
TARGET, SMALLER, LARGER = "resnet-18x0.5", "resnet-10x0.5", "resnet-18"


@dataclass(frozen=True)
class Row:
    """A line of the table: whose trace, on which cell, against which baseline, with what goal."""

    label: str
    model: str = TARGET
    baseline: str = "cold"
    goal: float | None = None  # speed-up over the baseline required, if any


ROWS = {
    "random": Row("(a) random search"),
    "cold": Row(f"(b) cold TPE (n_startup {N_STARTUP})"),
    "resumed": Row("(c) resumed with its history: a new trial within ε", goal=3.0),
    # Read from "resumed"'s trace and the history's best.
    "resumed_cell": Row("(c) resumed: the cell's best within ε (history counts, 0 if already)", goal=3.0),
    "continued": Row("(c0) control: the previous run continued, no interruption"),
    "transfer_box": Row("(d) new size between neighbours, transfer, box", goal=3.0),
    "transfer": Row("(d') new size between neighbours, transfer, no narrowing", goal=1.5),
    "transfer_soft": Row("(d'') new size between neighbours, size-aware soft prior", goal=3.0),
    "cold_large": Row(f"(e0) cold TPE, {LARGER}", LARGER, "cold_large"),
    "extrapolate_box": Row(f"(e) new largest size {LARGER}, transfer from two smaller, box", LARGER, "cold_large",
                           goal=3.0),
    "extrapolate": Row(f"(e') new largest size {LARGER}, transfer, no narrowing", LARGER, "cold_large"),
    "extrapolate_soft": Row(f"(e'') new largest size {LARGER}, size-aware soft prior", LARGER, "cold_large", goal=3.0),
}


# -- the objective ---------------------------------------------------------------------------

_OPT = {"sgd": (-1.2, -3.5, 0.0, 1.0), "adamw": (-2.8, -1.7, -0.012, 0.5)}  # x0, w*, peak offset, k
_BS_PENALTY = {32: 0.0, 64: 0.004, 128: 0.012}
RIDGE_SD, WD_SD, TILT, FLOOR, NOISE = 0.6, 2.0, 0.3, 0.12, 0.005


LR_SLOPE = [0.5]
"""Decades the best lr falls per decade of parameters: one family moves with size (0.5), one not (0).
A list, set once per process (`set_slope`), so the worker processes share the parent's."""


def set_slope(slope: float) -> None:
    LR_SLOPE[0] = slope


def best_log_lr(model: str, optimizer: str, batch_size: int) -> float:
    x0, _, _, k = _OPT[optimizer]
    return x0 - LR_SLOPE[0] * (math.log10(SIZES[model]) - math.log10(2.8e6)) + k * math.log10(batch_size / 64)


def smooth_accuracy(model: str, x: float, w: float, batch_size: int, optimizer: str) -> float:
    """The noiseless validation worst-group accuracy at log10 lr `x`, log10 weight decay `w`."""
    _, w_best, offset, _ = _OPT[optimizer]
    dx, dw = x - best_log_lr(model, optimizer, batch_size), w - w_best
    q = ((dx + TILT * dw) / RIDGE_SD) ** 2 + (dw / WD_SD) ** 2
    peak = 0.62 + 0.05 * math.log10(SIZES[model] / 1e6) + offset - _BS_PENALTY[batch_size]
    z = min((dx - 0.7) / 0.05, 700.0)
    return (FLOOR + (peak - FLOOR) * math.exp(-q / 2)) / (1 + math.exp(z))


def accuracy(model: str, params: dict[str, Any]) -> float:
    """What a trial of `model` with `params` reports: the smooth value plus deterministic noise."""
    key = f"{model}|{params['lr']:.9e}|{params['weight_decay']:.9e}|{params['batch_size']}|{params['optimizer']}"
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    smooth = smooth_accuracy(model, math.log10(params["lr"]), math.log10(params["weight_decay"]),
                             params["batch_size"], params["optimizer"])
    return smooth + NOISE * (2 * u - 1)


def known_best(model: str, space: SearchSpace) -> tuple[float, dict[str, Any]]:
    """Maximum of the noiseless function over the space: dense grid, then Nelder-Mead, per choice."""
    from scipy.optimize import minimize

    dims = {d.name: d for d in space.searched()}
    (x_lo, x_hi), (w_lo, w_hi) = (np.log10(dims[n].args[:2]) for n in ("lr", "weight_decay"))
    xs, ws = np.linspace(x_lo, x_hi, 351), np.linspace(w_lo, w_hi, 251)
    best = (-math.inf, {})
    for bs in dims["batch_size"].args:
        for opt in dims["optimizer"].args:
            grid = [(smooth_accuracy(model, x, w, bs, opt), x, w) for x in xs for w in ws]
            _, x0, w0 = max(grid)
            res = minimize(lambda v: -smooth_accuracy(model, v[0], v[1], bs, opt), [x0, w0],
                           method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10})
            x, w = np.clip(res.x, [x_lo, w_lo], [x_hi, w_hi])
            value = smooth_accuracy(model, x, w, bs, opt)
            if value > best[0]:
                best = (value, {"lr": 10 ** x, "weight_decay": 10 ** w, "batch_size": bs, "optimizer": opt})
    return best


# -- one search --------------------------------------------------------------------------------

def seed(*parts: object) -> int:
    """A seed derived from what identifies the search (STYLE rule 7)."""
    return int.from_bytes(hashlib.sha256(":".join(["warm_start", *map(str, parts)]).encode()).digest()[:4], "big")


def cell(model: str) -> Cell:
    return Cell("spurious_digits", model, "resnet", model.split("-", 1)[1], "erm", False)


SIZES_BY_CELL = {cell(m).id: n for m, n in SIZES.items()}


def search(plan: SearchPlan, model: str, target: float | None, stop_from: int = 0) -> list[tuple[dict[str, Any], float]]:
    """Run `plan`'s budget, stopping at the first value >= `target` (if given) from trial
    `stop_from` (0-based) on: (params, value) per trial."""
    router = CellRouter([plan], metric=METRIC, mode="max")
    trace = []
    for i in range(plan.search_trials):
        trial_id = f"{plan.cell}-{i}"
        suggestion = router.suggest(trial_id)
        value = accuracy(model, suggestion["params"])
        router.on_trial_complete(trial_id, {METRIC: value})
        trace.append((suggestion["params"], value))
        if target is not None and value >= target and i >= stop_from:
            break
    return trace


def summary(model: str, trace: list[tuple[dict[str, Any], float]], role: str) -> CellSummary:
    """A finished run as `StudyTracker.cell_summaries` reads it back: string params, FINISHED trials."""
    observations = tuple(Observation(f"{role}-run{i}", f"{role}-{i}", loggable_params(p), v)
                         for i, (p, v) in enumerate(trace))
    best = max(observations, key=lambda o: o.value)
    return CellSummary(cell(model).id, f"{role}-parent", finished=len(observations), best_value=best.value,
                       best_run_id=best.run_id, observations=observations)


def plan_of(model: str, priors: CellPriors, budget: int, plan_seed: int) -> SearchPlan:
    """As `wgtune.run.driver.search_plan` builds it."""
    return SearchPlan(cell(model).id, priors.space.to_hyperopt(), CellBudget(budget), plan_seed, N_STARTUP,
                      observations=priors.observations, first_points=priors.first_points, prior=priors.startup_prior)


@dataclass(frozen=True)
class Config:
    reps: int
    cap: int
    eps: float
    history: int


@dataclass(frozen=True)
class Rep:
    """One repetition: per strategy, the value of each trial (stopped at ε), and diagnostics."""

    traces: dict[str, list[float]]
    history_best: float  # best value of the resumed cell's history
    first_point_hit: dict[str, bool] = field(default_factory=dict)  # a transfer first point was within ε
    box_holds_best: dict[str, bool] = field(default_factory=dict)  # the box contains the known best config
    seconds: float = 0.0


def repetition(args: tuple[Config, int, dict[str, float], dict[str, Any]]) -> Rep:
    config, rep, bests, best_params = args
    started = time.perf_counter()
    space = load_space("erm", objective_defaults={})  # ERM declares no hyperparameters of its own
    cold_space = space.to_hyperopt()
    peers = [cell(m) for m in SIZES]
    target = {m: bests[m] - config.eps for m in SIZES}
    traces: dict[str, list[float]] = {}
    first_point_hit: dict[str, bool] = {}
    box_holds_best: dict[str, bool] = {}

    def cold(model: str, role: str, budget: int, stop: float | None, n_startup: int = N_STARTUP,
             stop_from: int = 0) -> list[tuple[dict[str, Any], float]]:
        plan = SearchPlan(cell(model).id, cold_space, CellBudget(budget), seed(role, model, rep), n_startup)
        return search(plan, model, stop, stop_from)

    def transfer(model: str, history: dict[str, CellSummary], name: str, narrow: str) -> None:
        settings = PriorSettings(transfer="neighbours", narrow=narrow, top_k=3)
        priors = cell_priors(cell(model), space, history, SIZES_BY_CELL, peers, settings, n_startup=N_STARTUP)
        assert priors.first_points and priors.narrowed == (narrow == "box"), priors.describe()
        assert (priors.startup_prior is not None) == (narrow == "soft"), priors.describe()
        trace = search(plan_of(model, priors, config.cap, seed(name, rep)), model, target[model])
        traces[name] = [v for _, v in trace]
        first_point_hit[name] = any(v >= target[model] for _, v in trace[: len(priors.first_points)])
        box_holds_best[name] = (priors.startup_prior.holds(best_params[model]) if priors.startup_prior is not None
                                else priors.space.contains(best_params[model]) is None)

    traces["random"] = [v for _, v in cold(TARGET, "random", config.cap, target[TARGET], n_startup=config.cap)]
    traces["cold"] = [v for _, v in cold(TARGET, "cold", config.cap, target[TARGET])]

    # (c): a previous run of the same cell, read back from "MLflow", becomes observations. It
    # also goes on past its history in its own searcher: the control (c0).
    run = cold(TARGET, "previous", config.history + config.cap, target[TARGET], stop_from=config.history)
    previous = run[: config.history]
    traces["continued"] = [v for _, v in run[config.history:]]
    own = {cell(TARGET).id: summary(TARGET, previous, "previous")}
    priors = cell_priors(cell(TARGET), space, own, SIZES_BY_CELL, peers, PriorSettings(narrow="box"))
    assert len(priors.observations) == config.history and not priors.first_points, priors.describe()
    trace = search(plan_of(TARGET, priors, config.cap, seed("resumed", rep)), TARGET, target[TARGET])
    traces["resumed"] = [v for _, v in trace]

    # (d), (d'): the target cell has no history; a smaller and a larger neighbour have a finished run.
    history = {cell(m).id: summary(m, cold(m, "neighbour", config.history, None), f"neighbour-{m}")
               for m in (SMALLER, LARGER)}
    transfer(TARGET, history, "transfer_box", "box")
    transfer(TARGET, history, "transfer", "none")
    transfer(TARGET, history, "transfer_soft", "soft")

    # (e), (e'): the usual order of a scaling study, the new size larger than every finished one.
    traces["cold_large"] = [v for _, v in cold(LARGER, "cold", config.cap, target[LARGER])]
    below = {cell(SMALLER).id: history[cell(SMALLER).id], cell(TARGET).id: own[cell(TARGET).id]}
    transfer(LARGER, below, "extrapolate_box", "box")
    transfer(LARGER, below, "extrapolate", "none")
    transfer(LARGER, below, "extrapolate_soft", "soft")
    return Rep(traces, max(v for _, v in previous), first_point_hit, box_holds_best,
               time.perf_counter() - started)


# -- statistics and the report -------------------------------------------------------------------

def trials_to(trace: list[float], target: float, cap: int) -> tuple[int, bool]:
    """Trials until the first value >= target; (cap, True) when never."""
    hit = next((i + 1 for i, v in enumerate(trace) if v >= target), None)
    return (cap, True) if hit is None else (hit, False)


def quantiles(values: list[int]) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q25), float(q50), float(q75)


def ratio_interval(base: list[int], other: list[int], rng: np.random.Generator) -> tuple[float, float]:
    """90% bootstrap interval of median(base) / median(other), repetitions resampled in pairs."""
    base_a, other_a = np.asarray(base, float), np.asarray(other, float)
    idx = rng.integers(0, len(base_a), size=(2000, len(base_a)))
    ratios = np.median(base_a[idx], axis=1) / np.maximum(np.median(other_a[idx], axis=1), 1.0)
    lo, hi = np.percentile(ratios, [5, 95])
    return float(lo), float(hi)


def prior_mass(model: str, best: float, eps: float, space: SearchSpace, n: int = 100_000) -> float:
    """Monte-Carlo fraction of the search space's prior (what random search draws from) within ε."""
    rng = np.random.default_rng(seed("mass", model))
    dims = {d.name: d for d in space.searched()}
    xs = rng.uniform(*np.log10(dims["lr"].args[:2]), n)
    ws = rng.uniform(*np.log10(dims["weight_decay"].args[:2]), n)
    bss = rng.choice(dims["batch_size"].args, n)
    opts = rng.choice(dims["optimizer"].args, n)
    hits = sum(smooth_accuracy(model, x, w, int(b), str(o)) >= best - eps for x, w, b, o in zip(xs, ws, bss, opts))
    return hits / n


def counts(reps: list[Rep], name: str, eps: float, bests: dict[str, float], cap: int) -> list[tuple[int, bool]]:
    """Per repetition: (trials to within `eps` of the best, censored) of one table row."""
    target = bests[ROWS[name].model] - eps
    if name == "resumed_cell":
        return [(0, False) if r.history_best >= target else trials_to(r.traces["resumed"], target, cap)
                for r in reps]
    return [trials_to(r.traces[name], target, cap) for r in reps]


def speedup(base: list[int], other: list[int]) -> float:
    """Ratio of medians, baseline over row; a median of 0 trials counts as 1."""
    return statistics.median(base) / max(statistics.median(other), 1.0)


def report(config: Config, reps: list[Rep], bests: dict[str, float], best_params: dict[str, Any],
           mass: float, wall: float, jobs: int) -> str:
    rng = np.random.default_rng(seed("bootstrap"))
    best = best_params[TARGET]
    n = len(reps)
    lines = [
        f"Trials until a cell's search comes within ε = {config.eps} of the known best validation worst-group "
        f"accuracy, {n} repetitions per strategy, cap {config.cap} trials. Each strategy is a real `CellRouter` "
        f"(hyperopt TPE) on the product's ERM space, driven without Ray. Objective: a synthetic spurious_digits "
        f"sweep (defined in `bench/warm_start.py`): a ridge in log10 lr 0.6 decades wide whose optimum falls "
        f"{LR_SLOPE[0]:g} decades per decade of parameters, AdamW's 1.6 decades below SGD's; broad in weight decay; small "
        f"batch-size and optimizer penalties; deterministic noise ±{NOISE}. Main cell: "
        f"spurious_digits/{TARGET}/erm ({SIZES[TARGET]:,} parameters), known best {bests[TARGET]:.4f} "
        f"(sgd, batch {best['batch_size']}, lr {best['lr']:.3g}, wd {best['weight_decay']:.2g}); "
        f"{100 * mass:.2f}% of the prior lies within ε.",
        "",
        f"History: {config.history} trials of cold TPE (another seed), read back as MLflow-style string params "
        f"through `priors.cell_priors`; history trials are not counted. (c): of the same cell. (c0): (c)'s "
        f"previous run going on in its own searcher past trial {config.history}, i.e. (c) if re-launching lost "
        f"nothing. (d): of a smaller and a larger neighbour ({SMALLER}, best lr "
        f"{10 ** best_log_lr(SMALLER, 'sgd', 32):.3g}; {LARGER}, {10 ** best_log_lr(LARGER, 'sgd', 32):.3g}; the "
        f"cell's own {best['lr']:.3g}). (e): the new cell is {LARGER} (known best {bests[LARGER]:.4f}, lr "
        f"{best_params[LARGER]['lr']:.3g}), its neighbours {SMALLER} and {TARGET}, both smaller; its baseline "
        f"is (e0).",
        "",
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine('hyperopt ' + HYPEROPT_VERSION)}; total run {wall:.0f} s "
        f"({jobs} worker processes; {statistics.median(r.seconds for r in reps):.1f} s per repetition, median).",
        "",
        "| strategy | median trials to ε | IQR (25–75%) | mean | censored | speed-up vs baseline [90% CI] "
        "| goal | pass |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in ROWS.items():
        found = counts(reps, name, config.eps, bests, config.cap)
        values = [v for v, _ in found]
        base = [v for v, _ in counts(reps, row.baseline, config.eps, bests, config.cap)]
        censored = sum(c for _, c in found)
        q25, q50, q75 = quantiles(values)
        if name == row.baseline:
            speed = "1"
        else:
            lo, hi = ratio_interval(base, values, rng)
            speed = f"{speedup(base, values):.2f} [{lo:.2f}–{hi:.2f}]"
        verdict = "" if row.goal is None else ("pass" if speedup(base, values) >= row.goal else "FAIL")
        lines.append(f"| {row.label} | {'≥ ' if 2 * censored >= n else ''}{q50:g} | {q25:g}–{q75:g} | "
                     f"{'≥ ' if censored else ''}{statistics.mean(values):.1f} | {censored}/{n} | {speed} | "
                     f"{'' if row.goal is None else f'≥ {row.goal:g}×'} | {verdict} |")
    control = [v for v, _ in counts(reps, "continued", config.eps, bests, config.cap)]
    resumed = [v for v, _ in counts(reps, "resumed", config.eps, bests, config.cap)]
    control = [v for v, _ in counts(reps, "continued", config.eps, bests, config.cap)]
    resumed = [v for v, _ in counts(reps, "resumed", config.eps, bests, config.cap)]
    hits = sum(r.history_best >= bests[TARGET] - config.eps for r in reps)
    lines += [
        "",
        f"- Speed-up: median trials of the baseline ((b), for (e) and (e') (e0)) over the row's median (a median "
        f"of 0 counts as 1); the interval resamples repetitions (bootstrap, 2000). A censored search counts as "
        f"{config.cap} trials, so a mean with censored ones is a lower bound.",
        f"- (c): the history already held a trial within ε in {hits}/{n} repetitions. Resumed against its "
        f"control (c0), median trials (c0)/(c): {speedup(control, resumed):.2f} [90% CI "
        f"{'–'.join(f'{v:.2f}' for v in ratio_interval(control, resumed, rng))}]; 1 = re-launching loses nothing "
        f"(goal ≥ 0.95: {'met' if speedup(control, resumed) >= 0.95 else 'MISSED'}).",
    ]
    for name in ("transfer_box", "extrapolate_box", "transfer_soft", "extrapolate_soft", "transfer", "extrapolate"):
        held = sum(r.box_holds_best[name] for r in reps)
        region = "the narrowed box" if name.endswith("_box") else "the soft prior's bands (its high-density region)"
        box = (f"; {region} contained the known best configuration in {held}/{n} "
               f"(coverage goal ≥ 0.95: {'met' if held >= 0.95 * n else 'MISSED'})")
        lines.append(f"- {ROWS[name].label.split(' ', 1)[0]}: a transfer first point (a neighbour's best config) "
                     f"was itself within ε in {sum(r.first_point_hit[name] for r in reps)}/{n} repetitions"
                     f"{box if name.endswith(('_box', '_soft')) else ''}.")
    lines += [
        "",
        "Sensitivity to ε (the same runs: a search stopped at ε has passed every looser ε): median trials "
        "(censored), speed-up vs its baseline.",
        "",
        "| strategy | " + " | ".join(f"ε = {e}" for e in (config.eps, *LOOSER_EPS)) + " |",
        "|---|" + "---:|" * (1 + len(LOOSER_EPS)),
    ]
    for name, row in ROWS.items():
        cells = []
        for eps in (config.eps, *LOOSER_EPS):
            found = counts(reps, name, eps, bests, config.cap)
            values = [v for v, _ in found]
            base = [v for v, _ in counts(reps, row.baseline, eps, bests, config.cap)]
            cells.append(f"{statistics.median(values):g} ({sum(c for _, c in found)}), {speedup(base, values):.2f}×")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--cap", type=int, default=100, help="max trials per search (never reaching ε counts as this)")
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--history", type=int, default=20, help="trials of each previous / neighbour run")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--slope", type=float, default=0.5,
                        help="decades the best lr falls per decade of parameters (0: a family where it does not move)")
    args = parser.parse_args()
    set_slope(args.slope)
    config = Config(args.reps, args.cap, args.eps, args.history)
    started = time.perf_counter()
    space = load_space("erm", objective_defaults={})
    found = {m: known_best(m, space) for m in SIZES}
    bests = {m: v for m, (v, _) in found.items()}
    best_params = {m: p for m, (_, p) in found.items()}
    mass = prior_mass(TARGET, bests[TARGET], config.eps, space)
    work = [(config, rep, bests, best_params) for rep in range(config.reps)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=set_slope, initargs=(args.slope,)) as pool:
            reps = list(pool.map(repetition, work))
    else:
        reps = [repetition(w) for w in work]
    text = report(config, reps, bests, best_params, mass, time.perf_counter() - started, args.jobs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

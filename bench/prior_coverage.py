"""Coverage of a new cell's transfer prior: how often the region it concentrates on holds the known best.

    .venv/bin/python bench/prior_coverage.py [--reps 100] [--history 20] [--jobs 2]

About four minutes on two shared cores. For each repetition and each of two families of synthetic
response surfaces, every searched size gets a cold TPE search of `--history` trials (hyperopt's
`tpe.suggest`, n_startup 5, the product default, on the product's ERM space `load_space("erm")`:
lr and weight decay loguniform, batch size and optimizer choices), each with its own seed. A new
size is then given a prior from some of them, two ways:

- box (today): `wgtune.priors.cell_priors` with `PriorSettings(transfer="neighbours", narrow="box",
  top_k=3)` (margin 0.1, the default): the box is the narrowed space; it holds the known best when
  `space.contains(best)` (every hyperparameter, choices included). Also shown: the box on lr and
  weight decay alone (what the soft prior's region is judged on, as it never cuts a choice);
- size prior (new): `wgtune.search.soft_prior.build_prior` (margin 0): its high-density region is
  the band of every numeric dimension (the narrowed component of the mixture, which takes 75% of
  each dimension's draws); it holds the known best when `SoftPrior.holds(best)`. Also shown: the
  strict reading (every band exists under the best's choices and holds it), and TPE's narrowed
  space (`SoftPrior.hull()`, which 75% of the suggestions search after the start-up).

Scenarios (the product's ResNet ladder; parameter counts of `trainables.models.count_parameters`,
2 classes, 224 px, written out so this benchmark does not import torch):

- between:  the new size resnet-18x0.5 between two searched ones (resnet-10x0.5, resnet-18);
- largest:  the new size resnet-18, larger than both searched (resnet-10x0.5, resnet-18x0.5);
- largest3: resnet-18 from three smaller (resnet-10x0.25, resnet-10x0.5, resnet-18x0.5);
- one size: resnet-18 from resnet-18x0.5 alone.

The two families, both the surface of `bench/warm_start.py` (a ridge 0.6 decades wide in log10 lr,
tilted against weight decay, broad in weight decay, AdamW's optimum 1.6 decades below SGD's, small
batch-size and optimizer penalties, divergence 0.7 decades above the optimum, deterministic noise
±0.005) with the size slope of the optimal log10 lr a parameter:

- moving: the optimum lr falls 0.5 decades per decade of parameters (as in warm_start: μP's
  SP drift, lr ∝ N^-0.5);
- flat:   the optimum lr does not move with size.

The known best of a size is the maximum of the noiseless surface over the space (per batch size and
optimizer, Nelder-Mead from the analytic optimum, clipped to the bounds). Coverage is given with a
Wilson 95% interval; widths are the lr box, band or hull in decades, and the centre error the distance
from the prior's lr centre to the known best lr, in decades. Results go to
``bench/results/prior_coverage.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script by `python -m bench`

from hyperopt import Trials, fmin, tpe  # noqa: E402
from hyperopt import __version__ as HYPEROPT_VERSION  # noqa: E402

from bench.machine import machine  # noqa: E402
from wgtune.search.priors import cell_priors  # noqa: E402
from wgtune.search.soft_prior import NeighbourTrials, build_prior  # noqa: E402
from wgtune.spec.grid import Cell  # noqa: E402
from wgtune.spec.schema import PriorSettings  # noqa: E402
from wgtune.spec.spaces import SearchSpace, load_space  # noqa: E402
from wgtune.tracking.records import loggable_params  # noqa: E402
from wgtune.tracking.summary import CellSummary, Observation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "prior_coverage.md"
N_STARTUP = 5
SIZES = {"resnet-10x0.25": 309_714, "resnet-10x0.5": 1_230_754, "resnet-18x0.5": 2_799_394,
         "resnet-18": 11_177_538}
SCENARIOS = {  # name -> (new size, searched sizes)
    "between": ("resnet-18x0.5", ("resnet-10x0.5", "resnet-18")),
    "largest": ("resnet-18", ("resnet-10x0.5", "resnet-18x0.5")),
    "largest3": ("resnet-18", ("resnet-10x0.25", "resnet-10x0.5", "resnet-18x0.5")),
    "one size": ("resnet-18", ("resnet-18x0.5",)),
}
FAMILIES = {"moving": -0.5, "flat": 0.0}  # decades of optimal lr per decade of parameters
GOAL = 0.95

# The warm_start surface: x0 (log10 lr optimum at 2.8M, batch 64), w* (log10 wd optimum), peak offset,
# k (batch scaling).
_OPT = {"sgd": (-1.2, -3.5, 0.0, 1.0), "adamw": (-2.8, -1.7, -0.012, 0.5)}
_BS_PENALTY = {32: 0.0, 64: 0.004, 128: 0.012}
RIDGE_SD, WD_SD, TILT, FLOOR, NOISE, REF = 0.6, 2.0, 0.3, 0.12, 0.005, 2.8e6


@dataclass(frozen=True)
class Surface:
    """warm_start's synthetic validation worst-group accuracy, its size slope of the optimal lr a parameter."""

    name: str
    slope: float

    def best_log_lr(self, n: int, optimizer: str, batch_size: int) -> float:
        x0, _, _, k = _OPT[optimizer]
        return x0 + self.slope * (math.log10(n) - math.log10(REF)) + k * math.log10(batch_size / 64)

    def smooth(self, n: int, x: float, w: float, batch_size: int, optimizer: str) -> float:
        """Noiseless accuracy at log10 lr `x`, log10 weight decay `w`."""
        _, w_best, offset, _ = _OPT[optimizer]
        dx, dw = x - self.best_log_lr(n, optimizer, batch_size), w - w_best
        q = ((dx + TILT * dw) / RIDGE_SD) ** 2 + (dw / WD_SD) ** 2
        peak = 0.62 + 0.05 * math.log10(n / 1e6) + offset - _BS_PENALTY[batch_size]
        z = min((dx - 0.7) / 0.05, 700.0)
        return (FLOOR + (peak - FLOOR) * math.exp(-q / 2)) / (1 + math.exp(z))

    def accuracy(self, n: int, params: dict[str, Any]) -> float:
        """What a trial reports: the smooth value plus deterministic noise from a hash of (size, config)."""
        key = (f"{self.name}|{n}|{params['lr']:.9e}|{params['weight_decay']:.9e}|{params['batch_size']}|"
               f"{params['optimizer']}")
        u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
        return self.smooth(n, math.log10(params["lr"]), math.log10(params["weight_decay"]), params["batch_size"],
                           params["optimizer"]) + NOISE * (2 * u - 1)

    def known_best(self, n: int, space: SearchSpace) -> dict[str, Any]:
        """The configuration maximising the noiseless surface over `space`."""
        from scipy.optimize import minimize

        dims = {d.name: d for d in space.searched()}
        lo, hi = (np.log10([dims[k].args[i] for k in ("lr", "weight_decay")]) for i in (0, 1))
        best = (-math.inf, {})
        for bs in dims["batch_size"].args:
            for opt in dims["optimizer"].args:
                start = np.clip([self.best_log_lr(n, opt, bs), _OPT[opt][1]], lo, hi)
                res = minimize(lambda v: -self.smooth(n, v[0], v[1], bs, opt), start, method="Nelder-Mead",
                               options={"xatol": 1e-8, "fatol": 1e-12})
                x, w = np.clip(res.x, lo, hi)
                value = self.smooth(n, x, w, bs, opt)
                if value > best[0]:
                    best = (value, {"lr": float(10**x), "weight_decay": float(10**w), "batch_size": bs,
                                    "optimizer": opt})
        return best[1]


def seed(*parts: object) -> int:
    """A seed derived from what identifies the search (STYLE rule 7)."""
    return int.from_bytes(hashlib.sha256(":".join(["prior_coverage", *map(str, parts)]).encode()).digest()[:4], "big")


def cell(model: str) -> Cell:
    return Cell("spurious_digits", model, "resnet", model.split("-", 1)[1], "erm", False)


def history(surface: Surface, model: str, space: SearchSpace, trials: int, rep: int) -> list[tuple[dict, float]]:
    """A cold TPE search of `trials` trials on one size: (params, value) per trial."""
    out: list[tuple[dict, float]] = []

    def objective(params: dict[str, Any]) -> float:
        params = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}
        value = surface.accuracy(SIZES[model], params)
        out.append((params, value))
        return -value

    fmin(objective, space.to_hyperopt(), algo=functools.partial(tpe.suggest, n_startup_jobs=N_STARTUP),
         max_evals=trials, trials=Trials(), rstate=np.random.default_rng(seed(surface.name, model, rep)),
         show_progressbar=False)
    return out


def summary(model: str, trace: list[tuple[dict, float]]) -> CellSummary:
    """A finished search as `StudyTracker.cell_summaries` reads it back: string params."""
    observations = tuple(Observation(f"{model}-{i}", f"{model}-{i}", loggable_params(p), v)
                         for i, (p, v) in enumerate(trace))
    best = max(observations, key=lambda o: o.value)
    return CellSummary(cell(model).id, f"{model}-parent", finished=len(observations), best_value=best.value,
                       best_run_id=best.run_id, observations=observations)


@dataclass(frozen=True)
class Outcome:
    """One (family, scenario, repetition): does each region hold the known best, and how wide is it."""

    box_holds: bool
    box_holds_numeric: bool
    prior_holds: bool
    banded: bool  # the prior has lr and weight-decay bands under the known best's choices
    hull_holds: bool  # TPE's narrowed space (SoftPrior.tpe_space: the bands' hull) holds the best's numeric values
    hull_lr_decades: float
    box_lr_decades: float
    prior_lr_decades: float
    centre_error: float
    slope: float


def _lr_decades(space: SearchSpace) -> float:
    d = next(d for d in space.dims if d.name == "lr")
    return 0.0 if d.kind == "fixed" else math.log10(d.args[1] / d.args[0])


def repetition(args: tuple[int, int, dict[str, dict[str, dict[str, Any]]]]) -> dict[tuple[str, str], Outcome]:
    rep, trials, bests = args
    space = load_space("erm", objective_defaults={})
    settings = PriorSettings(transfer="neighbours", narrow="box", top_k=3)
    n_params = {cell(m).id: n for m, n in SIZES.items()}
    out = {}
    for family, slope in FAMILIES.items():
        surface = Surface(family, slope)
        traces = {m: history(surface, m, space, trials, rep) for m in SIZES}
        for name, (target, searched) in SCENARIOS.items():
            best = bests[family][target]
            summaries = {cell(m).id: summary(m, traces[m]) for m in searched}
            peers = [cell(m) for m in (target, *searched)]
            box = cell_priors(cell(target), space, summaries, n_params, peers, settings).space
            numeric = {k: v for k, v in best.items() if k in ("lr", "weight_decay")}
            box_numeric = all(d.kind == "fixed" and math.isclose(d.args[0], numeric[d.name]) or
                              d.kind != "fixed" and d.args[0] <= numeric[d.name] <= d.args[1]
                              for d in box.dims if d.name in numeric)
            neighbours = [NeighbourTrials(cell(m).id, SIZES[m], tuple(traces[m])) for m in searched]
            prior = build_prior(space, neighbours, SIZES[target], n_startup=N_STARTUP)
            lr = prior.band_for("lr", best)
            banded = lr is not None and prior.band_for("weight_decay", best) is not None
            hull = {b.name: b for b in prior.hull()}
            hull_holds = all(b.low - 1e-9 <= math.log(best[k]) <= b.high + 1e-9 for k, b in hull.items())
            hull_lr = (hull["lr"].high - hull["lr"].low) / math.log(10) if "lr" in hull else math.log10(3e-1 / 1e-4)
            out[(family, name)] = Outcome(
                box.contains(best) is None, box_numeric, prior.holds(best), banded, hull_holds, hull_lr,
                _lr_decades(box), (lr.high - lr.low) / math.log(10) if lr else math.nan,
                abs(lr.centre - math.log(best["lr"])) / math.log(10) if lr else math.nan,
                prior.fit.dims["lr"].slope if prior.fit else math.nan)
    return out


def _median(values: Any) -> float:
    """Median of the finite values (nan where a band was missing), nan if none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def report(reps: list[dict[tuple[str, str], Outcome]], bests: dict, trials: int, wall: float, jobs: int) -> str:
    n = len(reps)
    lines = [
        f"Coverage of a new cell's transfer prior: how often the region it concentrates on holds the known best "
        f"configuration, {n} repetitions, each neighbour size searched by {trials} trials of cold TPE (n_startup "
        f"{N_STARTUP}) on the product's ERM space. Two families of synthetic surfaces (`bench/prior_coverage.py`, "
        f"the `bench/warm_start.py` surface): *moving*, the optimal lr falls 0.5 decades per decade of parameters; "
        f"*flat*, it does not move. Box: today's `priors.cell_priors` (narrow: box, top_k 3, margin 0.1); it holds "
        f"the best when the narrowed space contains it (all four hyperparameters), and, in brackets, on lr and weight "
        f"decay alone. Size prior: `search.soft_prior.build_prior` (margin 0, 95% bands, 25% of each dimension's "
        f"draws from the full space); it holds the best when every numeric band under the best's choices does "
        f"(choices are never cut; where the fit cannot place one of the best's options, that dimension is drawn "
        f"from its full distribution, whose region holds every value). Strict: only where every band exists and "
        f"holds the best. TPE's narrowed space (`SoftPrior.tpe_space`, searched by 75% of the suggestions after "
        f"the start-up): the hull of the bands under the likely choices. Goal: coverage ≥ {GOAL}.",
        "",
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine('hyperopt ' + HYPEROPT_VERSION)}; "
        f"total run {wall:.0f} s ({jobs} worker processes).",
        "",
        "| family | scenario | box holds best [numeric only] | size prior holds best [95% CI] | goal | strict: "
        "banded and inside | goal | TPE's narrowed space holds best | lr width: box / prior band / narrowed "
        "space (decades, median) | prior lr centre error (decades, median) | fitted lr slope (median, truth) |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for family, slope in FAMILIES.items():
        for name, (target, searched) in SCENARIOS.items():
            rows = [r[(family, name)] for r in reps]
            prior = sum(o.prior_holds for o in rows)
            strict = sum(o.prior_holds and o.banded for o in rows)
            lo, hi = wilson(prior, n)
            # Per unit ln N in ln lr equals decades per decade.
            lines.append(
                f"| {family} | {name}: {target} from {', '.join(searched)} | {sum(o.box_holds for o in rows)}/{n} "
                f"[{sum(o.box_holds_numeric for o in rows)}/{n}] | {prior}/{n} [{lo:.2f}–{hi:.2f}] | "
                f"{'met' if prior / n >= GOAL else 'MISSED'} | {strict}/{n} | "
                f"{'met' if strict / n >= GOAL else 'MISSED'} | {sum(o.hull_holds for o in rows)}/{n} | "
                f"{statistics.median(o.box_lr_decades for o in rows):.2f} / "
                f"{_median(o.prior_lr_decades for o in rows):.2f} / {_median(o.hull_lr_decades for o in rows):.2f} | "
                f"{_median(o.centre_error for o in rows):.2f} | "
                f"{statistics.median(o.slope for o in rows):+.2f} ({slope:+.2f}) |")
    lines += ["", "Known best per size (noiseless maximum): " + "; ".join(
        f"{family}: " + ", ".join(f"{m} lr {b['lr']:.3g} ({b['optimizer']}, batch {b['batch_size']})"
                                  for m, b in bests[family].items()) for family in FAMILIES) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--history", type=int, default=20, help="cold TPE trials of each searched size")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    space = load_space("erm", objective_defaults={})
    bests = {f: {m: Surface(f, s).known_best(n, space) for m, n in SIZES.items()} for f, s in FAMILIES.items()}
    work = [(rep, args.history, bests) for rep in range(args.reps)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            reps = list(pool.map(repetition, work))
    else:
        reps = [repetition(w) for w in work]
    text = report(reps, bests, args.history, time.perf_counter() - started, args.jobs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

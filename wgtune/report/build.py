"""The data of a study's report: per-cell results over final seeds, accuracy-vs-size curves, power-law fits.

Numbers only, as Optuna's visualization modules compute a NamedTuple first and tests check the
data: `report_fit` fits the power law, `report_tables` writes CSV and Markdown, `report_figures`
draws. scipy loads when first used, so importing this module costs nothing to `wgtune --help`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from trainables.metrics import BEST_TEST_AVG, BEST_TEST_WEIGHTED, BEST_TEST_WORST, SELECTION_METRIC
from wgtune.report.fit import FIT_SCALE, SIGMA_FLOOR, FitError, PowerLaw, fit_power_law
from wgtune.tracking.records import PHASE_FINAL, SEED_PARAM, CellRecord

if TYPE_CHECKING:
    from wgtune.tracking.records import TrialRecord

__all__ = [
    "FINAL", "FIT_SCALE", "MISSING", "SEARCH_ONLY", "SEARCH_ONLY_NOTE", "SELECTION_RULE", "SIGMA_FLOOR",
    "CurvePoint", "Estimate", "FitError", "PowerLaw", "ReportRow", "Series", "SeriesFit",
    "StudyReport", "build_report", "estimate", "fit_power_law", "fit_series", "interval_text", "select_trial",
]

SELECTION_RULE = "best validation worst-group accuracy over the search trials (the best epoch of each)"
VAL_WORST, TEST_WORST, TEST_AVG, TEST_WEIGHTED = SELECTION_METRIC, BEST_TEST_WORST, BEST_TEST_AVG, BEST_TEST_WEIGHTED
FINAL, SEARCH_ONLY, MISSING = PHASE_FINAL, "search only", "missing"
MIN_FIT_SIZES = 4
SEARCH_ONLY_NOTE = "search only: test metrics of the chosen search trial (one run, no final seeds yet)"


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


@dataclass(frozen=True)
class ReportRow:
    """One cell's line: its chosen config and, over its final seeds, test accuracies and disparity."""

    cell_id: str
    dataset: str
    model: str
    family: str
    objective: str
    pretrained: bool
    n_params: int
    status: str
    chosen_config: dict[str, str] = field(default_factory=dict)
    chosen_run_id: str | None = None
    chosen_val_worst: float | None = None
    n_seeds: int = 0
    test_worst: Estimate | None = None
    test_avg: Estimate | None = None
    test_weighted: Estimate | None = None
    disparity: Estimate | None = None
    trials_spent: int = 0
    notes: tuple[str, ...] = ()


class CurvePoint(NamedTuple):
    """One cell on a curve: its size, test worst-group and average accuracy."""

    n_params: int
    model: str
    cell_id: str
    status: str
    worst: Estimate
    avg: Estimate | None


@dataclass(frozen=True)
class Series:
    """The cells of one dataset, family, objective and pretraining, by size; `label` names it in legends."""

    dataset: str
    family: str
    objective: str
    pretrained: bool
    label: str
    points: tuple[CurvePoint, ...]


@dataclass(frozen=True)
class SeriesFit:
    """A series' power-law fit (`law`), or the `reason` there is none."""

    dataset: str
    family: str
    objective: str
    pretrained: bool
    label: str
    n_sizes: int
    law: PowerLaw | None = None
    weighted: bool = False
    reason: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StudyReport:
    """Everything the report shows, and the rules that made it."""

    rule: str
    interval: str
    confidence: float
    rows: tuple[ReportRow, ...]
    series: tuple[Series, ...]
    fits: tuple[SeriesFit, ...]
    missing: tuple[str, ...]
    notes: tuple[str, ...] = ()


def interval_text(confidence: float = 0.95) -> str:
    """How the report's intervals are computed, in words."""
    return (f"{100 * confidence:g}% interval of the mean over final seeds: mean ± t_{{{(1 + confidence) / 2:g}, n-1}}"
            "·std/√n (Student t, std with ddof = 1); none for a single seed")


def select_trial(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The FINISHED search trial with the highest `SELECTION_METRIC`, the earliest among ties (SELECTION_RULE)."""
    scored = [(t.metrics.get(VAL_WORST), t.start_time_ms or 0, i, t) for i, t in enumerate(trials)
              if t.status == "FINISHED" and t.phase != PHASE_FINAL]
    scored = [s for s in scored if s[0] is not None and math.isfinite(s[0])]
    return min(scored, key=lambda s: (-s[0], s[1], s[2]))[3] if scored else None  # type: ignore[operator]


def build_report(cells: Sequence[CellRecord], trials: Sequence[TrialRecord], expected_cells: Sequence[str] = (),
                 confidence: float = 0.95) -> StudyReport:
    """The report of a (possibly partial) study: a row per cell, curves per dataset, a fit per series.

    Trials whose phase is not "final" count as search trials (runs logged before phases were tagged).
    Pass the grid's cells as `cells` so that cells with no run yet still get their dataset and size.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    known: dict[str, CellRecord] = {}
    for cell in cells:
        known.setdefault(cell.cell_id, cell)
    by_cell: dict[str, list[TrialRecord]] = {}
    for trial in trials:
        by_cell.setdefault(trial.cell_id, []).append(trial)
    ids = list(dict.fromkeys([*known, *expected_cells, *by_cell]))
    notes = []
    unknown = [c for c in ids if c not in known and c in by_cell]
    if unknown:
        notes.append(f"no cell metadata for {', '.join(unknown)}: listed, but on no curve")
    rows = sorted((_row(known.get(c) or CellRecord.unknown(c), by_cell.get(c, []), confidence)
                   for c in ids), key=_row_order)
    series = _series(rows)
    return StudyReport(SELECTION_RULE, interval_text(confidence), confidence, tuple(rows), series,
                       tuple(fit_series(s) for s in series), tuple(r.cell_id for r in rows if r.status == MISSING),
                       tuple(notes))


def _row(cell: CellRecord, trials: list[TrialRecord], confidence: float) -> ReportRow:
    search = [t for t in trials if t.phase != PHASE_FINAL]
    final, notes = _one_per_seed([t for t in trials if t.phase == PHASE_FINAL and t.status == "FINISHED"])
    diverged = sorted({t.params.get(SEED_PARAM, "?") for t in trials if t.phase == PHASE_FINAL and t.diverged})
    if diverged:
        notes.append(f"the chosen config diverged on final seed(s) {', '.join(diverged)}: not in the mean")
    chosen = select_trial(search)
    base: dict[str, Any] = dict(
        cell_id=cell.cell_id, dataset=cell.dataset, model=cell.model, family=cell.family,
        objective=cell.objective, pretrained=cell.pretrained, n_params=cell.n_params,
        trials_spent=sum(t.status in ("FINISHED", "FAILED") for t in search))
    if chosen is not None:
        base.update(chosen_config=dict(chosen.params), chosen_run_id=chosen.run_id,
                    chosen_val_worst=chosen.metrics[VAL_WORST])
    elif any(t.status == "FINISHED" for t in search):
        notes.append(f"no finished search trial logged {VAL_WORST}: nothing to select")
    if final:
        if chosen is None:
            notes.append("final seeds but no selectable search trial: chosen config unknown")
        else:
            notes.extend(_config_mismatch(chosen, final))
        worst = [t.metrics.get(TEST_WORST) for t in final]
        avg = [t.metrics.get(TEST_AVG) for t in final]
        ratios = [w / a for w, a in zip(worst, avg) if w is not None and a is not None and a > 0]
        return ReportRow(**base, status=FINAL, n_seeds=len(final), test_worst=estimate(worst, confidence),
                         test_avg=estimate(avg, confidence),
                         test_weighted=estimate([t.metrics.get(TEST_WEIGHTED) for t in final], confidence),
                         disparity=estimate(ratios, confidence), notes=tuple(notes))
    if chosen is not None:
        m = chosen.metrics
        ratio = m[TEST_WORST] / m[TEST_AVG] if m.get(TEST_WORST) is not None and m.get(TEST_AVG) else None
        return ReportRow(**base, status=SEARCH_ONLY, test_worst=estimate([m.get(TEST_WORST)]),
                         test_avg=estimate([m.get(TEST_AVG)]), test_weighted=estimate([m.get(TEST_WEIGHTED)]),
                         disparity=estimate([ratio]), notes=(*notes, SEARCH_ONLY_NOTE))
    failed = sum(t.status == "FAILED" for t in trials)
    return ReportRow(**base, status=MISSING,
                     notes=(*notes, f"no finished trial ({failed} failed)" if failed else "no finished trial"))


def _one_per_seed(final: list[TrialRecord]) -> tuple[list[TrialRecord], list[str]]:
    """One run per seed, the latest: a seed run twice is not two samples of the seed-to-seed spread."""
    latest: dict[str, TrialRecord] = {}
    repeated: list[str] = []
    for trial in sorted(final, key=lambda t: t.start_time_ms or 0):
        seed = trial.params.get(SEED_PARAM)
        key = trial.run_id if seed is None else f"seed={seed}"
        if key in latest and key not in repeated:
            repeated.append(key)
        latest[key] = trial
    notes = [f"{', '.join(repeated)} ran more than once: the latest run counts"] if repeated else []
    return list(latest.values()), notes


def _config_mismatch(chosen: TrialRecord, final: list[TrialRecord]) -> list[str]:
    # The search may have gone on after the final seeds ran and chosen another config.
    keys = sorted({k for t in final for k in chosen.params.keys() & t.params.keys()
                   if k != SEED_PARAM and chosen.params[k] != t.params[k]})
    return [f"final seeds ran another config than the chosen one (differing: {', '.join(keys)})"] if keys else []


def _row_order(row: ReportRow) -> tuple[Any, ...]:
    return (row.dataset == "", row.dataset, row.family, row.objective, row.pretrained, row.n_params,
            row.model, row.cell_id)


def _series(rows: Sequence[ReportRow]) -> tuple[Series, ...]:
    points: dict[tuple[str, str, str, bool], list[CurvePoint]] = {}
    for row in rows:
        if row.status != MISSING and row.test_worst is not None and row.dataset:
            points.setdefault((row.dataset, row.family, row.objective, row.pretrained), []).append(
                CurvePoint(row.n_params, row.model, row.cell_id, row.status, row.test_worst, row.test_avg))
    families: dict[str, set[str]] = {}
    for dataset, family, _, _ in points:
        families.setdefault(dataset, set()).add(family)
    series = []
    for (dataset, family, objective, pretrained), pts in sorted(points.items()):
        label = objective + ("+pt" if pretrained else "")
        if len(families[dataset]) > 1:  # sizes of two families are not one curve
            label = f"{family} {label}"
        series.append(Series(dataset, family, objective, pretrained, label,
                             tuple(sorted(pts, key=lambda p: (p.n_params, p.model)))))
    return tuple(series)


def fit_series(series: Series) -> SeriesFit:
    """Fit worst-group error vs size over the series' final-seed points (search-only points are one run).

    Weighted by each point's standard error of the mean (floored at SIGMA_FLOOR) when every point
    has one, else unweighted; standard errors are scaled by the residuals (absolute_sigma=False).
    """
    key = dict(dataset=series.dataset, family=series.family, objective=series.objective,
               pretrained=series.pretrained, label=series.label)
    pts = [p for p in series.points if p.status == FINAL]
    sizes = len({p.n_params for p in pts})
    if sizes < MIN_FIT_SIZES:
        others = len(series.points) - len(pts)
        extra = f"; {others} more search only" if others else ""
        return SeriesFit(**key, n_sizes=sizes, reason=f"needs ≥ {MIN_FIT_SIZES} sizes with final seeds "
                                                      f"(has {sizes}{extra})")
    sems = [p.worst.sem for p in pts]
    sigma = None if any(s is None for s in sems) else [float(s) for s in sems]  # type: ignore[arg-type]
    try:
        law = fit_power_law([p.n_params for p in pts], [1 - p.worst.mean for p in pts], sigma)
    except FitError as err:
        return SeriesFit(**key, n_sizes=sizes, weighted=sigma is not None, reason=f"fit failed: {err}")
    notes = []
    if law.beta <= 1e-6 or law.beta >= 3 - 1e-6:
        notes.append("β at a bound of [0, 3]: these sizes do not determine it")
    if law.C <= 1e-6 or law.C >= 1 - 1e-6:
        notes.append("C at a bound of [0, 1]")
    if None in (law.A_se, law.beta_se, law.C_se):
        notes.append("some standard errors undetermined")
    return SeriesFit(**key, n_sizes=sizes, law=law, weighted=sigma is not None, notes=tuple(notes))

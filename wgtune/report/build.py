"""The data of a study's report: per-cell results over final seeds, tuning noise, curves, fits.

Numbers only, as Optuna's visualization modules compute a NamedTuple first and tests check the
data: `scaling` groups the curves and fits them, `noise` measures tuning noise, `tables` writes CSV
and Markdown, `figures` draws. scipy loads when first used, so importing this module costs nothing
to `wgtune --help`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from trainables.metrics import BEST_TEST_AVG, BEST_TEST_WEIGHTED, BEST_TEST_WORST, SELECTION_METRIC
from wgtune.report.compute import CellCost, cell_cost
from wgtune.report.fit import FIT_SCALE, SIGMA_FLOOR, FitError, LogSlope, PowerLaw, fit_log_slope, fit_power_law
from wgtune.report.noise import CellSamples, TuningNoise, tuning_noise
from wgtune.report.scaling import CurvePoint, Series, SeriesFit, fit_series, group_series
from wgtune.report.stats import Estimate, estimate, interval_text
from wgtune.tracking.records import (
    CELL_BEST_VAL_WORST,
    CELL_DEVICE_HOURS,
    CELL_FAILED_SEEDS,
    CELL_FINAL_SEEDS,
    CELL_TEST_WORST_HIGH,
    CELL_TEST_WORST_LOW,
    CELL_TEST_WORST_MEAN,
    CELL_TRIALS_SPENT,
    CONFIG_PREFIX,
    PHASE_FINAL,
    SEED_PARAM,
    CellRecord,
)
from wgtune.tracking.selection import (
    DEFAULT_RULE,
    SELECTION_RULE,
    SELECTION_RULES,
    SelectionRule,
    differing_keys,
    rule_of,
    select_trial,
)

if TYPE_CHECKING:
    from wgtune.tracking.records import TrialRecord

__all__ = [
    "DEFAULT_RULE", "FINAL", "FIT_SCALE", "MISSING", "SEARCH_ONLY", "SEARCH_ONLY_NOTE", "SELECTION_RULE",
    "SELECTION_RULES", "SIGMA_FLOOR", "SelectionRule",
    "CellSamples", "CurvePoint", "Estimate", "FitError", "LogSlope", "PowerLaw", "ReportRow", "Series", "SeriesFit",
    "StudyReport", "TuningNoise", "build_report", "cell_metrics", "estimate", "fit_log_slope", "fit_power_law",
    "fit_series",
    "interval_text", "select_trial",
]

VAL_WORST, TEST_WORST, TEST_AVG, TEST_WEIGHTED = SELECTION_METRIC, BEST_TEST_WORST, BEST_TEST_AVG, BEST_TEST_WEIGHTED
FINAL, SEARCH_ONLY, MISSING = PHASE_FINAL, "search only", "missing"
SEARCH_ONLY_NOTE = "search only: test metrics of the chosen search trial (one run, no final seeds yet)"
DIVERGED_WORST = 0.0
"""The test worst-group accuracy a diverged final seed counts as in `test_worst_all`: its outputs are NaN,
so it predicts one class and gets at least one group entirely wrong."""


@dataclass(frozen=True)
class ReportRow:
    """One cell's line: its chosen config, over its final seeds test accuracies and disparity, its
    diverged final seeds (`n_failed`) and its tuning noise."""

    cell_id: str
    dataset: str
    model: str
    family: str
    size: str
    objective: str
    pretrained: bool
    n_params: int
    status: str
    chosen_config: dict[str, str] = field(default_factory=dict)
    chosen_run_id: str | None = None
    chosen_val_worst: float | None = None
    n_seeds: int = 0
    n_failed: int = 0
    """Final seeds on which the chosen config diverged: failures of the cell, not in the means."""
    test_worst: Estimate | None = None
    test_worst_all: Estimate | None = None
    """Test worst-group accuracy over every final seed, a diverged one counted as DIVERGED_WORST."""
    test_avg: Estimate | None = None
    test_weighted: Estimate | None = None
    disparity: Estimate | None = None
    trials_spent: int = 0
    tuning: TuningNoise | None = None
    samples: CellSamples = CellSamples()
    notes: tuple[str, ...] = ()
    cost: CellCost = CellCost()
    """What every trial run of the cell cost, its search included (`compute.cell_cost`)."""

    @property
    def test_adjusted(self) -> Estimate | None:
        """The average the literature reports: weighted by training-group proportions where the cell logged it
        (Waterbirds' test split is group-balanced, so its plain average is not the one papers show)."""
        return self.test_weighted if self.test_weighted is not None else self.test_avg


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


def build_report(cells: Sequence[CellRecord], trials: Sequence[TrialRecord], expected_cells: Sequence[str] = (),
                 confidence: float = 0.95, n_boot: int | None = None, select: str = DEFAULT_RULE) -> StudyReport:
    """The report of a (possibly partial) study: a row per cell, curves per data set and size axis, fits.

    Trials whose phase is not "final" count as search trials (runs logged before phases were tagged).
    Pass the grid's cells as `cells` so that cells with no run yet still get their data set and size.
    `n_boot` replicates per series bootstrap (default `scaling.BOOTSTRAP`). `select` names a rule of
    SELECTION_RULES: under another rule than the study's, a cell whose chosen config differs from the one
    its final seeds re-trained is shown from its chosen search trial (one run), never from those seeds.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    rule = rule_of(select)
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
    rows = sorted((_row(known.get(c) or CellRecord.unknown(c), by_cell.get(c, []), confidence, select)
                   for c in ids), key=_row_order)
    series = group_series(
        ((r.dataset, r.family, r.objective, r.pretrained), r.size,
         CurvePoint(r.n_params, r.model, r.cell_id, r.status, r.test_worst, r.test_adjusted, r.samples, r.tuning,
                    r.n_failed))
        for r in rows if r.status != MISSING and r.test_worst is not None and r.dataset)
    boot = {} if n_boot is None else {"n_boot": n_boot}
    return StudyReport(rule.description, interval_text(confidence), confidence, tuple(rows), series,
                       tuple(fit_series(s, confidence, **boot) for s in series),
                       tuple(r.cell_id for r in rows if r.status == MISSING), tuple(notes))


def cell_metrics(row: ReportRow) -> dict[str, float]:
    """The cell's summary as its parent run logs it (`records.CELL_METRICS`): best validation worst-group,
    test worst-group mean and interval (final seeds, else the chosen search trial), trials spent, seeds, and its
    compute in device-hours, search included (absent where no trial logged one)."""
    values: dict[str, float | None] = {
        CELL_BEST_VAL_WORST: row.chosen_val_worst, CELL_TRIALS_SPENT: row.trials_spent,
        CELL_FINAL_SEEDS: row.n_seeds, CELL_FAILED_SEEDS: row.n_failed,
        CELL_DEVICE_HOURS: row.cost.total_hours if row.cost.recorded else None}
    if row.test_worst is not None:
        values.update({CELL_TEST_WORST_MEAN: row.test_worst.mean, CELL_TEST_WORST_LOW: row.test_worst.low,
                       CELL_TEST_WORST_HIGH: row.test_worst.high})
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def _row(cell: CellRecord, trials: list[TrialRecord], confidence: float, select: str = DEFAULT_RULE) -> ReportRow:
    metric = SELECTION_RULES[select].metric
    search = [t for t in trials if t.phase != PHASE_FINAL]
    chosen = select_trial(search, metric)
    ran, notes = _rule_finals(trials, select, chosen)
    final, repeated = _one_per_seed([t for t in ran if t.status == "FINISHED"])
    notes.extend(repeated)
    diverged = sorted({t.params.get(SEED_PARAM, "?") for t in ran if t.diverged})
    samples = _samples(search, chosen, final, metric)
    base: dict[str, Any] = dict(
        cell_id=cell.cell_id, dataset=cell.dataset, model=cell.model, family=cell.family, size=cell.size,
        objective=cell.objective, pretrained=cell.pretrained, n_params=cell.n_params,
        trials_spent=sum(t.status in ("FINISHED", "FAILED") for t in search), samples=samples,
        tuning=tuning_noise(samples), n_failed=len(diverged), cost=cell_cost(trials))
    if chosen is not None:
        # The searched values; the whole resolved config (`config.*` params) stays on the run in MLflow.
        searched = {k: v for k, v in chosen.params.items() if not k.startswith(CONFIG_PREFIX)}
        base.update(chosen_config=searched, chosen_run_id=chosen.run_id,
                    chosen_val_worst=chosen.metrics.get(VAL_WORST))
    elif any(t.status == "FINISHED" for t in search):
        notes.append(f"no finished search trial logged {metric}: nothing to select")
    worst = [t.metrics.get(TEST_WORST) for t in final]
    if diverged:
        all_seeds = estimate([*worst, *[DIVERGED_WORST] * len(diverged)], confidence)
        base["test_worst_all"] = all_seeds
        notes.append(f"FAILED: the chosen config diverged on {len(diverged)} of {len(final) + len(diverged)} final "
                     f"seed(s) ({', '.join(diverged)}); the means are over the {len(final)} that finished; counting "
                     f"a diverged seed as {100 * DIVERGED_WORST:g}% worst-group gives "
                     f"{100 * all_seeds.mean:.1f}%")  # type: ignore[union-attr]
    if final:
        if chosen is None:
            notes.append("final seeds but no selectable search trial: chosen config unknown")
        else:
            notes.extend(_config_mismatch(chosen, final))
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


def _rule_finals(trials: list[TrialRecord], select: str, chosen: TrialRecord | None
                 ) -> tuple[list[TrialRecord], list[str]]:
    """The final runs that stand for the cell under rule `select`, and why others were set aside.

    The study's rule: its own final seeds (no `select` tag), never another rule's. Another rule: the seeds
    re-trained under it (`wgtune launch --select`) if they ran its chosen config, else the study's seeds if
    they ran that config too, else none: the chosen search trial (one run) stands for the cell.
    """
    def of(rule: str) -> list[TrialRecord]:
        return [t for t in trials if t.phase == PHASE_FINAL and (t.select or DEFAULT_RULE) == rule
                and (t.status == "FINISHED" or t.diverged)]

    study = of(DEFAULT_RULE)
    if select == DEFAULT_RULE or chosen is None:
        return study, []
    own = of(select)
    if own and not _config_mismatch(chosen, own):
        return own, []
    if study and not _config_mismatch(chosen, study):
        return study, []
    if own or study:  # those seeds re-trained another config than this rule's choice
        return [], ["this rule chose another config than the final seeds re-trained: shown from its search "
                    "trial (wgtune launch --select re-trains it, to compare like with like)"]
    return [], []


def _samples(search: list[TrialRecord], chosen: TrialRecord | None, final: list[TrialRecord],
             metric: str = VAL_WORST) -> CellSamples:
    """The cell's raw numbers for tuning noise and the bootstrap: finished search trials in start order, their
    selection `metric` (validation worst-group accuracy under the study's rule) and test worst-group accuracy."""
    done = sorted((t for t in search if t.status == "FINISHED" and _finite(t.metrics.get(metric))),
                  key=lambda t: t.start_time_ms or 0)
    test = tuple(float(t.metrics[TEST_WORST]) if _finite(t.metrics.get(TEST_WORST)) else math.nan for t in done)
    index = next((i for i, t in enumerate(done) if chosen is not None and t.run_id == chosen.run_id), None)
    seeds = tuple(float(v) for v in (t.metrics.get(TEST_WORST) for t in final) if _finite(v))
    return CellSamples(seeds, tuple(float(t.metrics[metric]) for t in done), test, index)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


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
    keys = sorted({k for t in final for k in differing_keys(chosen.params, t.params)})
    return [f"final seeds ran another config than the chosen one (differing: {', '.join(keys)})"] if keys else []


def _row_order(row: ReportRow) -> tuple[Any, ...]:
    return (row.dataset == "", row.dataset, row.family, row.objective, row.pretrained, row.n_params,
            row.model, row.cell_id)

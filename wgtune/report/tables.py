"""The report as tables: `cells.csv` (every number), `cells.md` (for people, with the rules), `fits.csv`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from wgtune.report.build import (
    DIVERGED_WORST,
    FINAL,
    FIT_SCALE,
    SEARCH_ONLY,
    SEARCH_ONLY_NOTE,
    Estimate,
    ReportRow,
    StudyReport,
)
from wgtune.report.compute import device_unit
from wgtune.report.noise import RERUN_RANGE

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "format_config", "format_count", "format_estimate", "markdown", "to_frame", "write_tables"]

_ESTIMATES = (("test_worst", "test worst-group %"), ("test_avg", "test average %"),
              ("test_weighted", "test train-weighted average %"), ("disparity", "disparity worst/average"))
_TUNING = ("tuning_trials", "best_val_at_budget_mean", "best_val_at_budget_std", "best_val_at_half_mean",
           "gain_last_doubling", "search_limited_noise", "search_limited", "rerun_test_worst_mean",
           "rerun_test_worst_std", "rerun_test_worst_low", "rerun_test_worst_high")
_COST = ("device", "search_device_hours", "final_device_hours", "total_device_hours", "images_seen", "cost_runs",
         "cost_unrecorded")
COLUMNS = ("cell_id", "dataset", "model", "family", "n_params", "objective", "pretrained", "status", "n_seeds",
           "n_failed", *(f"{name}_{part}" for name, _ in _ESTIMATES for part in ("mean", "std", "low", "high")),
           *(f"test_worst_all_{part}" for part in ("mean", "std", "low", "high")),
           "val_worst_chosen", "trials_spent", *_TUNING, *_COST, "chosen_run_id", "chosen_config", "notes")
"""The columns of `cells.csv`, in order; an empty study still gets them as a header."""
FIT_COLUMNS = ("dataset", "series", "axis", "n_sizes", "weighted", "slope", "slope_low", "slope_high", "p_falling",
               "slope_dof", "A", "beta", "beta_low", "beta_high", "C", "law_dof", "trend", "flagged", "n_boot",
               "scale", "reason", "notes")
"""The columns of `fits.csv`."""


def to_frame(report: StudyReport) -> pd.DataFrame:
    """The report's rows as a DataFrame: one column per number (NaN where absent), the config as JSON."""
    import pandas as pd

    records = []
    for row in report.rows:
        record: dict[str, Any] = dict(
            cell_id=row.cell_id, dataset=row.dataset, model=row.model, family=row.family,
            n_params=row.n_params, objective=row.objective, pretrained=row.pretrained, status=row.status,
            n_seeds=row.n_seeds)
        for name in [n for n, _ in _ESTIMATES] + ["test_worst_all"]:
            value: Estimate | None = getattr(row, name)
            for part in ("mean", "std", "low", "high"):
                got = None if value is None else getattr(value, part)
                record[f"{name}_{part}"] = math.nan if got is None else got
        record.update(_tuning_record(row), **_cost_record(row), n_failed=row.n_failed,
                      val_worst_chosen=math.nan if row.chosen_val_worst is None else row.chosen_val_worst,
                      trials_spent=row.trials_spent, chosen_run_id=row.chosen_run_id or "",
                      chosen_config=json.dumps(row.chosen_config, sort_keys=True), notes="; ".join(row.notes))
        records.append(record)
    return pd.DataFrame.from_records(records, columns=list(COLUMNS))


def write_tables(report: StudyReport, out_dir: str | Path) -> list[Path]:
    """Write `cells.csv` (every number), `cells.md` (readable, with the rules) and `fits.csv`."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "cells.csv", out / "cells.md", out / "fits.csv"]
    to_frame(report).to_csv(paths[0], index=False)
    paths[1].write_text(markdown(report), encoding="utf-8")
    pd.DataFrame([_fit_record(f) for f in report.fits], columns=list(FIT_COLUMNS)).to_csv(paths[2], index=False)
    return paths


def _tuning_record(row: ReportRow) -> dict[str, Any]:
    t = row.tuning
    if t is None:
        return {name: (0 if name == "tuning_trials" else "" if name == "search_limited" else math.nan)
                for name in _TUNING}
    half = t.best_of_k[math.ceil(t.n_trials / 2) - 1][0]
    nan = (lambda v: math.nan if v is None else v)
    return dict(tuning_trials=t.n_trials, best_val_at_budget_mean=t.best_of_k[-1][0],
                best_val_at_budget_std=t.best_of_k[-1][1], best_val_at_half_mean=half,
                gain_last_doubling=t.gain_last_doubling, search_limited_noise=t.noise,
                search_limited="yes" if t.search_limited else "no", rerun_test_worst_mean=nan(t.rerun_test_mean),
                rerun_test_worst_std=nan(t.rerun_test_std), rerun_test_worst_low=nan(t.rerun_test_low),
                rerun_test_worst_high=nan(t.rerun_test_high))


def _cost_record(row: ReportRow) -> dict[str, Any]:
    """Device-hours of the cell's search, final seeds and both (NaN where no run logged a cost), and what it counted."""
    c = row.cost
    hours = (lambda h: h if c.recorded else math.nan)
    return dict(device=c.device, search_device_hours=hours(c.search_hours), final_device_hours=hours(c.final_hours),
                total_device_hours=hours(c.total_hours), images_seen=c.images, cost_runs=c.trials,
                cost_unrecorded=c.unrecorded)


def _cost_text(row: ReportRow) -> str:
    """`1.24 GPU-h (search 1.02)`; `—` when no run of the cell logged a cost."""
    c = row.cost
    if not c.recorded:
        return "—"
    unit = device_unit(c.device).replace("hours", "h")
    missing = f", {c.unrecorded} run(s) unrecorded" if c.unrecorded else ""
    return f"{_hours(c.total_hours)} {unit} (search {_hours(c.search_hours)}{missing})"


def _hours(value: float) -> str:
    return f"{value:.3g}" if value >= 0.01 else f"{value:.2g}"


def _fit_record(fit: Any) -> dict[str, Any]:
    slope, law = fit.slope, fit.law
    pair = (lambda v: (None, None) if v is None else v)
    return dict(dataset=fit.dataset, series=fit.label, axis=fit.axis, n_sizes=fit.n_sizes, weighted=fit.weighted,
                slope=slope.slope if slope else None, slope_low=pair(fit.slope_interval)[0],
                slope_high=pair(fit.slope_interval)[1], p_falling=fit.p_falling,
                slope_dof=slope.dof if slope else None, A=law.A if law else None, beta=law.beta if law else None,
                beta_low=pair(fit.beta_interval)[0], beta_high=pair(fit.beta_interval)[1],
                C=law.C if law else None, law_dof=law.dof if law else None, trend=law.trend if law else "",
                flagged=bool((slope and slope.flagged) or (law and law.flagged)), n_boot=fit.n_boot,
                scale=FIT_SCALE, reason=fit.reason or "", notes="; ".join(fit.notes))


TUNING_TEXT = (
    "Tuning noise, from each cell's finished search trials (m of them): \"best val @m\" is the expected best "
    "validation worst-group accuracy of a search of m trials drawn from these (± its standard deviation; "
    "exact order statistics, Dodge et al. 2019); \"search-limited?\" is yes when going from ⌈m/2⌉ to m trials "
    "raised that expectation by more than the cell's seed standard error (the curve's error bar; the sd of the "
    "best of m without 2 final seeds), i.e. doubling the search would likely move the point visibly; "
    "\"re-run search: test worst\" is the test worst-group accuracy a re-run search would choose, its "
    f"standard deviation and {100 * RERUN_RANGE[0]:g}–{100 * RERUN_RANGE[1]:g}% range (from the search trials' "
    "own one-seed test values; a lower bound: it errs narrow).")
FAILED_TEXT = (f"\"failed seeds\": final seeds on which the chosen config diverged. They are not in the means; "
               f"the notes give the mean with each counted as {100 * DIVERGED_WORST:g}% worst-group accuracy "
               "(`test_worst_all_*` in cells.csv).")

COMPUTE_TEXT = ("\"compute\": what every trial run of the cell cost, search trials and final seeds, failed and killed "
                "ones too (each run's last logged `cost/device_s`): GPU-hours for cells whose trials hold GPUs "
                "(a shared GPU counts its share), else CPU-core-hours; figure `error_vs_compute`.")


def _study_compute(report: StudyReport) -> str:
    """The study's total per unit (GPU-hours and CPU-core-hours are never added together)."""
    totals: dict[str, float] = {}
    for row in report.rows:
        if row.cost.recorded:
            totals[row.cost.device] = totals.get(row.cost.device, 0.0) + row.cost.total_hours
    return ", ".join(f"{_hours(h)} {device_unit(d)}" for d, h in sorted(totals.items())) or "none recorded"


def markdown(report: StudyReport) -> str:
    """The report as Markdown: the rules, a cell table with tuning noise, a fit table."""
    ci = f"{100 * report.confidence:g}% CI"
    head = ["dataset", "model", "params", "objective", "pretrained", "status", "seeds", "failed seeds",
            *(f"{title} (mean ± std, {ci})" for _, title in _ESTIMATES),
            "val worst-group % (chosen)", "trials spent", "compute, search included", "best val @m % (± sd)",
            "search-limited?",
            "re-run search: test worst % (sd) [range]", "chosen config", "notes"]
    lines = ["# wgtune report", "", f"- Model selection: {report.rule}.", f"- Intervals: {report.interval}.",
             f"- \"{SEARCH_ONLY}\": {SEARCH_ONLY_NOTE.split(': ', 1)[1]}.", f"- {FAILED_TEXT}", f"- {TUNING_TEXT}",
             f"- {COMPUTE_TEXT}", f"- Compute in all: {_study_compute(report)}.",
             f"- Missing cells: {', '.join(report.missing) or 'none'}.", *(f"- {n}" for n in report.notes), "",
             _md_row(head), _md_row(["---"] * len(head))]
    for row in report.rows:
        cells = [row.dataset or "?", row.model or row.cell_id, format_count(row.n_params) if row.n_params else "?",
                 row.objective or "?", ("yes" if row.pretrained else "no") if row.dataset else "?", row.status,
                 str(row.n_seeds), str(row.n_failed) if row.n_failed else "0"]
        cells += [format_estimate(getattr(row, name), 1.0 if name == "disparity" else 100.0, row.status)
                  for name, _ in _ESTIMATES]
        cells += ["—" if row.chosen_val_worst is None else f"{100 * row.chosen_val_worst:.1f}",
                  str(row.trials_spent), _cost_text(row), *_tuning_cells(row), format_config(row.chosen_config) or "—",
                  "; ".join(row.notes)]
        lines.append(_md_row(cells))
    lines += ["", "## Scaling fits of test worst-group error", "",
              "One series per parameterisation (data set, family, objective, pretraining and the one architecture "
              "axis its sizes vary along). Two forms, both free to rise or fall: the log-log slope, "
              "log L = a + s·log N (s < 0: error falls with size), and the power law "
              f"L(N) = A·(N/{format_count(FIT_SCALE)})^(-β) + C (A < 0: error rises towards C). Over cells with "
              "final seeds, weighted by each mean's standard error when every point has ≥ 2 seeds. Intervals "
              f"[{ci}] are percentile bootstraps that resample every cell's final seeds and its search outcome; "
              "P(falling) is the share of bootstrap slopes below 0. A fit with fewer than 2 residual degrees of "
              "freedom is marked ⚠ and its parameters are not determined.", "",
              _md_row(head_fits := ["dataset", "series", "axis", "sizes", "slope s [CI]", "P(falling)",
                                    "A", "β [CI]", "C", "trend", "weighted", "notes"]),
              _md_row(["---"] * len(head_fits))]
    for fit in report.fits:
        law, slope = fit.law, fit.slope
        slope_text = "—" if slope is None else _with_interval(slope.slope, fit.slope_interval) + _warn(slope.flagged)
        law_cells = (["—"] * 3 if law is None else
                     [f"{law.A:.3g}", _with_interval(law.beta, fit.beta_interval) + _warn(law.flagged),
                      f"{law.C:.3g}"])
        lines.append(_md_row([fit.dataset, fit.label, fit.axis, str(fit.n_sizes), slope_text,
                              "—" if fit.p_falling is None else f"{fit.p_falling:.2f}", *law_cells,
                              law.trend if law else "—", "yes" if fit.weighted else "no",
                              "; ".join(filter(None, (fit.reason, *fit.notes)))]))
    return "\n".join(lines) + "\n"


def _tuning_cells(row: ReportRow) -> list[str]:
    t = row.tuning
    if t is None:
        return ["—", "—", "—"]
    mean, sd = t.best_of_k[-1]
    rerun = "—"
    if t.rerun_test_mean is not None:
        rerun = (f"{100 * t.rerun_test_mean:.1f} ({100 * t.rerun_test_std:.1f}) "  # type: ignore[operator]
                 f"[{100 * t.rerun_test_low:.1f}, {100 * t.rerun_test_high:.1f}]")  # type: ignore[operator]
    return [f"{100 * mean:.1f} ± {100 * sd:.1f} (m={t.n_trials})", "yes" if t.search_limited else "no", rerun]


def _with_interval(value: float, interval: tuple[float, float] | None) -> str:
    return f"{value:.3g}" + ("" if interval is None else f" [{interval[0]:.3g}, {interval[1]:.3g}]")


def _warn(flagged: bool) -> str:
    return " ⚠" if flagged else ""


def format_count(n: float) -> str:
    """A parameter count for people: 512, 850K, 1.2M, 11.7M, 1.3B."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}" if n / size < 100 else f"{n / size:.0f}{suffix}"
    return f"{n:g}"


def format_config(config: Mapping[str, str], limit: int = 6) -> str:
    """`lr=0.012, batch_size=64, …`: numbers to 3 significant digits, at most `limit` entries."""
    parts = [f"{k}={_short(v)}" for k, v in list(config.items())[:limit]]
    return ", ".join(parts + (["…"] if len(config) > limit else []))


def format_estimate(value: Estimate | None, factor: float = 100.0, status: str = FINAL) -> str:
    """`78.3 ± 1.2 [75.1, 81.5]` (× factor); one run: `78.3 (1 seed)`, or `(search trial)` for search only."""
    if value is None:
        return "—"
    digits = 1 if factor >= 10 else 3
    text = f"{factor * value.mean:.{digits}f}"
    if value.std is None:
        return f"{text} ({'search trial' if status == SEARCH_ONLY else '1 seed'})"
    assert value.low is not None and value.high is not None
    return (f"{text} ± {factor * value.std:.{digits}f} "
            f"[{factor * value.low:.{digits}f}, {factor * value.high:.{digits}f}]")


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if value.lstrip("-").isdigit() else f"{number:.3g}"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

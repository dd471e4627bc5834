"""The study's curves and slopes under every selection rule, side by side (issue 14, item 3).

The study chooses each cell's config by validation worst-group accuracy, which needs group labels
on the validation split. `val_avg` needs none; `oracle_test_worst` peeks at test and bounds what
selection could reach. Every rule's report is rebuilt from the same MLflow records
(`build.build_report(select=...)`), so this costs no training: per series, the log-log slope under
each rule and how many of its cells chose another config than the study's rule, and per changed
cell, the two choices and their test worst-group accuracy. A cell whose rule-chosen config has no
final seeds of its own is drawn from its chosen search trial (one run; hollow marker) and left out
of the fit, as everywhere in the report; `wgtune launch --select RULE` re-trains those.

Data first, as Optuna's visualization modules compute a NamedTuple first (optuna/optuna,
optuna/visualization/_optimization_history.py): `compare_rules` returns the numbers that
`write_selection` writes as `selection.md`, `selection.csv` and `selection.png`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from wgtune.report.build import FINAL, SEARCH_ONLY, ReportRow, Series, SeriesFit, StudyReport, build_report
from wgtune.report.tables import format_config, format_count, format_estimate
from wgtune.tracking.selection import DEFAULT_RULE, SELECTION_RULES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from wgtune.report.stats import Estimate
    from wgtune.tracking.records import CellRecord, TrialRecord

__all__ = ["COLUMNS", "CellChange", "RuleCurve", "SelectionComparison", "SeriesComparison", "compare_rules",
           "rule_reports", "selection_markdown", "write_selection"]

COLUMNS = ("dataset", "series", "axis", "rule", "n_points", "n_fitted", "slope", "slope_low", "slope_high",
           "p_falling", "slope_flagged", "changed", "retrained", "changed_cells", "reason")
"""The columns of `selection.csv`: one line per series and rule."""


@dataclass(frozen=True)
class RuleCurve:
    """One series under one rule: its points, its fit, and which of its cells chose another config than the
    study's rule (`changed`) and, of those, which have final seeds re-trained under this rule (`retrained`)."""

    rule: str
    series: Series | None
    fit: SeriesFit | None
    changed: tuple[str, ...] = ()
    retrained: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeriesComparison:
    """One series (data set, family, objective, pretraining, size axis) under every rule, in `rules` order."""

    dataset: str
    label: str
    axis: str
    curves: tuple[RuleCurve, ...]

    def under(self, rule: str) -> RuleCurve:
        """The series under `rule`."""
        return next(c for c in self.curves if c.rule == rule)


@dataclass(frozen=True)
class CellChange:
    """A cell whose config under `rule` is another search trial than under the study's rule."""

    cell_id: str
    rule: str
    study: ReportRow
    other: ReportRow


@dataclass(frozen=True)
class SelectionComparison:
    """Every rule's report and what differs between them."""

    rules: tuple[str, ...]
    series: tuple[SeriesComparison, ...]
    changes: tuple[CellChange, ...]


def rule_reports(cells: Sequence[CellRecord], trials: Sequence[TrialRecord], expected_cells: Sequence[str] = (),
                 confidence: float = 0.95, n_boot: int | None = None,
                 known: Mapping[str, StudyReport] | None = None) -> dict[str, StudyReport]:
    """The report under every rule of SELECTION_RULES, from the same records (`known`: ones already built)."""
    known = dict(known or {})
    return {rule: known.get(rule) or build_report(cells, trials, expected_cells, confidence, n_boot, select=rule)
            for rule in SELECTION_RULES}


def compare_rules(reports: Mapping[str, StudyReport]) -> SelectionComparison:
    """Per series, each rule's curve and fit; per cell, where a rule's choice differs from the study's."""
    if DEFAULT_RULE not in reports:
        raise ValueError(f"compare_rules needs the study's own rule {DEFAULT_RULE!r} among {', '.join(reports)}")
    rules = (DEFAULT_RULE, *(r for r in reports if r != DEFAULT_RULE))
    study = {row.cell_id: row for row in reports[DEFAULT_RULE].rows}
    changes = []
    for rule in rules[1:]:
        for row in reports[rule].rows:
            base = study.get(row.cell_id)
            if base is not None and row.chosen_run_id is not None and row.chosen_run_id != base.chosen_run_id:
                changes.append(CellChange(row.cell_id, rule, base, row))
    changed = {(c.rule, c.cell_id): c for c in changes}
    keys = list(dict.fromkeys((s.dataset, s.label, s.axis) for r in rules for s in reports[r].series))
    out = []
    for dataset, label, axis in keys:
        curves = []
        for rule in rules:
            series = next((s for s in reports[rule].series if (s.dataset, s.label, s.axis) == (dataset, label, axis)),
                          None)
            fit = next((f for f in reports[rule].fits if (f.dataset, f.label, f.axis) == (dataset, label, axis)),
                       None)
            ids = [p.cell_id for p in series.points] if series else []
            moved = tuple(c for c in ids if (rule, c) in changed)
            curves.append(RuleCurve(rule, series, fit, moved,
                                    tuple(c for c in moved if changed[rule, c].other.status == FINAL)))
        out.append(SeriesComparison(dataset, label, axis, tuple(curves)))
    return SelectionComparison(rules, tuple(out), tuple(changes))


def write_selection(comparison: SelectionComparison, out_dir: str | Path) -> list[Path]:
    """Write `selection.md`, `selection.csv` and `selection.png`; returns their paths."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "selection.md", out / "selection.csv", out / "selection.png"]
    paths[0].write_text(selection_markdown(comparison), encoding="utf-8")
    pd.DataFrame(_records(comparison), columns=list(COLUMNS)).to_csv(paths[1], index=False)
    _figure(comparison).savefig(paths[2], dpi=150)
    return paths


def _records(comparison: SelectionComparison) -> list[dict[str, Any]]:
    records = []
    for s in comparison.series:
        for c in s.curves:
            fit, slope = c.fit, c.fit.slope if c.fit else None
            interval = fit.slope_interval if fit and fit.slope_interval else (math.nan, math.nan)
            records.append(dict(
                dataset=s.dataset, series=s.label, axis=s.axis, rule=c.rule,
                n_points=len(c.series.points) if c.series else 0, n_fitted=fit.n_sizes if fit else 0,
                slope=slope.slope if slope else math.nan, slope_low=interval[0], slope_high=interval[1],
                p_falling=fit.p_falling if fit and fit.p_falling is not None else math.nan,
                slope_flagged=bool(slope and slope.flagged), changed=len(c.changed), retrained=len(c.retrained),
                changed_cells=" ".join(c.changed), reason=(fit.reason or "") if fit else "not on this rule's curves"))
    return records


def selection_markdown(comparison: SelectionComparison) -> str:
    """The side-by-side as Markdown: the rules, a slope per series and rule, and every changed cell."""
    rules = comparison.rules
    lines = ["# Selection rules side by side", "",
             "How much of the trend depends on having group labels for validation: each cell's config chosen again "
             "under every rule, from the same search trials, and each series refitted. A changed cell without final "
             "seeds under its rule is its chosen search trial (one run), not fitted; `wgtune launch --select RULE` "
             "re-trains it.", ""]
    lines += [f"- `{r}`{' (the study’s)' if r == DEFAULT_RULE else ''}: {SELECTION_RULES[r].description}"
              for r in rules]
    lines += ["", "## Log-log slope of worst-group error vs size, per rule", "",
              "Slope < 0: error falls with size; [bootstrap interval]; changed: cells choosing another trial than "
              f"`{DEFAULT_RULE}` (re-trained under the rule).", "",
              _md_row(["data set", "series", *rules]), _md_row(["---"] * (2 + len(rules)))]
    for s in comparison.series:
        lines.append(_md_row([s.dataset, s.label, *(_slope_cell(s.under(r)) for r in rules)]))
    if not comparison.series:
        lines.append(_md_row(["—", "no finished cells yet", *(["—"] * len(rules))]))
    lines += ["", "## Cells whose chosen config changed", ""]
    if not comparison.changes:
        lines.append(f"None: every rule chose the same search trial as `{DEFAULT_RULE}` in every cell.")
    else:
        lines += [_md_row(["cell", "rule", f"chosen under {DEFAULT_RULE}", "chosen under the rule",
                           f"test worst-group % ({DEFAULT_RULE})", "test worst-group % (rule)"]),
                  _md_row(["---"] * 6)]
        for c in comparison.changes:
            lines.append(_md_row([c.cell_id, c.rule, format_config(c.study.chosen_config),
                                  format_config(c.other.chosen_config), _worst(c.study), _worst(c.other)]))
    return "\n".join(lines) + "\n"


def _slope_cell(curve: RuleCurve) -> str:
    fit = curve.fit
    if fit is None or fit.slope is None:
        text = "—" if fit is None else f"— ({fit.reason})"
    else:
        text = f"{fit.slope.slope:+.3f}"
        if fit.slope_interval:
            text += f" [{fit.slope_interval[0]:+.3f}, {fit.slope_interval[1]:+.3f}]"
        if fit.slope.flagged:
            text += " ⚠"
    if curve.changed:
        text += f"; changed {len(curve.changed)} ({len(curve.retrained)} re-trained)"
    return text


def _worst(row: ReportRow) -> str:
    value: Estimate | None = row.test_worst
    return format_estimate(value, status=row.status) + (f", {row.n_seeds} seeds" if row.status == FINAL else "")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _figure(comparison: SelectionComparison) -> Figure:
    """One panel per series: test worst-group accuracy vs size under each rule; hollow: one search trial."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    n = max(len(comparison.series), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.8 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(comparison.series):]:
        ax.set_axis_off()
    if not comparison.series:
        axes[0].text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=axes[0].transAxes)
        return fig
    colors = {rule: f"C{i}" for i, rule in enumerate(comparison.rules)}
    # Where rules agree their curves coincide: each its own line style and marker size, so none hides another.
    styles = {rule: (("-", "--", ":", "-.")[i % 4], 9 - 2 * (i % 3)) for i, rule in enumerate(comparison.rules)}
    for ax, s in zip(axes, comparison.series):
        for curve in s.curves:
            if curve.series is None:
                continue
            pts = curve.series.points
            slope = curve.fit.slope if curve.fit else None
            label = curve.rule + (f" (slope {slope.slope:+.2f})" if slope else "")
            xs = [p.n_params for p in pts]
            line, size = styles[curve.rule]
            ax.plot(xs, [100 * p.worst.mean for p in pts], line, color=colors[curve.rule], label=label)
            for p in pts:
                hollow = p.status == SEARCH_ONLY
                ax.plot([p.n_params], [100 * p.worst.mean], "o", color=colors[curve.rule], markersize=size,
                        markerfacecolor="none" if hollow else colors[curve.rule])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_count(x)))
        ax.set_title(f"{s.dataset} · {s.label}", fontsize="small")
        ax.set_xlabel("parameters")
        ax.set_ylabel("test worst-group %")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle("Test worst-group accuracy under each selection rule\n(hollow: the chosen search trial, one run)",
                 fontsize="small")
    return fig

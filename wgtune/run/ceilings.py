"""A study's compute ceilings as a launch and `wgtune status` see them (grid `budget:`, issue 16 item 2).

At launch each cell's plan gets a `search.ceiling.CellCeiling`: its limits in device-seconds, what it and the study
(in its unit) have spent according to MLflow (`report.compute.cell_cost` over every trial run, search and final,
failed and killed too), and one trial's expected cost (`run/estimate.py`, from its own trials or a neighbour's;
unknown: None). The router holds new trials to them (`search/ceiling.py` says the rule). A relaunch counts the
spend again from MLflow, so it continues within what is left, and a raised limit lets a stopped study go on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from wgtune.report.compute import SECONDS_PER_HOUR, cell_cost, device_unit
from wgtune.run.estimate import estimate_cells
from wgtune.search.ceiling import CellCeiling
from wgtune.tracking.records import device_use

if TYPE_CHECKING:
    from wgtune.run.plan import PlannedCell
    from wgtune.spec.grid import Grid
    from wgtune.tracking.records import TrialRecord

__all__ = ["ceiling_lines", "has_ceilings", "spent_by_cell", "with_ceilings"]


def has_ceilings(grid: Grid) -> bool:
    """Whether the grid sets any compute limit."""
    budget = grid.spec.budget
    return budget.cell_device_hours is not None or budget.study_device_hours is not None


def _seconds(hours: float | None) -> float | None:
    return None if hours is None else hours * SECONDS_PER_HOUR


def spent_by_cell(trials: Iterable[TrialRecord]) -> dict[str, float]:
    """Device-seconds each cell has spent: every trial run of it, whatever its phase or status (`cell_cost`)."""
    by_cell: dict[str, list[TrialRecord]] = {}
    for trial in trials:
        by_cell.setdefault(trial.cell_id, []).append(trial)
    return {cell: cell_cost(runs).total_s for cell, runs in by_cell.items()}


def with_ceilings(grid: Grid, plans: Sequence[PlannedCell], trials: Sequence[TrialRecord],
                  n_params: Mapping[str, int]) -> list[PlannedCell]:
    """The plans with their `CellCeiling` (unchanged when the grid sets no limit). The study's spend per unit counts
    every cell of the grid; runs of cells no longer in it are not the study's any more."""
    if not has_ceilings(grid):
        return list(plans)
    spent = spent_by_cell(trials)
    study: dict[str, float] = {}
    for plan in plans:
        device = device_use(plan.resources)[0]
        study[device] = study.get(device, 0.0) + spent.get(plan.cell.id, 0.0)
    estimates = {e.cell_id: e for e in estimate_cells(plans, trials, n_params)}
    out = []
    for plan in plans:
        device = device_use(plan.resources)[0]
        per_trial = estimates[plan.cell.id].per_trial
        out.append(replace(plan, ceiling=CellCeiling(
            device, _seconds(grid.spec.budget.cell_device_hours), _seconds(grid.spec.budget.study_device_hours),
            spent.get(plan.cell.id, 0.0), study[device], per_trial.search_s if per_trial else None,
            per_trial.final_s if per_trial else None)))
    return out


def ceiling_lines(grid: Grid, trials: Sequence[TrialRecord]) -> list[str]:
    """`spent / limit` per cell and for the study, per unit, as `wgtune status` prints them; the cells the
    ceilings stop are marked. Nothing when the grid sets no limit."""
    if not has_ceilings(grid):
        return []
    budget, spent = grid.spec.budget, spent_by_cell(trials)
    cells = [(cell, device_use(grid.resources(cell))[0]) for cell in grid.cells()]
    width = max(len(cell.label) for cell, _ in cells)
    lines = ["compute (device-hours): spent / limit"]
    for cell, device in cells:
        hours = spent.get(cell.id, 0.0) / SECONDS_PER_HOUR
        limit = budget.cell_device_hours
        mark = "  at its ceiling" if limit is not None and hours >= limit else ""
        lines.append(f"{cell.label:<{width}}  {hours:.4g} / {'—' if limit is None else f'{limit:g}'} "
                     f"{device_unit(device)}{mark}")
    for device in sorted({d for _, d in cells}):
        hours = sum(spent.get(c.id, 0.0) for c, d in cells if d == device) / SECONDS_PER_HOUR
        limit = budget.study_device_hours
        mark = "  at the study's ceiling" if limit is not None and hours >= limit else ""
        lines.append(f"{'study':<{width}}  {hours:.4g} / {'—' if limit is None else f'{limit:g}'} "
                     f"{device_unit(device)}{mark}")
    return lines

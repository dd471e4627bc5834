"""`wgtune launch --dry-run`: what a launch would do, and what it is expected to cost; starts nothing, writes nothing.

Cells, spaces, budgets and resources as the plan has them (from MLflow when the study exists: budgets left), and
each cell's expected device-hours with their source (`run/estimate.py`; `--calibrate`: `run/calibrate.py`).
"""

from __future__ import annotations

from wgtune.run.plan import cell_setting, plan_cells
from wgtune.run.reporting import existing_study
from wgtune.run.study import cell_parameters, headline
from wgtune.spec.errors import UserError
from wgtune.spec.grid import Grid
from wgtune.tracking.store import resolve_tracking_uri
from wgtune.tracking.summary import CellSummary

__all__ = ["describe"]


def describe(grid: Grid, tracking_uri: str | None = None, calibrate: bool = False) -> str:
    """What a launch would do (cells, spaces, budgets, resources, where results go, expected device-hours:
    `run/estimate.py`, with `calibrate` timing each cell here first); starts nothing."""
    from wgtune.run.estimate import cell_line, estimate_cells, estimate_lines

    trials, summaries = _stored(grid, tracking_uri)
    cells = plan_cells(grid, summaries)
    timed = None
    if calibrate:
        from wgtune.run.calibrate import calibrate as time_cells

        ran = {t.cell_id for t in trials}
        timed = time_cells([c for c in cells if c.cell.id not in ran])  # own trials are the better source
    # Parameter counts only: a dry run plans a study on a machine that need not hold its pretrained weights.
    estimates = {e.cell_id: e for e in estimate_cells(cells, trials, {c.cell.id: cell_parameters(c)
                                                                      for c in cells}, timed)}
    study_dir = grid.study_dir
    uri = resolve_tracking_uri(study_dir, tracking_uri)
    search = grid.spec.search
    lines = [
        headline(grid, cells, uri, study_dir),
        f"per cell: {search.num_samples} trials, TPE after {search.n_startup} random; "
        f"{search.max_concurrent} trials at once in the study; scheduler {search.scheduler}; "
        f"retries {search.max_failures}; then the chosen config on {grid.spec.final_seeds} final seeds",
    ]
    for planned in cells:
        r = planned.resources
        lines.append(f"\n{planned.cell.label}  [{planned.cell.id}]")
        lines.append(f"  resources per trial: {r.cpu:g} CPU, {r.gpu:g} GPU;  budget {planned.budget.search} search trials "
                     f"of {planned.base_config['epochs']} epochs, augment {planned.base_config['augment']}")
        lines.append("  trains " + ", ".join(f"{k} {v}" for k, v in cell_setting(planned).items()))
        lines.extend(f"  {line}" for line in planned.space.describe())
        lines.append(f"  {cell_line(estimates[planned.cell.id])}")
    budget = grid.spec.budget
    limits = [f"{name} {hours:g} device-hours" for name, hours in (("per cell", budget.cell_device_hours),
                                                                    ("per study and unit", budget.study_device_hours))
              if hours is not None]
    ceilings = [f"ceilings (grid budget:): {', '.join(limits)}; no trial starts that would pass one"] if limits else []
    return "\n".join(lines + [""] + estimate_lines(list(estimates.values())) + ceilings)


def _stored(grid: Grid, tracking_uri: str | None) -> tuple[list, dict[str, CellSummary]]:
    """The study's trial runs and cell summaries in MLflow, or none when it was never launched."""
    try:
        with existing_study(grid, tracking_uri) as tracker:
            return tracker.trial_runs(), tracker.cell_summaries()
    except UserError:
        return [], {}

"""Test helper: a grid's study run through the real driver, tracker and router with a stand-in
trial, without `launch`'s checks; what MLflow holds afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from wgtune.run.plan import PlannedCell
    from wgtune.run.progress import CellProgress
    from wgtune.spec.grid import Grid
    from wgtune.tracking.records import TrialRecord
    from wgtune.tracking.tracker import StudyTracker


@dataclass
class StudyRun:
    progress: dict[str, CellProgress]
    runs: list[TrialRecord]
    uri: str


def planned_study(grid: Grid, select: str | None = None) -> tuple[StudyTracker, list[PlannedCell]]:
    """The grid's StudyTracker on the SQLite store in its study folder (fresh, or as earlier runs left it), and its
    planned cells (under selection rule `select`, as `wgtune launch --select` plans them; None: the study's)."""
    from wgtune.run.study import prepare
    from wgtune.tracking.store import artifact_root
    from wgtune.tracking.tracker import StudyTracker

    tracker = StudyTracker(f"sqlite:///{grid.study_dir / 'mlflow.db'}", grid.spec.study, artifact_root(grid.study_dir))
    return tracker, prepare(grid, tracker, **({"select": select} if select else {}))


def run_study(grid: Grid, tracker: StudyTracker, cells: list[PlannedCell], trial_fn: Callable[..., None], *,
              name: str, **settings: Any) -> StudyRun:
    """Run every cell with `trial_fn`, close the cells and the tracker; `settings` override the grid's."""
    from wgtune.run.driver import RunSettings, run_experiment

    try:
        progress = run_experiment(cells, tracker, RunSettings.for_grid(grid, name, progress_every_s=3600.0, **settings),
                                  lambda _: None, trial_fn=trial_fn)
        for planned in cells:
            tracker.close_cell(planned.cell.id)
        tracker.flush()
        runs = tracker.trial_runs()
    finally:
        tracker.close()
    return StudyRun(progress, runs, tracker.uri)

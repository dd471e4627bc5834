"""plan_cells: what a launch still has to run per cell, counted from MLflow's history; `wgtune status`
counts the same way."""

from __future__ import annotations

from pathlib import Path

from wgtune.run.plan import plan_cells
from wgtune.spec.grid import load_grid
from wgtune.tracking.summary import CellSummary

GRID = """\
study: plan
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25]}
objectives: [erm]
epochs: 1
final_seeds: 3
search: {num_samples: 4}
"""


def test_remaining_work_counts_finished_search_trials_and_done_final_seeds(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    [cell] = grid.cells()
    history = {cell.id: CellSummary(cell.id, "parent", finished=3, failed=2, final_done=2)}

    [fresh] = plan_cells(grid)
    [planned] = plan_cells(grid, history)

    assert (fresh.budget.search_left, fresh.budget.final_left, fresh.budget.has_work) == (4, 3, True)
    # Failed search trials are not counted (they are replaced).
    assert (planned.budget.search_left, planned.budget.final_left) == (1, 1)
    done = {cell.id: CellSummary(cell.id, "parent", finished=4, final_done=3)}
    assert not plan_cells(grid, done)[0].budget.has_work


def test_status_counts_a_diverged_final_seed_as_done_and_as_failed(tmp_path: Path) -> None:
    from wgtune.run.study import cell_record, status_rows
    from wgtune.tracking.tracker import StudyTracker

    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    [planned] = plan_cells(grid)
    with StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "plan") as tracker:
        tracker.cell_run(cell_record(planned))
        final = tracker.start_trial(planned.cell.id, "f", {"lr": 0.05, "seed": 3}, "final", phase="final")
        tracker.end_trial(final, "FAILED", error="loss nan", tags={"wgtune.diverged": "true"})

        [row] = status_rows(grid, tracker).values()
        [replanned] = plan_cells(grid, tracker.cell_summaries())

    assert (row.final, row.budget.final, row.failed) == (1, 3, 0), "failed counts search trials only"
    assert replanned.budget.final_left == 2

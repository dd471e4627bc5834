"""plan_cells: what a launch still has to run per cell, counted from MLflow's history."""

from __future__ import annotations

from pathlib import Path

from wgtune.grid import load_grid
from wgtune.plan import plan_cells
from wgtune.tracking_records import CellSummary

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


def test_remaining_work_counts_finished_trials_and_diverged_final_seeds(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    [cell] = grid.cells()
    history = {cell.id: CellSummary(cell.id, "parent", finished=3, failed=2, final_finished=1, final_diverged=1)}

    [fresh] = plan_cells(grid)
    [planned] = plan_cells(grid, history)

    assert (fresh.remaining, fresh.final_remaining, fresh.has_work) == (4, 3, True)
    # Failed search trials are not counted (they are replaced); a seed the chosen config diverged on
    # is done: re-training it would diverge again.
    assert (planned.remaining, planned.final_remaining) == (1, 1)
    done = {cell.id: CellSummary(cell.id, "parent", finished=4, final_finished=2, final_diverged=1)}
    assert not plan_cells(grid, done)[0].has_work

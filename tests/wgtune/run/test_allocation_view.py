"""Adaptive allocation from MLflow alone: `wgtune status`'s lines and the cells' `allocation.json`."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from trainables.metrics import SELECTION_METRIC
from wgtune.run.allocation_view import allocation_lines, record_allocation
from wgtune.run.plan import plan_cells
from wgtune.run.study import cell_record
from wgtune.search.allocation import ALLOCATION_FILE, PLATEAUED, RISING
from wgtune.spec.grid import load_grid
from wgtune.tracking.store import artifact_root, resolve_tracking_uri
from wgtune.tracking.tracker import StudyTracker

GRID = """\
study: alloc
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25, 10x0.5]}
objectives: [erm]
epochs: 1
final_seeds: 2
search: {num_samples: 20, n_startup: 3, allocation: adaptive, study_trials: 30}
"""
FLAT = (0.70,) * 8
RISING_VALUES = (0.10, 0.15, 0.20, 0.22, 0.25, 0.30, 0.35, 0.80)


def test_status_lines_and_the_cells_allocation_json_say_the_decision_and_its_reason(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    study_dir = tmp_path / "study"
    with StudyTracker(resolve_tracking_uri(study_dir, None), "alloc", artifact_root(study_dir),
                      flush_interval_s=0.05) as tracker:
        planned = plan_cells(grid)
        for k, (cell, values) in enumerate(zip(planned, (FLAT, RISING_VALUES))):
            tracker.cell_run(cell_record(cell))
            for i, value in enumerate(values):
                trial = tracker.start_trial(cell.cell.id, f"c{k}t{i}", {"lr": 0.01 * (i + 1)}, "tpe")
                tracker.end_trial(trial, "FINISHED", summary={SELECTION_METRIC: value})
        tracker.flush()
        lines = allocation_lines(grid, plan_cells(grid, tracker.cell_summaries()))
        assert record_allocation(grid, tracker) == 2
        tracker.flush()
        parents = {cell: tags for cell, tags in tracker.cell_tags().items()}
    flat, rising = (c.cell for c in planned)
    assert lines[0].startswith("adaptive allocation: 16 of 30 study trials spent (floor 6, cap 20")
    assert "1 rising, 1 plateaued" in lines[0]
    assert any(flat.label in line and f"{PLATEAUED}: its last doubling gained 0.0000" in line for line in lines)
    assert any(rising.label in line and f"{RISING}:" in line for line in lines)
    client = MlflowClient(tracking_uri=resolve_tracking_uri(study_dir, None))
    runs = {r.data.tags["wgtune.cell"]: r.info.run_id
            for r in client.search_runs([client.get_experiment_by_name("alloc").experiment_id],
                                        "tags.`wgtune.kind` = 'cell'")}
    assert set(runs) == set(parents)
    recorded = json.loads(Path(client.download_artifacts(runs[flat.id], ALLOCATION_FILE, str(tmp_path))).read_text())
    assert recorded["action"] == PLATEAUED and recorded["trials"] == 8 and "plateau_gain" in recorded["reason"]


def test_fixed_allocation_adds_nothing(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID.replace(", allocation: adaptive, study_trials: 30", ""))
    grid = load_grid(tmp_path / "grid.yaml")
    study_dir = tmp_path / "study"
    with StudyTracker(resolve_tracking_uri(study_dir, None), "alloc", artifact_root(study_dir)) as tracker:
        assert allocation_lines(grid, plan_cells(grid, tracker.cell_summaries())) == [] and record_allocation(grid, tracker) == 0

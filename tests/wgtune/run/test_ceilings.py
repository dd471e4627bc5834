"""A real small study held to its compute ceiling (real Ray, hyperopt, SQLite MLflow; a stand-in trial that reports
a known cost): stopped by the study's limit, relaunched within what is left, resumed after raising it, with MLflow
consistent at every step; and the grid keys validated like every other."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wgtune.studies import planned_study, run_study
from trainables.metrics import DEVICE_SECONDS
from wgtune.spec.grid import GridError, load_grid

GRID = """\
study: ceilings
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [10x0.25]}}
objectives: [erm, groupdro]
epochs: 1
final_seeds: 1
search: {{num_samples: 3, max_concurrent: 1, n_startup: 2}}
resources: {{cpu: 1}}
budget: {{study_device_hours: {limit}}}
"""
TRIAL_S = 360.0  # a tenth of a CPU-core-hour per trial


def costly_trial(config: dict, cells: dict) -> None:
    """A trial that spent TRIAL_S CPU-core-seconds."""
    from ray import tune

    lr = float(config["params"]["lr"])
    tune.report({"epoch": 1.0, "val/worst_acc": 1 - lr, "best/val_worst_acc": 1 - lr, DEVICE_SECONDS: TRIAL_S})


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def launch_with(tmp_path: Path, limit: float, name: str):
    (tmp_path / "grid.yaml").write_text(GRID.format(limit=limit))
    grid = load_grid(tmp_path / "grid.yaml")
    tracker, cells = planned_study(grid)
    return grid, run_study(grid, tracker, cells, costly_trial, name=name)


@pytest.mark.slow
def test_a_study_stopped_by_its_ceiling_continues_within_what_is_left_and_after_raising_it(tmp_path, ray_local):
    from wgtune.run.study import status

    # 0.35 h: three trials of 0.1 h fit (the second cell's cost is unknown until one of its trials ends).
    grid, first = launch_with(tmp_path, 0.35, "l1")
    assert len(first.runs) == 3
    from wgtune.run.dry_run import describe

    dry = describe(grid)  # the study exists: each cell's expected cost comes from its own trials
    assert dry.count("from own trials") == 2 and "ceilings (grid budget:)" in dry
    assert "search 1 × 0.1, final 1 × 0.1" in dry or "search 2 × 0.1, final 1 × 0.1" in dry
    # Same limit again: 0.05 h left, a trial is expected to cost 0.1 h: nothing runs.
    _, again = launch_with(tmp_path, 0.35, "l2")
    assert len(again.runs) == 3
    # Raised to 0.55 h: two more fit (0.5 h), a third would pass.
    _, raised = launch_with(tmp_path, 0.55, "l3")
    assert len(raised.runs) == 5
    # Raised far: the rest of both cells' budgets (3 search + 1 final seed each) runs, nothing more.
    grid, done = launch_with(tmp_path, 10, "l4")
    runs = done.runs
    assert len(runs) == 8 and all(r.status == "FINISHED" for r in runs)  # nothing RUNNING, nothing lost
    assert len({r.run_id for r in runs}) == 8
    for cell in grid.cells():
        mine = [r for r in runs if r.cell_id == cell.id]
        assert sum(r.phase == "search" for r in mine) == 3 and sum(r.phase == "final" for r in mine) == 1
    table = status(grid)
    assert "study" in table and "0.8 / 10 CPU-core-hours" in table


def test_the_limits_are_validated_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(limit=-1))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert f"{path}: budget.study_device_hours: Input should be greater than 0" in str(err.value)
    path.write_text(GRID.format(limit=1).replace("study_device_hours", "study_hours"))
    with pytest.raises(GridError) as err:
        load_grid(path)
    message = str(err.value)
    assert "budget.study_hours: unknown key" in message and "study_device_hours" in message

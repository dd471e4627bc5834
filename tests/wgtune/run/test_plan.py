"""plan_cells: what a launch still has to run per cell, counted from MLflow's history; `wgtune status`
counts the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from wgtune.run.plan import cell_setting, plan_cells
from wgtune.spec.grid import GridError, load_grid
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


def test_runs_trained_under_other_fixed_settings_do_not_count_against_the_budget(tmp_path: Path) -> None:
    """Guards issue 13, defect 1: after the grid changed a fixed setting (here epochs 2 -> 1), the old
    runs still counted as the cell's finished trials, so nothing ran under the new settings."""
    from wgtune.run.plan import fixed_settings
    from wgtune.tracking.records import config_params
    from wgtune.tracking.summary import Observation

    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    [fresh] = plan_cells(grid)
    now = fixed_settings(fresh)
    assert now["epochs"] == "1" and now["schedule"] == "cosine" and "lr" not in now

    def run(name: str, **changed: str) -> Observation:
        params = {"lr": "0.01", **config_params({**now, **changed, "lr": 0.01})}
        return Observation(name, name, params, 0.5)

    old = [run("old1", epochs="2"), run("old2", epochs="2")]
    history = {fresh.cell.id: CellSummary(fresh.cell.id, "p", finished=3, observations=(*old, run("same")))}
    [planned] = plan_cells(grid, history)

    assert planned.budget.search_done == 1 and planned.budget.search_left == 3


def test_priors_json_is_written_by_a_new_experiment_and_never_by_a_restore(tmp_path: Path) -> None:
    """Guards issue 13, defect 8: a restored launch wrote a fresh priors.json, planned anew from MLflow,
    while its router came back from Tune's state with the priors of the launch that made it."""
    import json

    from mlflow import MlflowClient

    from wgtune.run.study import prepare, record_priors
    from wgtune.tracking.tracker import StudyTracker

    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with StudyTracker(uri, "plan") as tracker:
        cells = prepare(grid, tracker)
        assert record_priors(tracker, cells, restore=True) == 0
        tracker.flush()
        parent = tracker.cell_summaries()[cells[0].cell.id].parent_run_id
        assert MlflowClient(uri).list_artifacts(parent) == []
        assert record_priors(tracker, cells, restore=False) == 1
        tracker.flush()
    saved = MlflowClient(uri).download_artifacts(parent, "priors.json", str(tmp_path))
    assert json.loads(Path(saved).read_text()) == json.loads(json.dumps(cells[0].priors.describe(), default=str))


def test_a_cell_named_otherwise_trains_its_registered_objective_with_its_own_sampler(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID.replace("objectives: [erm]", """objectives:
  erm: {}
  erm_balanced: {objective: erm, sampler: group_balanced}"""))
    plain, balanced = plan_cells(load_grid(tmp_path / "grid.yaml"))

    assert plain.base_config["objective"] == balanced.base_config["objective"] == "erm"
    assert (plain.base_config["sampler"], balanced.base_config["sampler"]) == ("shuffle", "group_balanced")
    assert plain.space.describe() == balanced.space.describe()  # ERM's space, not a missing one
    assert cell_setting(balanced) == {"objective": "erm", "environments": "groups", "sampler": "group_balanced"}


ILC_GRID = GRID.replace("objectives: [erm]", "objectives:\n  ilc: {environments: groups, sampler: shuffle}")


@pytest.mark.parametrize("threshold, refused", [
    ("{uniform: [0.05, 0.9]}", True),   # the top of the range freezes the classifier's bias
    ("0.9", True),
    ("{uniform: [0.05, 0.3]}", False),  # below 1/3, the bound for 4 single-label groups
])
def test_an_ilc_cell_whose_search_space_can_freeze_the_head_is_refused_before_it_starts(
        tmp_path: Path, threshold: str, refused: bool) -> None:
    (tmp_path / "grid.yaml").write_text(ILC_GRID + f"search_space: {{ilc: {{threshold: {threshold}}}}}\n")
    grid = load_grid(tmp_path / "grid.yaml")

    if refused:
        with pytest.raises(GridError, match=r"grid.yaml: objectives.ilc: cell spurious_digits · resnet-10x0.25 · ilc"
                                            r".*threshold 0.9 freezes the classifier's bias.*allow_masked_head"):
            plan_cells(grid)
    else:
        assert plan_cells(grid)


def test_a_searched_sampler_is_checked_at_each_choice_and_recorded_as_searched(tmp_path: Path) -> None:
    # Threshold 0.3 is below the shuffled-batch bound (1/3), but balanced batches almost always hold both labels.
    grid = GRID.replace("objectives: [erm]", "objectives:\n  ilc: {environments: groups}")
    space = "search_space: {ilc: {threshold: 0.3, sampler: {choice: [shuffle, SECOND]}}}\n"
    (tmp_path / "grid.yaml").write_text(grid + space.replace("SECOND", "group_balanced"))
    with pytest.raises(GridError, match=r"\(searched, at batch_size 32, sampler group_balanced\).*0.04% of steps"):
        plan_cells(load_grid(tmp_path / "grid.yaml"))

    (tmp_path / "grid.yaml").write_text(grid.replace("groups}", "attribute}") + space.replace("SECOND", "group_balanced"))
    [planned] = plan_cells(load_grid(tmp_path / "grid.yaml"))
    assert cell_setting(planned)["sampler"] == "searched: shuffle | group_balanced"


def test_the_masked_head_can_be_forced_on_purpose(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(ILC_GRID.replace("sampler: shuffle", "sampler: shuffle, options: "
                                                         "{threshold: 0.9, allow_masked_head: true}"))
    assert plan_cells(load_grid(tmp_path / "grid.yaml"))


def test_the_grid_lets_a_cell_repeat_configurations_only_when_it_says_so(tmp_path: Path) -> None:
    from wgtune.run.driver import RunSettings, search_plan

    for line, allowed in (("", False), ("search: {num_samples: 4, allow_repeats: true}\n", True)):
        text = GRID.replace("search: {num_samples: 4}\n", line or "search: {num_samples: 4}\n")
        (tmp_path / "grid.yaml").write_text(text)
        grid = load_grid(tmp_path / "grid.yaml")
        settings = RunSettings.for_grid(grid, "x")
        [planned] = plan_cells(grid)
        assert search_plan(planned, settings.n_startup, settings.allow_repeats).allow_repeats is allowed


def _record(run: str, config: dict[str, str], phase: str = "search", select: str = "", start: int = 0,
            **metrics: float):
    from wgtune.tracking.records import TrialRecord

    return TrialRecord(run_id=run, cell_id="spurious_digits/resnet-10x0.25/erm/scratch", trial_id=run, run_name="",
                       status="FINISHED", proposal="tpe", phase=phase, params={**config, "seed": run},
                       metrics={f"best/{k}_acc": v for k, v in metrics.items()}, start_time_ms=start, end_time_ms=1,
                       error=None, select=select)


A = {"lr": "0.01", "weight_decay": "0.0001", "batch_size": "64", "optimizer": "sgd"}
B = {"lr": "0.001", "weight_decay": "0.01", "batch_size": "32", "optimizer": "adamw"}


def test_a_rules_launch_plans_final_seeds_only_where_its_choice_differs_and_no_search(tmp_path: Path) -> None:
    from wgtune.tracking.summary import summarise

    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    [cell] = grid.cells()
    search = [_record("A", A, start=1, val_worst=0.8, val_avg=0.85, test_worst=0.9),
              _record("B", B, start=2, val_worst=0.6, val_avg=0.95, test_worst=0.5),
              *(_record(f"x{i}", {**A, "lr": f"0.0{i + 2}"}, start=3 + i, val_worst=0.1, val_avg=0.1, test_worst=0.1)
                for i in range(2))]
    study_final = [_record("fA", A, "final")]

    def plan(runs, select):
        [planned] = plan_cells(grid, summarise(runs, {cell.id: "p"}), select)
        return planned

    by_avg = plan(search + study_final, "val_avg")
    assert by_avg.final_params == {"lr": 0.001, "weight_decay": 0.01, "batch_size": 32, "optimizer": "adamw"}
    assert (by_avg.budget.search_left, by_avg.budget.final_left, by_avg.select) == (0, 3, "val_avg")
    # Seeds it re-trained count for it; the study's own budget ignores them, and the study's seeds count not for it.
    retrained = [_record(f"fB{i}", B, "final", select="val_avg") for i in range(2)]
    assert plan(search + study_final + retrained, "val_avg").budget.final_left == 1
    assert plan(search + study_final + retrained, "val_worst").budget.final_left == 2
    # The oracle chose A, as the study did: nothing to re-train, and it says why.
    oracle = plan(search + study_final, "oracle_test_worst")
    assert not oracle.budget.has_work and "study's own final seeds" in oracle.note and oracle.final_params is None
    # A search still running: the rule's choice could still move, so nothing is re-trained yet.
    early = plan(search[:3], "val_avg")
    assert not early.budget.has_work and "search is not done (3 of 4" in early.note

"""`wgtune launch --select RULE`: a real tiny study, then final seeds re-trained under another selection rule
through the real plan, router, Tune callbacks and tracker (a stand-in trial reports metrics made from its config)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.wgtune.studies import planned_study, run_study

pytestmark = pytest.mark.slow

GRID = """
study: select-launch
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25, 10x0.5]}
objectives: [erm]
epochs: 1
final_seeds: 2
search: {num_samples: 3, max_concurrent: 2, n_startup: 3, scheduler: fifo}
resources: {cpu: 1}
train: {image_size: 16}
"""
SPLIT = "spurious_digits/resnet-10x0.25/erm/scratch"
"""The cell where validation average prefers another config than validation worst-group; in the other they agree."""


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def scored_trial(config: dict, cells: dict) -> None:
    """Metrics from the config alone: the smallest lr has the best validation worst-group accuracy everywhere; in
    SPLIT the largest lr has the best validation average. A final seed's test worst-group accuracy says its lr."""
    from ray import tune

    lr = float(config["params"]["lr"])
    val_avg = lr if config["cell"] == SPLIT else 1 - lr
    tune.report({"epoch": 1.0, "val/worst_acc": 1 - lr, "best/val_worst_acc": 1 - lr, "best/val_avg_acc": val_avg,
                 "best/test_worst_acc": 0.5 + lr, "best/test_avg_acc": 0.9})


def test_a_rules_launch_retrains_only_the_cells_whose_choice_differs_and_leaves_the_studys_report(
        tmp_path: Path, ray_local) -> None:
    from wgtune.report.build import FINAL, build_report
    from wgtune.tracking.records import CellRecord
    from wgtune.tracking.tracker import StudyTracker

    (tmp_path / "grid.yaml").write_text(textwrap.dedent(GRID))
    from wgtune.spec.grid import load_grid

    grid = load_grid(tmp_path / "grid.yaml")
    study = run_study(grid, *planned_study(grid), scored_trial, name="study")

    def report(select: str):
        with StudyTracker(study.uri, grid.spec.study) as tracker:
            cells = [CellRecord.from_tags(t) for t in tracker.cell_tags().values()]
            return build_report(cells, tracker.trial_runs(), select=select, n_boot=0)

    def rows(built):
        return {r.cell_id: (r.status, r.chosen_run_id, r.n_seeds, r.test_worst.mean) for r in built.rows}

    before = rows(report("val_worst"))
    assert {s for s, *_ in before.values()} == {FINAL}
    tracker, cells = planned_study(grid, "val_avg")
    assert {c.cell.id: c.budget.final_left for c in cells} == {SPLIT: 2, "spurious_digits/resnet-10x0.5/erm/scratch": 0}
    assert all(c.budget.search_left == 0 for c in cells)
    rerun = run_study(grid, tracker, cells, scored_trial, name="val_avg")

    new = [r for r in rerun.runs if r.run_id not in {s.run_id for s in study.runs}]
    assert len(new) == 2 and all(r.cell_id == SPLIT and r.phase == "final" and r.select == "val_avg" for r in new)
    search = [r for r in study.runs if r.cell_id == SPLIT and r.phase != "final"]
    by_avg = max(search, key=lambda r: float(r.params["lr"]))  # the rule's choice: the largest lr
    assert {r.params["lr"] for r in new} == {by_avg.params["lr"]}
    assert sorted(r.run_name for r in new) == ["sd/r10x0.25/erm · seed 1 · val_avg", "sd/r10x0.25/erm · seed 2 · val_avg"]
    # The study's seeds and the rule's ran the same seed sequence: a paired comparison.
    study_seeds = sorted(r.params["seed"] for r in study.runs if r.cell_id == SPLIT and r.phase == "final")
    assert sorted(r.params["seed"] for r in new) == study_seeds

    assert rows(report("val_worst")) == before, "the study's own report is unchanged"
    under_rule = {r.cell_id: r for r in report("val_avg").rows}
    split = under_rule[SPLIT]
    assert (split.status, split.n_seeds, split.chosen_run_id) == (FINAL, 2, by_avg.run_id)
    assert split.test_worst.mean == pytest.approx(0.5 + float(by_avg.params["lr"]))
    # Done is done: a second launch under the rule has nothing left.
    tracker, cells = planned_study(grid, "val_avg")
    tracker.close()
    assert not any(c.budget.has_work for c in cells)

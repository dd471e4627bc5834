"""`wgtune report --select`: the chosen configs recomputed from the recorded trials under another rule."""

from __future__ import annotations

import pytest

from wgtune.report.build import FINAL, SEARCH_ONLY, SELECTION_RULES, build_report
from wgtune.tracking.records import CellRecord, TrialRecord

CELL = CellRecord("wb/r18/erm", "waterbirds", "resnet", "18", "resnet-18", 11_000_000, "erm", False)
# Three configs; each rule prefers another: A by validation worst-group, B by validation average,
# C by test worst-group (the oracle).
CONFIGS = {"A": dict(val_worst=0.80, val_avg=0.90, test_worst=0.70, test_avg=0.88),
           "B": dict(val_worst=0.60, val_avg=0.95, test_worst=0.55, test_avg=0.93),
           "C": dict(val_worst=0.75, val_avg=0.85, test_worst=0.78, test_avg=0.86)}


def history() -> list[TrialRecord]:
    trials = []
    for n, (name, m) in enumerate(CONFIGS.items()):
        trials.append(TrialRecord(f"r{name}", CELL.cell_id, f"t{n}", "", "FINISHED", "tpe", "search", {"lr": name},
                                  {f"best/{k}_acc": v for k, v in m.items()}, n, None, None))
    for seed, worst in enumerate((0.71, 0.73)):  # the study re-trained its own choice, A
        trials.append(TrialRecord(f"f{seed}", CELL.cell_id, f"f{seed}", "", "FINISHED", "final", "final",
                                  {"lr": "A", "seed": str(seed)}, {"best/test_worst_acc": worst,
                                                                   "best/test_avg_acc": 0.9}, 10 + seed, None, None))
    return trials


@pytest.mark.parametrize(("rule", "config"), [("val_worst", "A"), ("val_avg", "B"), ("oracle_test_worst", "C")])
def test_each_rule_chooses_its_own_config_from_the_same_history(rule: str, config: str) -> None:
    report = build_report([CELL], history(), select=rule, n_boot=0)
    [row] = report.rows
    assert row.chosen_config == {"lr": config} and report.rule == SELECTION_RULES[rule].description
    if config == "A":  # the config the final seeds re-trained: the mean over those seeds
        assert row.status == FINAL and row.test_worst is not None and row.test_worst.mean == pytest.approx(0.72)
    else:  # another config: its search trial, one run, never the seeds of A
        assert row.status == SEARCH_ONLY and row.n_seeds == 0
        assert row.test_worst is not None and row.test_worst.mean == CONFIGS[config]["test_worst"]
        assert any("another config than the final seeds" in n for n in row.notes)
    key = {"val_worst": "val_worst", "val_avg": "val_avg", "oracle_test_worst": "test_worst"}[rule]
    assert row.samples.search_val == tuple(m[key] for m in CONFIGS.values())  # tuning noise of the rule's metric


def test_an_unknown_rule_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="val_worst, val_avg, oracle_test_worst"):
        build_report([CELL], history(), select="test_avg")


GRID = """
study: select
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25]}
objectives: [erm]
epochs: 1
final_seeds: 2
"""


def test_the_report_recomputes_the_choice_from_mlflow_and_logs_the_study_choice_on_the_cell_run(tmp_path) -> None:
    """The history above, written to a real MLflow store by the study's tracker; the report reads only that."""
    import pandas as pd
    from mlflow import MlflowClient

    from wgtune.run.study import report
    from wgtune.spec.grid import load_grid
    from wgtune.tracking.records import (
        CELL_BEST_VAL_WORST,
        CELL_TEST_WORST_MEAN,
        SHARED_VIEW_TAG_PREFIX,
        STUDY_VIEW_KEY,
    )
    from wgtune.tracking.tracker import StudyTracker

    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    [cell] = grid.cells()
    uri = f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}"
    with StudyTracker(uri, "select") as tracker:
        parent = tracker.cell_run(CellRecord.of(cell, 1_000))
        for trial in history():
            phase = "final" if trial.phase == "final" else "search"
            handle = tracker.start_trial(cell.id, trial.trial_id, trial.params, trial.proposal, phase)
            tracker.end_trial(handle, "FINISHED", summary=trial.metrics)

    chosen = {}
    for rule in SELECTION_RULES:
        files = report(grid, tracking_uri=uri, select=rule)
        folder = "report" if rule == "val_worst" else f"report-{rule}"
        assert files[0] == tmp_path / "study" / folder / "cells.csv"
        chosen[rule] = pd.read_csv(files[0])["chosen_config"][0]
    assert chosen == {"val_worst": '{"lr": "A"}', "val_avg": '{"lr": "B"}', "oracle_test_worst": '{"lr": "C"}'}

    client = MlflowClient(uri)
    metrics = client.get_run(parent).data.metrics  # the study's own rule, whatever --select ran last
    assert metrics[CELL_TEST_WORST_MEAN] == pytest.approx(0.72) and metrics[CELL_BEST_VAL_WORST] == 0.80
    experiment = client.get_experiment_by_name("select")
    assert STUDY_VIEW_KEY and (SHARED_VIEW_TAG_PREFIX + STUDY_VIEW_KEY) in experiment.tags

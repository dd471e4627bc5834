"""`wgtune report --select`: the chosen configs recomputed from the recorded trials under another rule."""

from __future__ import annotations

import numpy as np
import pytest

from wgtune.report.build import FINAL, SEARCH_ONLY, SELECTION_RULES, build_report
from wgtune.report.selection import COLUMNS, compare_rules, rule_reports, selection_markdown, write_selection
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

    from wgtune.run.reporting import report
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
        side = pd.read_csv(tmp_path / "study" / folder / "selection.csv")  # every rule side by side, in every run
        assert (tmp_path / "study" / folder / "selection.md") in files and set(side["rule"]) <= set(SELECTION_RULES)
    assert chosen == {"val_worst": '{"lr": "A"}', "val_avg": '{"lr": "B"}', "oracle_test_worst": '{"lr": "C"}'}

    client = MlflowClient(uri)
    metrics = client.get_run(parent).data.metrics  # the study's own rule, whatever --select ran last
    assert metrics[CELL_TEST_WORST_MEAN] == pytest.approx(0.72) and metrics[CELL_BEST_VAL_WORST] == 0.80
    experiment = client.get_experiment_by_name("select")
    assert STUDY_VIEW_KEY and (SHARED_VIEW_TAG_PREFIX + STUDY_VIEW_KEY) in experiment.tags


# A series of four sizes. Everywhere the rules agree (config A) except at the largest size, where
# validation average prefers B; the study re-trained A in every cell, and B was re-trained under val_avg.
SIZES = (1_000_000, 4_000_000, 16_000_000, 64_000_000)
SPREAD = (-0.01, 0.0, 0.01)  # the same seed spread everywhere: log-space weights are error² (the delta method)


def series_history(retrained: bool = True) -> tuple[list[CellRecord], list[TrialRecord]]:
    cells, trials = [], []
    for i, n in enumerate(SIZES):
        cid = f"wb/m{n}/erm"
        cells.append(CellRecord(cid, "waterbirds", "resnet", "", f"m{n}", n, "erm", False))
        b_avg = 0.99 if n == SIZES[-1] else 0.80
        for k, (name, val_worst, val_avg) in enumerate((("A", 0.8, 0.9), ("B", 0.7, b_avg))):
            trials.append(TrialRecord(f"{cid}/{name}", cid, f"t{k}", "", "FINISHED", "tpe", "search", {"lr": name},
                                      {"best/val_worst_acc": val_worst, "best/val_avg_acc": val_avg,
                                       "best/test_worst_acc": 0.5, "best/test_avg_acc": 0.9}, k, None, None))
        worst_a = 0.6 + 0.08 * i  # error falls with size under the study's choice
        runs = [("A", "", worst_a)]
        if retrained and n == SIZES[-1]:
            runs.append(("B", "val_avg", 0.4))  # B's seeds: error rises again at the largest size
        for name, rule, worst in runs:
            for seed, d in enumerate(SPREAD):
                trials.append(TrialRecord(f"{cid}/{name}{seed}", cid, f"{name}{seed}", "", "FINISHED", "final",
                                          "final", {"lr": name, "seed": str(seed)},
                                          {"best/test_worst_acc": worst + d, "best/test_avg_acc": 0.9},
                                          10 + seed, None, None, select=rule))
    return cells, trials


def ols_slope(worst: list[float]) -> float:
    """The log-log slope by numpy's weighted least squares (polyfit weighs residuals by w, so w = error)."""
    error = 1 - np.array(worst)
    return float(np.polyfit(np.log(np.array(SIZES) / 1e6), np.log(error), 1, w=error)[0])


def test_the_side_by_side_lists_the_changed_cell_with_the_slope_of_its_own_rule() -> None:
    comparison = compare_rules(rule_reports(*series_history(), n_boot=50))
    largest = f"wb/m{SIZES[-1]}/erm"
    assert [(c.cell_id, c.rule) for c in comparison.changes] == [(largest, "val_avg")]
    [series] = comparison.series
    study, by_avg = series.under("val_worst"), series.under("val_avg")
    assert study.changed == () and by_avg.changed == by_avg.retrained == (largest,)
    study_worst = [0.6 + 0.08 * i for i in range(4)]
    assert study.fit.slope.slope == pytest.approx(ols_slope(study_worst))
    # The rule's slope is fitted on B's re-trained seeds at the largest size, not on A's.
    assert by_avg.fit.slope.slope == pytest.approx(ols_slope([*study_worst[:3], 0.4]))
    assert by_avg.fit.slope.slope > 0 > study.fit.slope.slope
    # The oracle picks A wherever test ties (0.5 each, A earlier): no change, the study's slope.
    assert series.under("oracle_test_worst").fit.slope.slope == pytest.approx(study.fit.slope.slope)
    md = selection_markdown(comparison)
    row = next(line for line in md.splitlines() if line.startswith("| waterbirds"))
    assert f"{by_avg.fit.slope.slope:+.3f}" in row and "changed 1 (1 re-trained)" in row
    assert f"| {largest} | val_avg | lr=A | lr=B |" in md


def test_the_study_rule_never_uses_another_rules_seeds_and_a_changed_cell_without_them_is_not_fitted() -> None:
    cells, trials = series_history()
    study = build_report(cells, trials, n_boot=0)
    largest = next(r for r in study.rows if r.n_params == SIZES[-1])
    assert largest.n_seeds == 3 and largest.test_worst.mean == pytest.approx(0.6 + 0.08 * 3)  # A's seeds only
    comparison = compare_rules(rule_reports(*series_history(retrained=False), n_boot=0))
    by_avg = comparison.series[0].under("val_avg")
    assert by_avg.changed == (f"wb/m{SIZES[-1]}/erm",) and by_avg.retrained == ()
    assert by_avg.fit.n_sizes == 3  # the changed cell is its search trial: on the curve, not in the fit


def test_the_side_by_side_files_hold_one_line_per_series_and_rule(tmp_path) -> None:
    import pandas as pd

    paths = write_selection(compare_rules(rule_reports(*series_history(), n_boot=0)), tmp_path)
    assert [p.name for p in paths] == ["selection.md", "selection.csv", "selection.png"]
    frame = pd.read_csv(paths[1])
    assert list(frame.columns) == list(COLUMNS) and list(frame["rule"]) == list(SELECTION_RULES)
    assert list(frame["changed"]) == [0, 1, 0] and paths[2].read_bytes()[:4] == b"\x89PNG"

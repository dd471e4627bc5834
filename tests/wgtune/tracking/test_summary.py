"""summarise: what a cell's MLflow runs say about it, counted the way the router counts in a launch."""

from __future__ import annotations

import dataclasses

from trainables.metrics import SELECTION_METRIC
from wgtune.tracking.records import PHASE_SEARCH, TrialRecord
from wgtune.tracking.summary import summarise


def record(run: str, status: str, value: float | None = None, **flags: bool) -> TrialRecord:
    metrics = {} if value is None else {SELECTION_METRIC: value}
    return TrialRecord(run_id=run, cell_id="c", trial_id=run, run_name="", status=status, proposal="tpe",
                       phase=PHASE_SEARCH, params={"lr": "0.01"}, metrics=metrics, start_time_ms=0,
                       end_time_ms=1, error=None, **flags)


def test_errored_trials_are_failed_observations_after_a_launch_as_inside_it():
    """Guards issue 13, defect 7: inside a launch the router records an errored search trial as a
    failed TPE point; after a relaunch it was forgotten (only diverged FAILED runs were observations),
    so TPE could propose it again as if unseen. It still does not count against the budget."""
    [summary] = summarise([record("ok", "FINISHED", 0.7), record("err", "FAILED"),
                           record("div", "FAILED", diverged=True), record("gone", "KILLED")], {"c": "p"}).values()

    by_run = {o.run_id: o for o in summary.observations}
    assert set(by_run) == {"ok", "err", "div"}
    assert by_run["err"].errored and by_run["err"].failed and not by_run["err"].diverged
    assert by_run["div"].diverged and by_run["div"].failed and not by_run["div"].errored
    assert summary.finished == 1 and summary.failed == 2


def test_an_asha_stopped_trial_is_a_marked_observation_of_its_best_so_far():
    """Guards issue 13, defect 7: a trial ASHA stopped entered the history unmarked, as if fully trained."""
    [summary] = summarise([record("full", "FINISHED", 0.6), record("cut", "FINISHED", 0.4, stopped_early=True)],
                          {"c": "p"}).values()

    by_run = {o.run_id: o for o in summary.observations}
    assert by_run["cut"].stopped and by_run["cut"].value == 0.4 and not by_run["full"].stopped


def trial(run: str, phase: str = PHASE_SEARCH, status: str = "FINISHED", lr: str = "0.01", select: str = "",
          start: int = 0, **metrics: float) -> TrialRecord:
    return TrialRecord(run_id=run, cell_id="c", trial_id=run, run_name="", status=status, proposal="tpe",
                       phase=phase, params={"lr": lr, "seed": run}, metrics={f"best/{k}_acc": v for k, v in metrics.items()},
                       start_time_ms=start, end_time_ms=1, error=None, select=select)


def test_each_rules_choice_counts_only_the_final_seeds_that_ran_it_under_that_rule():
    """The study's final seeds are its own (no rule tag); seeds re-trained under val_avg count for val_avg's choice
    only, and only those that ran its config; a rule choosing what the study chose needs no re-training."""
    runs = [trial("A", lr="A", start=1, val_worst=0.8, val_avg=0.85, test_worst=0.7),
            trial("B", lr="B", start=2, val_worst=0.6, val_avg=0.95, test_worst=0.6),
            trial("fA1", "final", lr="A"), trial("fA2", "final", "FAILED", lr="A"),
            trial("fB1", "final", lr="B", select="val_avg"), trial("fB2", "final", "FAILED", lr="B", select="val_avg"),
            trial("fC1", "final", lr="C", select="val_avg")]  # ran another config (the choice moved since)
    runs.append(dataclasses.replace(trial("fB3", "final", "FAILED", lr="B", select="val_avg"), diverged=True))
    [summary] = summarise(runs, {"c": "p"}).values()

    assert summary.final_done == 1, "the study's own seeds only: fA1 (fA2 failed, to be re-run)"
    choices = summary.choices
    assert (choices["val_worst"].run_id, choices["val_avg"].run_id, choices["oracle_test_worst"].run_id) == (
        "A", "B", "A")
    assert choices["val_avg"].final_done == 2, "fB1 finished, fB3 diverged for good; not fB2, not fC1"
    assert choices["val_avg"].needs_retraining
    assert not choices["oracle_test_worst"].needs_retraining and not choices["val_worst"].needs_retraining

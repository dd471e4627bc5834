"""summarise: what a cell's MLflow runs say about it, counted the way the router counts in a launch."""

from __future__ import annotations

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

"""Tune events of a running study, turned into MLflow writes and console lines.

Tune pickles its callbacks with the experiment and unpickles them on restore, so a callback holds
only its session's key; the live objects it talks to (the tracker, the progress rows, the printer)
are in `SESSIONS`, registered by the driver for as long as the experiment runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ray.tune import Callback

from trainables.metrics import (
    BEST_PREFIX,
    BEST_TEST_WORST,
    COST_METRICS,
    EPOCH,
    LR,
    REPORTED_PREFIXES,
    SELECTION_METRIC,
)
from wgtune.run.display import StudyProgress
from wgtune.run.plan import PlannedCell, trial_config
from wgtune.run.progress import CellProgress
from wgtune.search.allocation import ALLOCATION_FILE
from wgtune.tracking.records import (
    ATTEMPTS_TAG,
    DEVICE_TAG,
    DIVERGED_TAG,
    PHASE_FINAL,
    PHASE_SEARCH,
    SEED_PARAM,
    SELECT_KEY,
    STOPPED_TAG,
    config_params,
    device_use,
)

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from wgtune.tracking.tracker import StudyTracker

DIVERGED = "wgtune/diverged"
"""The key of the last result of a trial whose loss diverged: the traceback. Such a trial ends
itself rather than raise, because Tune would retry it from its last checkpoint, with the same
weights and data order, and it would diverge again."""


@dataclass
class Session:
    """What the callbacks of one running study talk to. Tune pickles its callbacks with the
    experiment (and unpickles them on restore), so they hold only this session's key."""

    tracker: StudyTracker
    progress: StudyProgress
    """The cells' progress rows and the display they are shown on (`display.py`: live, or a log)."""
    cells: Mapping[str, PlannedCell] = field(default_factory=dict)
    """The planned cells, by id: a trial's whole config is logged from its cell's (`trial_config`)."""

    @property
    def rows(self) -> dict[str, CellProgress]:
        return self.progress.rows


SESSIONS: dict[str, Session] = {}
"""The running studies of this process, by experiment key (storage/name)."""


def cell_failing(key: str, cell: str, failures: int) -> None:
    """The router gave up on `cell` (its failure cap): mark its progress row and its MLflow run."""
    session = SESSIONS.get(key)
    if session is not None and cell in session.rows:
        session.rows[cell].failing = True
        session.tracker.mark_failing(cell, failures)


def cell_allocation(key: str, cell: str, record: dict[str, Any]) -> None:
    """Adaptive allocation ended `cell`'s search: log the decision and its reason on the cell's run."""
    session = SESSIONS.get(key)
    if session is not None:
        session.tracker.log_cell_json(cell, ALLOCATION_FILE, record)


class _SessionCallback(Callback):
    def __init__(self, key: str) -> None:
        self.key = key

    @property
    def session(self) -> Session:
        return SESSIONS[self.key]


class TrackingCallback(_SessionCallback):
    """Tune events -> MLflow, through the tracker's single background writer (docs/design.md, decision 3).

    A failed attempt ends the run FAILED with its error (tag `wgtune.error` and `error.txt`:
    "attempt 1 of 2 failed; ..." then every attempt's traceback, latest first); a retry reopens
    the same run RUNNING. Every ended run is tagged `wgtune.attempts`, so a FINISHED run with
    attempts > 1 (and a `wgtune.error` tag) succeeded after retries.
    """

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.runs: dict[str, str] = {}

    @property
    def tracker(self) -> StudyTracker:
        return self.session.tracker

    def _start(self, trial: Trial) -> str:
        """The trial's run: created, or (a restored or retried trial) reopened as RUNNING."""
        config = trial.config
        params = {**config["params"], **({SEED_PARAM: config[SEED_PARAM]} if SEED_PARAM in config else {})}
        planned = self.session.cells.get(config["cell"])
        tags = {}
        if planned is not None:  # the whole resolved config, so a later launch can tell what it was trained under
            params.update(config_params(trial_config(planned, config["params"], config.get(SEED_PARAM))))
            tags[DEVICE_TAG] = device_use(planned.resources)[0]  # what its cost/device_s counts
        self.runs[trial.trial_id] = self.tracker.start_trial(
            config["cell"], trial.trial_id, params, config["proposal"], phase=config.get("phase", PHASE_SEARCH),
            rule=config.get(SELECT_KEY, ""), tags=tags)
        return self.runs[trial.trial_id]

    def _run(self, trial: Trial) -> str:
        return self.runs.get(trial.trial_id) or self._start(trial)

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        if DIVERGED in result:
            # Not an epoch: the run ends FAILED with it in on_trial_complete. What it spent is logged, as spent.
            spent = {k: v for k, v in result.items() if k in COST_METRICS}
            if spent:
                self.tracker.log_epoch(self._run(trial), spent, step=int(result["training_iteration"]))
            return
        metrics = {k: v for k, v in result.items() if k.startswith(REPORTED_PREFIXES) or k == LR}
        self.tracker.log_epoch(self._run(trial), metrics, step=int(result.get("epoch", result["training_iteration"])))

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        if DIVERGED in result:
            self.tracker.end_trial(self._run(trial), "FAILED", error=_diverged_text(trial),
                                   tags={**_attempts(trial, 1), DIVERGED_TAG: "true"})
            return
        summary = {k: v for k, v in result.items() if k.startswith(BEST_PREFIX)}
        tags = _attempts(trial, 1)
        planned = self.session.cells.get(trial.config["cell"])
        epochs = trial_config(planned, trial.config["params"]).get("epochs") if planned is not None else None
        if trial.config.get("phase") != PHASE_FINAL and epochs is not None and EPOCH in result \
                and int(result[EPOCH]) < int(epochs):
            tags[STOPPED_TAG] = "true"  # by the scheduler: its value is its best so far
        self.tracker.end_trial(self._run(trial), "FINISHED", summary=summary, tags=tags)

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        # The run waits FAILED with this attempt's error; on_trial_start reopens it RUNNING when
        # Tune restarts the trial from its last checkpoint, and its epochs continue from there.
        self.tracker.end_trial(self._run(trial), "FAILED", error=_error_text(trial, retrying=True),
                               tags=_attempts(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.tracker.end_trial(self._run(trial), "FAILED", error=_error_text(trial, retrying=False),
                               tags=_attempts(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.tracker.flush()

    def get_state(self) -> dict[str, Any]:
        return {"runs": dict(self.runs)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.runs = dict(state.get("runs", {}))


class ProgressCallback(_SessionCallback):
    """Tune's trial events -> `display.StudyProgress` (per-trial lines, the live view or the log's summaries),
    instead of Ray's output."""

    @property
    def progress(self) -> StudyProgress:
        return self.session.progress

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.progress.started(trial.config["cell"])

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        cell, result = trial.config["cell"], trial.last_result or {}
        final = trial.config.get("phase") == PHASE_FINAL
        if DIVERGED in result:
            self.progress.diverged(cell, trial.trial_id, _last_line(result[DIVERGED]),
                                   final_seed=trial.config[SEED_PARAM] if final else None)
        elif final:
            self.progress.final_finished(cell, trial.config[SEED_PARAM], result.get(BEST_TEST_WORST, float("nan")))
        else:
            self.progress.finished(cell, trial.trial_id, result.get(SELECTION_METRIC))

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        total = f"/{trial.max_failures + 1}" if trial.max_failures >= 0 else ""
        self.progress.retrying(trial.config["cell"], trial.trial_id, _last_error(trial), _resume_epoch(trial),
                               f"{trial.num_failures + 1}{total}")

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.progress.errored(trial.config["cell"], trial.trial_id, trial.num_failures, _last_error(trial))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.progress.tick()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.progress.close()


_FAILURE_HEADER = re.compile(r"^(?=Failure # \d+ \(occurred at )", re.MULTILINE)
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its task names, which MLflow shows as junk
_ONE_LINE = 200


def _failures(trial: Trial) -> list[str]:
    """Each failed attempt's error, latest first, from the file where Tune appends them on the driver's disk."""
    path = trial.error_file
    if not path or not Path(path).exists():
        return [str(getattr(trial, "error_msg", None) or "trial failed (no error file)")]
    text = _ANSI_COLOUR.sub("", Path(path).read_text())
    parts = [part.strip() for part in _FAILURE_HEADER.split(text) if part.strip()]
    return parts[::-1] or ["trial failed (empty error file)"]


def _error_text(trial: Trial, retrying: bool) -> str:
    """What the run records: which attempt failed and what Tune does next, then every attempt's error,
    latest first (the run's `wgtune.error` tag is cut at 5000 characters; `error.txt` has all)."""
    total = f" of {trial.max_failures + 1}" if trial.max_failures >= 0 else ""
    then = (f"Tune retries it from its last checkpoint (epoch {_resume_epoch(trial)} next)" if retrying
            else "no retries left")
    return f"attempt {trial.num_failures}{total} failed; {then}\n\n" + "\n\n".join(_failures(trial))


def _diverged_text(trial: Trial) -> str:
    """What the run of a diverged trial records: why there was no retry, then the traceback."""
    return ("the training loss diverged; not retried: a retry resumes from the last checkpoint with the same "
            "weights and data order and diverges again. TPE counts the configuration as failed.\n\n"
            + trial.last_result[DIVERGED])


def _attempts(trial: Trial, running: int = 0) -> dict[str, str]:
    """The run's `wgtune.attempts` tag: attempts so far (the failed ones, plus one that just finished)."""
    return {ATTEMPTS_TAG: str(trial.num_failures + running)}


def _last_error(trial: Trial) -> str:
    """The latest attempt's exception in one line: a traceback's last line (a dead worker's is long)."""
    return _last_line(_failures(trial)[0])


def _last_line(text: str) -> str:
    """A traceback's last line, the exception, cut to one screen line."""
    lines = text.strip().splitlines()
    line = lines[-1].strip() if lines else "unknown error"
    return line if len(line) <= _ONE_LINE else line[:_ONE_LINE - 1] + "…"


def _resume_epoch(trial: Trial) -> int:
    """The epoch a retry starts at: the one after the trial's last checkpoint, else the first."""
    checkpointed = getattr(trial, "latest_checkpoint_result", None)
    epoch = (checkpointed.metrics or {}).get("epoch") if checkpointed is not None else None
    return int(epoch) + 1 if epoch is not None else 1

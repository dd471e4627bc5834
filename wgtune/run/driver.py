"""Runs a study on Ray Tune: one experiment, every cell's trials sharing the cluster.

With `wgtune/searcher.py` and `wgtune/cluster.py`, the only modules that import Ray. The trial itself is
`trainables.train`, imported inside the worker.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ray import tune
from ray.tune import Callback
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from wgtune.run.cluster import init_ray
from wgtune.run.plan import OBJECTIVE_METRIC, PlannedCell, trial_config
from wgtune.run.progress import CellProgress, render
from wgtune.search.router import CellPlan, CellRouter
from wgtune.tracking.records import DIVERGED_TAG

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from wgtune.spec.grid import Grid
    from wgtune.tracking.tracker import StudyTracker

STEP_METRIC = "val/worst_acc"
"""What ASHA compares at each rung (within a cell): this epoch's validation worst-group accuracy."""
DIVERGED = "wgtune/diverged"
"""The key of the last result of a trial whose loss diverged: the traceback. Such a trial ends
itself rather than raise, because Tune would retry it from its last checkpoint, with the same
weights and data order, and it would diverge again."""
_OUR_PREFIXES = ("train/", "val/", "test/", "best/")


@dataclass(frozen=True)
class RunSettings:
    """How the driver runs the experiment (from the grid's `search` block and the CLI)."""

    storage: str
    name: str
    max_concurrent: int
    scheduler: str
    grace_period: int
    max_failures: int
    epochs: int
    n_startup: int
    address: str | None = None
    progress_every_s: float = 30.0
    restore: bool = False

    @classmethod
    def for_grid(cls, grid: Grid, name: str, **overrides: Any) -> RunSettings:
        """The settings of a grid's `search` block and epochs, under its Tune storage; `overrides`
        (the CLI's address, a restore, how often to print the table) win."""
        search = grid.spec.search
        settings = {"storage": grid.storage, "name": name, "max_concurrent": search.max_concurrent,
                    "scheduler": search.scheduler, "grace_period": search.grace_period,
                    "max_failures": search.max_failures, "epochs": grid.spec.epochs, "n_startup": search.n_startup}
        return cls(**{**settings, **overrides})


def run_experiment(
    cells: list[PlannedCell],
    tracker: StudyTracker,
    settings: RunSettings,
    print_line: Callable[[str], None] = print,
    trial_fn: Callable[..., None] | None = None,
) -> dict[str, CellProgress]:
    """Run every cell's remaining budget to completion on Ray Tune, logging every trial to `tracker`.

    `trial_fn(config, cells)` replaces the training trial (benchmarks of the orchestration use a no-op).
    """
    by_id = {c.cell.id: c for c in cells}
    init_ray(settings.address)
    progress = {
        c.cell.id: CellProgress(c.cell.label, c.budget, finished=c.finished, final=c.final_finished + c.final_diverged,
                                final_budget=c.final_seeds)
        for c in cells
    }
    key = _join(settings.storage, settings.name)
    _SESSIONS[key] = _Session(tracker, progress, print_line, settings.progress_every_s)
    # A failed attempt is one [retrying]/[failed] line here and its traceback in the run's
    # error.txt; Tune would also print every traceback, dozens of lines each, among ours.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn or _run_trial, cells=by_id),
        resources=_resources_of(by_id),
    )
    if settings.restore:
        # The experiment's own searcher, scheduler and callbacks come back from its state;
        # trials that were running continue from their last epoch checkpoint. Errored trials
        # stay failed: the router has already replaced them, and resuming them would run both.
        tuner = tune.Tuner.restore(key, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = _new_tuner(trainable, cells, settings, key)
    try:
        tuner.fit()
    finally:
        del _SESSIONS[key]
    return progress


def restorable(storage: str, name: str) -> bool:
    """Whether Tune left a restorable state of experiment `name` under `storage` (a folder or a URI)."""
    return tune.Tuner.can_restore(_join(storage, name))


def _join(storage: str, name: str) -> str:
    """An experiment's location under a storage folder or URI (s3://, gs://, ...)."""
    return f"{storage.rstrip('/')}/{name}"


def _new_tuner(trainable: Any, cells: list[PlannedCell], settings: RunSettings, key: str) -> tune.Tuner:
    """A new experiment over the cells' remaining work, one TPE per cell behind the router."""
    # Largest resource requests first: the router breaks ties in plan order, and Ray keeps no
    # freed capacity for a big request that does not fit yet, so big trials queued behind small
    # ones starve until the small cells run dry (GPU occupancy 0.66-0.75 vs 0.91, bench/occupancy.py).
    biggest_first = sorted(cells, key=lambda c: (-c.resources.gpu, -c.resources.cpu))
    plans = [_search_plan(c, settings.n_startup) for c in biggest_first if c.has_work]
    router = CellRouter(plans, metric=OBJECTIVE_METRIC, mode="max",
                        on_give_up=functools.partial(_cell_failing, key), failed_key=DIVERGED)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(router, max_concurrent=settings.max_concurrent),
            scheduler=_scheduler(settings),
            # No count: a trial that fails for good gets a replacement, so the router alone knows
            # when the work is done, and says so with FINISHED.
            num_samples=-1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage,
            callbacks=[_TrackingCallback(key), _ProgressCallback(key)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            verbose=0,
        ),
    )


def _search_plan(cell: PlannedCell, n_startup: int) -> CellPlan:
    """The router's view of a cell: its (possibly narrowed) space, remaining budget and priors."""
    priors = cell.priors
    return CellPlan(
        cell.cell.id,
        (priors.space if priors else cell.space).to_hyperopt(),
        cell.remaining,
        cell.seed,
        n_startup,
        observations=priors.observations if priors else (),
        first_points=priors.first_points if priors else (),
        final_seeds=cell.final_remaining,
        final_offset=cell.final_finished + cell.final_diverged,
    )


def _run_trial(config: dict[str, Any], cells: Mapping[str, PlannedCell]) -> None:
    """The Ray function trainable: one `trainables.train` run, reporting every epoch to Tune."""
    from trainables.training import DivergedError, train

    planned = cells[config["cell"]]
    settings = trial_config(planned, config["params"], config.get("seed"))
    checkpoint = tune.get_checkpoint()

    def report(metrics: dict[str, float], checkpoint_dir: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    try:
        with tempfile.TemporaryDirectory(prefix="wgtune-trial-") as workdir:
            if checkpoint is None:
                train(settings, report, workdir=workdir)
            else:
                with checkpoint.as_directory() as resume:
                    train(settings, report, workdir=workdir, resume_from=resume)
    except DivergedError:
        # Tune's strict metric check wants the searcher's metric in every result.
        tune.report({OBJECTIVE_METRIC: float("nan"), DIVERGED: traceback.format_exc()})


def _resources_of(cells: Mapping[str, PlannedCell]) -> Callable[[dict], PlacementGroupFactory]:
    """Per-trial resources from the trial's cell (family and model overrides already applied)."""
    bundles = {
        cell_id: {"CPU": c.resources.cpu, **({"GPU": c.resources.gpu} if c.resources.gpu else {})}
        for cell_id, c in cells.items()
    }

    def resources(config: dict) -> PlacementGroupFactory:
        return PlacementGroupFactory([bundles[config["cell"]]])

    return resources


def _scheduler(settings: RunSettings) -> FIFOScheduler:
    if settings.scheduler == "asha":
        return CellASHA(grace_period=settings.grace_period, max_t=settings.epochs)
    return FIFOScheduler()


class CellASHA(FIFOScheduler):
    """Asynchronous successive halving within each cell: a trial's rung competitors are trials
    of its own cell only, since cells differ in difficulty and pooling them would starve the hard ones."""

    def __init__(self, grace_period: int, max_t: int, reduction_factor: float = 3) -> None:
        super().__init__()
        self._options = {"grace_period": min(grace_period, max_t), "max_t": max_t, "reduction_factor": reduction_factor}
        self._cells: dict[str, AsyncHyperBandScheduler] = {}
        # Final-seed re-trainings of a chosen config run to the end: a seed stopped at a rung
        # would report a one-epoch test accuracy into the mean over seeds (decision 7).
        self._final = FIFOScheduler()

    def _of(self, trial: Trial) -> TrialScheduler:
        if trial.config.get("phase") == "final":
            return self._final
        cell = trial.config["cell"]
        if cell not in self._cells:
            self._cells[cell] = AsyncHyperBandScheduler(
                time_attr="training_iteration", metric=STEP_METRIC, mode="max", **self._options
            )
        return self._cells[cell]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # ours are fixed: the step metric, maximised

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"per-cell ASHA over {len(self._cells)} cells"


@dataclass
class _Session:
    """What the callbacks of one running study talk to. Tune pickles its callbacks with the
    experiment (and unpickles them on restore), so they hold only this session's key."""

    tracker: StudyTracker
    rows: dict[str, CellProgress]
    print_line: Callable[[str], None]
    every_s: float


_SESSIONS: dict[str, _Session] = {}


def _cell_failing(key: str, cell: str, failures: int) -> None:
    """The router gave up on `cell` (its failure cap): mark its progress row and its MLflow run."""
    session = _SESSIONS.get(key)
    if session is not None and cell in session.rows:
        session.rows[cell].failing = True
        session.tracker.mark_failing(cell, failures)


class _SessionCallback(Callback):
    def __init__(self, key: str) -> None:
        self.key = key

    @property
    def session(self) -> _Session:
        return _SESSIONS[self.key]


class _TrackingCallback(_SessionCallback):
    """Tune events -> MLflow, through the tracker's single background writer (decision 3).

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
        params = {**config["params"], **({"seed": config["seed"]} if "seed" in config else {})}
        self.runs[trial.trial_id] = self.tracker.start_trial(
            config["cell"], trial.trial_id, params, config["proposal"], phase=config.get("phase", "search")
        )
        return self.runs[trial.trial_id]

    def _run(self, trial: Trial) -> str:
        return self.runs.get(trial.trial_id) or self._start(trial)

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        if DIVERGED in result:
            return  # not an epoch: the run ends FAILED with it in on_trial_complete
        metrics = {k: v for k, v in result.items() if k.startswith(_OUR_PREFIXES) or k == "lr"}
        self.tracker.log_epoch(self._run(trial), metrics, step=int(result.get("epoch", result["training_iteration"])))

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        if DIVERGED in result:
            self.tracker.end_trial(self._run(trial), "FAILED", error=_diverged_text(trial),
                                   tags={**_attempts(trial, 1), DIVERGED_TAG: "true"})
            return
        summary = {k: v for k, v in result.items() if k.startswith("best/")}
        self.tracker.end_trial(self._run(trial), "FINISHED", summary=summary, tags=_attempts(trial, 1))

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


class _ProgressCallback(_SessionCallback):
    """One line per finished trial, and the per-cell table every so often, instead of Ray's output."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self._last_table = time.monotonic()

    @property
    def rows(self) -> dict[str, CellProgress]:
        return self.session.rows

    def print_line(self, line: str) -> None:
        self.session.print_line(line)

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.rows[trial.config["cell"]].running += 1

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        row = self.rows[trial.config["cell"]]
        row.running -= 1
        result = trial.last_result or {}
        if DIVERGED in result:
            row.failed += 1
            if trial.config.get("phase") == "final":
                row.final += 1  # done: that seed's result
                then = f"seed {trial.config['seed']} stays diverged (re-training it would diverge again)"
            else:
                then = "no more trials for this cell" if row.failing else "a new trial replaces it"
            self.print_line(f"[diverged] {row.label}: trial {trial.trial_id}: {_last_line(result[DIVERGED])}; "
                            f"not retried (it would diverge again from its checkpoint); {then}")
            return
        if trial.config.get("phase") == "final":
            row.final += 1
            self.print_line(f"[final {row.final}/{row.final_budget}] {row.label}: seed {trial.config['seed']} "
                            f"test worst-group {result.get('best/test_worst_acc', float('nan')):.3f}")
            return
        value = result.get(OBJECTIVE_METRIC)
        row.record(value)
        shown = f"{value:.3f}" if value is not None else "n/a"
        best = f" (best {row.best:.3f})" if row.best is not None else ""
        self.print_line(f"[{row.finished}/{row.budget}] {row.label}: trial {trial.trial_id} val worst-group {shown}{best}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        row = self.rows[trial.config["cell"]]
        row.running -= 1  # back in Tune's queue; on_trial_start counts it again
        total = f"/{trial.max_failures + 1}" if trial.max_failures >= 0 else ""
        self.print_line(f"[retrying] {row.label}: trial {trial.trial_id} failed: {_last_error(trial)}; "
                        f"retrying from epoch {_resume_epoch(trial)} (attempt {trial.num_failures + 1}{total})")

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        row = self.rows[trial.config["cell"]]
        row.running -= 1
        row.failed += 1
        # The router has already decided (Tune tells it before the callbacks): replace, or give up.
        then = ("no more trials for this cell: as many of its trials failed as it had to run" if row.failing
                else "a new trial replaces it")
        attempts = f"{trial.num_failures} attempt{'s' if trial.num_failures != 1 else ''}"
        self.print_line(f"[failed] {row.label}: trial {trial.trial_id} after {attempts}: {_last_error(trial)}; {then}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last_table >= self.session.every_s:
            self._last_table = time.monotonic()
            self.print_line(render(self.rows.values()))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.print_line(render(self.rows.values(), title="study finished"))


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
    return {"wgtune.attempts": str(trial.num_failures + running)}


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

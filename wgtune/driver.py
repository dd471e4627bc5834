"""Runs a study on Ray Tune: one experiment, every cell's trials sharing the cluster.

With `wgtune/searcher.py`, the only module that imports Ray. The trial itself is
`trainables.train`, imported inside the worker.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import ray
from ray import tune
from ray.tune import Callback
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from wgtune.plan import OBJECTIVE_METRIC, PlannedCell, trial_config
from wgtune.progress import CellProgress, render
from wgtune.searcher import CellPlan, CellRouter

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from wgtune.tracking import StudyTracker

STEP_METRIC = "val/worst_acc"
"""What ASHA compares at each rung (within a cell): this epoch's validation worst-group accuracy."""
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
    _init_ray(settings.address)
    progress = {
        c.cell.id: CellProgress(c.cell.label, c.budget, finished=c.finished, final=c.final_finished,
                                final_budget=c.final_seeds)
        for c in cells
    }
    key = _join(settings.storage, settings.name)
    _SESSIONS[key] = _Session(tracker, progress, print_line, settings.progress_every_s)
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn or _run_trial, cells=by_id),
        resources=_resources_of(by_id),
    )
    if settings.restore:
        # The experiment's own searcher, scheduler and callbacks come back from its state;
        # trials that were running continue from their last epoch checkpoint.
        tuner = tune.Tuner.restore(key, trainable, resume_unfinished=True, resume_errored=True)
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
    router = CellRouter(plans, metric=OBJECTIVE_METRIC, mode="max")
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(router, max_concurrent=settings.max_concurrent),
            scheduler=_scheduler(settings),
            num_samples=sum(p.budget + p.final_seeds for p in plans),
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
        final_offset=cell.final_finished,
    )


def _init_ray(address: str | None) -> None:
    """Join `address` (or $RAY_ADDRESS), else start a local instance with the dashboard off."""
    # Our progress view replaces Tune's: the legacy reporter honours verbose=0 (the new one
    # still prints boxes), and per-epoch checkpoints of short trials make Tune warn on every one.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow is the study's record; Tune's own CSV/JSON/TensorBoard files per trial cost the
    # driver ~19 ms of CPU per trial (measured, bench/orchestration_overhead.py) and nobody
    # reads them. Restore uses Tune's experiment state and checkpoints, which stay.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local" starts a new instance: a bare ray.init() would silently join whatever cluster
        # /tmp/ray/ray_current_cluster names (a leftover `ray start`, another user's).
        ray.init(address="local", include_dashboard=False, **kwargs)


def _run_trial(config: dict[str, Any], cells: Mapping[str, PlannedCell]) -> None:
    """The Ray function trainable: one `trainables.train` run, reporting every epoch to Tune."""
    from trainables.training import train

    planned = cells[config["cell"]]
    settings = trial_config(planned, config["params"], config.get("seed"))
    checkpoint = tune.get_checkpoint()

    def report(metrics: dict[str, float], checkpoint_dir: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    with tempfile.TemporaryDirectory(prefix="wgtune-trial-") as workdir:
        if checkpoint is None:
            train(settings, report, workdir=workdir)
        else:
            with checkpoint.as_directory() as resume:
                train(settings, report, workdir=workdir, resume_from=resume)


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

    def _of(self, trial: Trial) -> AsyncHyperBandScheduler:
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


class _SessionCallback(Callback):
    def __init__(self, key: str) -> None:
        self.key = key

    @property
    def session(self) -> _Session:
        return _SESSIONS[self.key]


class _TrackingCallback(_SessionCallback):
    """Tune events -> MLflow, through the tracker's single background writer (decision 3)."""

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
        metrics = {k: v for k, v in result.items() if k.startswith(_OUR_PREFIXES) or k == "lr"}
        self.tracker.log_epoch(self._run(trial), metrics, step=int(result.get("epoch", result["training_iteration"])))

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        summary = {k: v for k, v in (trial.last_result or {}).items() if k.startswith("best/")}
        self.tracker.end_trial(self._run(trial), "FINISHED", summary=summary)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.tracker.end_trial(self._run(trial), "FAILED", error=_error_text(trial))

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

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        row = self.rows[trial.config["cell"]]
        row.running -= 1
        row.failed += 1
        # A traceback's last line is the exception itself.
        last_line = _error_text(trial).strip().splitlines()[-1:] or ["unknown error"]
        self.print_line(f"[failed] {row.label}: trial {trial.trial_id}: {last_line[0]}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last_table >= self.session.every_s:
            self._last_table = time.monotonic()
            self.print_line(render(self.rows.values()))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.print_line(render(self.rows.values(), title="study finished"))


def _error_text(trial: Trial) -> str:
    """The trial's traceback as Tune saved it on the driver's disk."""
    path = trial.error_file
    if path and Path(path).exists():
        return Path(path).read_text()
    return str(getattr(trial, "error_msg", None) or "trial failed (no error file)")

"""Runs a study on Ray Tune: one experiment, every cell's trials sharing the cluster.

Ray is imported only in this package's `driver`, `callbacks` and `cluster`, and in `wgtune.search`'s
`router` and `scheduler`. The trial itself is `trainables.train`, imported inside the worker.
"""

from __future__ import annotations

import functools
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.search import ConcurrencyLimiter

from trainables.metrics import DEVICE_SECONDS, ELAPSED_SECONDS, SELECTION_METRIC
from wgtune.run.callbacks import (
    DIVERGED,
    SESSIONS,
    ProgressCallback,
    Session,
    TrackingCallback,
    cell_allocation,
    cell_failing,
)
from wgtune.run.cluster import init_ray
from wgtune.run.display import LOG_SUMMARY_EVERY_S, StudyProgress, make_display
from wgtune.run.plan import PlannedCell, trial_config
from wgtune.run.progress import CellProgress
from wgtune.search.allocation import AllocationPolicy
from wgtune.search.ceiling import CeilingLedger
from wgtune.search.router import CellRouter, SearchPlan
from wgtune.search.scheduler import make_scheduler
from wgtune.spec.grid import derive_seed
from wgtune.tracking.records import SEED_PARAM, device_use

if TYPE_CHECKING:
    from wgtune.spec.grid import Grid
    from wgtune.tracking.tracker import StudyTracker


@dataclass(frozen=True)
class RunSettings:
    """How the driver runs the experiment (from the grid's `search` block and the CLI)."""

    storage: str
    name: str
    max_concurrent: int
    scheduler: str
    grace_period: int
    max_failures: int
    n_startup: int
    allow_repeats: bool = False
    address: str | None = None
    progress_every_s: float = LOG_SUMMARY_EVERY_S
    """In a log, the least time between two progress summaries (`display.LogDisplay`)."""
    progress: str = "auto"
    """`display.PROGRESS_MODES`: a live view on a terminal, or event lines and summaries in a log."""
    restore: bool = False
    allocation: AllocationPolicy | None = None
    """Adaptive allocation of the study's search trials (`search/allocation.py`); None: fixed."""

    @classmethod
    def for_grid(cls, grid: Grid, name: str, **overrides: Any) -> RunSettings:
        """The settings of a grid's `search` block, under its Tune storage; `overrides`
        (the CLI's address, a restore, how often to print the table) win."""
        search = grid.spec.search
        settings = {"storage": grid.storage, "name": name, "max_concurrent": search.max_concurrent,
                    "scheduler": search.scheduler, "grace_period": search.grace_period,
                    "max_failures": search.max_failures, "n_startup": search.n_startup,
                    "allow_repeats": search.allow_repeats, "allocation": AllocationPolicy.of(search)}
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
    progress = {c.cell.id: CellProgress.of(c.cell, c.budget) for c in cells}
    key = _join(settings.storage, settings.name)
    display = make_display(settings.progress, progress, print_line, settings.progress_every_s, study=tracker.study)
    SESSIONS[key] = Session(tracker, StudyProgress(progress, display), by_id)
    # A failed attempt is one [retrying]/[failed] line here and its traceback in the run's
    # error.txt; Tune would also print every traceback, dozens of lines each, among ours.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn or run_trial, cells=by_id),
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
        del SESSIONS[key]
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
    plans = [search_plan(c, settings.n_startup, settings.allow_repeats) for c in biggest_first if c.budget.has_work]
    # The pool is shared by every cell: those with nothing left to run have spent their part of it.
    allocation = settings.allocation and settings.allocation.less(
        sum(c.budget.search_done for c in cells if not c.budget.has_work))
    ceilings = {c.cell.id: c.ceiling for c in cells if c.ceiling is not None}
    router = CellRouter(plans, metric=SELECTION_METRIC, mode="max",
                        on_give_up=functools.partial(cell_failing, key), failed_key=DIVERGED,
                        allocation=allocation, on_allocation=functools.partial(cell_allocation, key),
                        ceiling=CeilingLedger(ceilings) if ceilings else None)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(router, max_concurrent=settings.max_concurrent),
            scheduler=make_scheduler(settings.scheduler, settings.grace_period,
                                     {c.cell.id: c.base_config["epochs"] for c in cells},
                                     history={c.cell.id: c.priors.curves for c in cells if c.priors}),
            # No count: a trial that fails for good gets a replacement, so the router alone knows
            # when the work is done, and says so with FINISHED.
            num_samples=-1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage,
            callbacks=[TrackingCallback(key), ProgressCallback(key)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            verbose=0,
        ),
    )


def search_plan(cell: PlannedCell, n_startup: int, allow_repeats: bool = False) -> SearchPlan:
    """The router's view of a cell: its (possibly narrowed) space, budget and priors. Its draws
    are seeded from the cell and every run of its history, so a new experiment of a cell that has
    history does not replay the draws of the one before (issue 13, defect 3); a configuration the
    cell has tried is drawn again unless `allow_repeats` (grid `search.allow_repeats`)."""
    priors = cell.priors
    history = priors.history_runs if priors else ()
    return SearchPlan(
        cell.cell.id,
        (priors.space if priors else cell.space).to_hyperopt(),
        cell.budget,
        cell.seed,
        n_startup,
        observations=priors.observations if priors else (),
        first_points=priors.first_points if priors else (),
        draw_seed=derive_seed(cell.seed, *history) if history else None,
        prior=priors.startup_prior if priors else None,
        allow_repeats=allow_repeats,
        final_params=cell.final_params,
        rule=cell.select if cell.final_params is not None else "",
        history_values=cell.search_values,
    )


def run_trial(config: dict[str, Any], cells: Mapping[str, PlannedCell],
              on_epoch: Callable[[dict[str, float]], None] | None = None) -> None:
    """The Ray function trainable: one `trainables.train` run, reporting every epoch to Tune.

    `on_epoch(metrics)` is called with each epoch's metrics before they are reported (and the
    epoch's checkpoint is handed to Tune): where the soak and the fault tests cause their faults.
    Every report, a diverged trial's last one included, carries its compute so far (`device_cost`).
    """
    from trainables.training import DivergedError, train

    planned = cells[config["cell"]]
    settings = trial_config(planned, config["params"], config.get(SEED_PARAM))
    checkpoint = tune.get_checkpoint()
    devices = device_use(planned.resources)[1]

    def report(metrics: dict[str, float], checkpoint_dir: Path) -> None:
        metrics.update(device_cost(metrics, devices))
        if on_epoch is not None:
            on_epoch(metrics)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    try:
        with tempfile.TemporaryDirectory(prefix="wgtune-trial-") as workdir:
            if checkpoint is None:
                train(settings, report, workdir=workdir)
            else:
                with checkpoint.as_directory() as resume:
                    train(settings, report, workdir=workdir, resume_from=resume)
    except DivergedError as diverged:
        # Tune's strict metric check wants the searcher's metric in every result.
        spent = {**diverged.metrics, **device_cost(diverged.metrics, devices)}
        tune.report({SELECTION_METRIC: float("nan"), DIVERGED: traceback.format_exc(), **spent})


def device_cost(metrics: Mapping[str, float], devices: float) -> dict[str, float]:
    """The trial's compute so far, `cost/device_s`: its wall seconds (`train/elapsed_s`, cumulative over the
    attempts its checkpoints carry) times the devices it holds (`records.device_use`: GPUs, else CPU cores).

    Attempts that failed and were retried are counted up to their last checkpoint, since their time was spent
    and the checkpoint carries it into the retry; what a failed attempt ran after its last checkpoint is not
    (a dead worker reports nothing), so a retried trial's cost errs low by at most an epoch per failure.
    A trial that failed for good counts its last report. Nothing when the trial reported no time."""
    elapsed = metrics.get(ELAPSED_SECONDS)
    return {} if elapsed is None else {DEVICE_SECONDS: float(elapsed) * devices}


def _resources_of(cells: Mapping[str, PlannedCell]) -> Callable[[dict], PlacementGroupFactory]:
    """Per-trial resources from the trial's cell (family and model overrides already applied)."""
    bundles = {
        cell_id: {"CPU": c.resources.cpu, **({"GPU": c.resources.gpu} if c.resources.gpu else {})}
        for cell_id, c in cells.items()
    }

    def resources(config: dict) -> PlacementGroupFactory:
        return PlacementGroupFactory([bundles[config["cell"]]])

    return resources

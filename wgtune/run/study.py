"""A study end to end: launch (or resume) it, describe it without starting, report its status.

Everything that can be wrong with the input is checked before the tracking store is written
or Ray is started, so a bad launch leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from wgtune.run.allocation_view import allocation_lines, record_allocation
from wgtune.run.ceilings import ceiling_lines, has_ceilings, with_ceilings
from wgtune.run.display import LOG_SUMMARY_EVERY_S
from wgtune.run.plan import PlannedCell, cell_setting, fixed_settings, plan_cells
from wgtune.run.progress import CellProgress, CellSpend, render, study_view
from wgtune.run.reporting import existing_study, log_cell_summaries
from wgtune.search.priors import CellPriors, cell_priors
from wgtune.spec.errors import UserError
from wgtune.spec.grid import Grid, expand_study_dir
from wgtune.tracking.records import STUDY_VIEW_KEY, CellRecord
from wgtune.tracking.selection import DEFAULT_RULE, SELECTION_RULES
from wgtune.tracking.spool import SPOOL_FOLDER
from wgtune.tracking.store import (
    artifact_root,
    check_tracking,
    is_local_store,
    redact,
    resolve_tracking_uri,
    runs_view_url,
    ui_address,
)
from wgtune.tracking.summary import CellSummary
from wgtune.tracking.tracker import StudyTracker
from wgtune.tracking.writer import TrackingWriteError

if TYPE_CHECKING:
    pass

Print = Callable[[str], None]


@dataclass(frozen=True)
class LaunchOptions:
    """What the CLI adds to the grid: where to track and which cluster to join."""

    tracking_uri: str | None = None
    address: str | None = None
    progress_every_s: float = LOG_SUMMARY_EVERY_S  # in a log: the least time between two progress summaries
    progress: str = "auto"  # display.PROGRESS_MODES: live on a terminal, else per-trial lines and summaries
    store_wait_s: float = 120.0  # at the end, how long a tracking store that is away gets to come back
    select: str = DEFAULT_RULE
    """Another selection rule than the study's: re-train final seeds of its choice where it differs (no search)."""


def launch(grid: Grid, options: LaunchOptions = LaunchOptions(), print_line: Print = print,
           trial_fn: Callable[..., None] | None = None) -> dict[str, CellProgress]:
    """Run every cell's remaining budget; finished trials in MLflow count, so a re-launch resumes.

    `trial_fn(config, cells)` replaces the training trial (the soak injects faults through it).
    With `options.select` another rule than the study's, it runs no search: only the final seeds of that rule's
    choice where it differs from what the study re-trained (`plan.rule_plan`), tagged with the rule.
    """
    from wgtune.spec.grid import check_study_dir

    if options.select not in SELECTION_RULES:
        raise UserError(f"--select {options.select!r} is not a selection rule; valid: {', '.join(SELECTION_RULES)}")
    plan_cells(grid)  # every cell's search space is valid, before anything is created
    check_data(grid)
    check_weights(grid)
    check_study_dir(grid)  # before the tracking check: the default store lives in the study folder
    uri = resolve_tracking_uri(grid.study_dir, options.tracking_uri)
    check_tracking(uri)
    from wgtune.run.cluster import (
        check_ray,  # Ray is imported only once the rest of the input is good
    )

    check_ray(options.address)  # seconds, where ray.init would retry for minutes
    study_dir = expand_study_dir(grid)
    tracker = StudyTracker(uri, grid.spec.study, artifact_root(study_dir) if is_local_store(uri) else None,
                           spool_dir=study_dir / SPOOL_FOLDER)
    experiment_id = tracker.experiment_id
    try:
        _recover(tracker, print_line)
        cells = _plan_launch(grid, tracker, print_line, options.select)
        print_line(headline(grid, cells, uri, study_dir))
        for line in ceiling_lines(grid, tracker.trial_runs() if has_ceilings(grid) else []):
            print_line(line)  # what the ceilings leave: the router proposes nothing past them
        for planned in cells:
            if planned.note:  # under another rule: why a cell re-trains nothing
                print_line(f"{planned.cell.label}: nothing to re-train under {options.select}: {planned.note}")
        print_line(browse_line(grid, tracker))
        if any(c.budget.has_work for c in cells):
            experiment = Experiment(grid, options.select)
            print_line("resuming the interrupted Ray experiment: finished trials are kept, running ones "
                       "continue from their last epoch" if experiment.restore else
                       f"new Ray experiment, warm-started from MLflow "
                       f"({sum(len(c.priors.observations) for c in cells if c.priors)} earlier trials as observations)")
            _run(grid, cells, tracker, experiment, options, print_line, trial_fn)
            if experiment.restore:
                # MLflow is the truth: whatever a restored experiment could not bring back (a trial
                # Tune's last snapshot missed) runs now in a new experiment, warm-started from MLflow.
                # Not for a cell this launch gave up on: a new experiment would give it a fresh failure cap.
                cells = _plan_launch(grid, tracker, print_line, options.select)
                failing = tracker.failing_cells()
                rerun = [c for c in cells if c.cell.id not in failing]
                missing = sum(c.budget.search_left + c.budget.final_left for c in rerun)
                if missing:
                    print_line(f"{missing} trial(s) not recovered by the restored experiment: running them in a "
                               "new experiment, warm-started from MLflow")
                    _run(grid, rerun, tracker, Experiment(grid, options.select), options, print_line, trial_fn)
        _summarise_cells(grid, tracker, print_line)
        record_allocation(grid, tracker)
        for planned in cells:
            tracker.close_cell(planned.cell.id)
        if not _written(tracker, options.store_wait_s, print_line):
            raise _unlogged(grid, tracker, uri)
        final = status_rows(grid, tracker)
    finally:
        tracker.close()
    print_line(
        f"next: wgtune status --grid {grid.path}   (progress per cell)\n"
        f"      wgtune report --grid {grid.path}{'' if options.select == DEFAULT_RULE else ' --select ' + options.select}"
        f"   (tables and curves over model size)\n"
        f"      wgtune ui --grid {grid.path}       (browse every trial in the MLflow UI; store: {redact(uri)})\n"
        f"      {browse_line(grid, None, uri, experiment_id)}"
    )
    return final


def browse_line(grid: Grid, tracker: StudyTracker | None, uri: str | None = None,
                experiment_id: str | None = None) -> str:
    """`browse the study: <address of its runs view>`, saying when `wgtune ui` must run first (local store)."""
    uri = uri or (tracker.uri if tracker else resolve_tracking_uri(grid.study_dir))
    experiment_id = experiment_id or (tracker.experiment_id if tracker else "")
    address = ui_address(uri)
    if address is None:
        return f"browse the study: experiment {grid.spec.study!r} (id {experiment_id}) in your tracking server's UI"
    url = runs_view_url(address, experiment_id, STUDY_VIEW_KEY)
    return f"browse the study: {url}" + (f"   (once `wgtune ui --grid {grid.path}` runs)" if is_local_store(uri) else "")


def _summarise_cells(grid: Grid, tracker: StudyTracker, print_line: Print) -> None:
    """Log every cell's summary on its parent run and save the study's runs view (the launch closes its cells)."""
    try:
        log_cell_summaries(grid, tracker, n_boot=0)  # the rows only: no need for the fits' bootstrap here
    except TrackingWriteError as err:  # a summary is a convenience: the study's trials are what must land
        print_line(f"could not log the cells' summaries to the tracking store ({err}); `wgtune report` logs them")


class Experiment:
    """The study's Ray Tune experiment, and whether the last launch into it finished.

    Tune can restore an interrupted experiment only as it was: same trials, same budgets, same
    space. So it is restored only when the last launch of the same grid was interrupted; any
    other launch starts a new experiment (a new name under the same storage), warm-started from
    MLflow. The record of the last launch lives in the study folder, whatever the storage.
    """

    def __init__(self, grid: Grid, select: str = DEFAULT_RULE) -> None:
        self.storage = grid.storage
        self.marker = grid.study_dir / "last_launch.json"
        # Another rule's launch is another experiment: neither restores the other's.
        rule = "" if select == DEFAULT_RULE else f"-{select}"
        self.fingerprint = hashlib.sha256((grid.spec.model_dump_json() + rule).encode()).hexdigest()
        self.name = f"{grid.spec.study}{rule}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        self.restore = self._interrupted()

    def _interrupted(self) -> bool:
        from wgtune.run.driver import restorable

        try:
            last = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        if last.get("fingerprint") != self.fingerprint or last.get("complete", True):
            return False
        if not restorable(self.storage, last["name"]):
            return False
        self.name = last["name"]
        return True

    def begin(self) -> None:
        self._mark(complete=False)

    def complete(self) -> None:
        self._mark(complete=True)

    def _mark(self, complete: bool) -> None:
        record = {"fingerprint": self.fingerprint, "name": self.name, "storage": self.storage, "complete": complete}
        self.marker.write_text(json.dumps(record, indent=2))


def _recover(tracker: StudyTracker, print_line: Print) -> None:
    """Upload what earlier launches could not (killed, or cut off from the tracking store)."""
    journals = tracker.recover()
    if journals:
        tracker.flush()
        print_line(f"uploaded the tracking writes of {len(journals)} earlier launch(es) that never reached "
                   f"the store (from {journals[0].parent})")


def _written(tracker: StudyTracker, wait_s: float, print_line: Print) -> bool:
    """Whether every write reached the store, giving a store that is away `wait_s` to come back."""
    tracker.flush()
    if not tracker.pending():
        return True
    print_line(f"the tracking store is not answering: waiting up to {wait_s:g} s for it "
               f"({len(tracker.pending())} writes kept in {tracker.spool_path})")
    deadline = time.monotonic() + wait_s
    while True:
        tracker.retry_pending()
        tracker.flush()
        if not tracker.pending():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _unlogged(grid: Grid, tracker: StudyTracker, uri: str) -> UserError:
    """The study trained, but the store is away: say where its results wait and how they get in."""
    return UserError(
        f"the study's trials ran, but the MLflow store {redact(uri)} stopped answering "
        f"({tracker.pending()[0].error}): {len(tracker.pending())} tracking write(s) are kept in "
        f"{tracker.spool_path}. Nothing is lost: run `wgtune launch --grid {grid.path}` again once the "
        "store is back, and it uploads them before anything else (finished trials are not re-run).")


def _plan_launch(grid: Grid, tracker: StudyTracker, print_line: Print, select: str = DEFAULT_RULE
                 ) -> list[PlannedCell]:
    """Close what a dead driver left RUNNING, then plan every cell from MLflow (under selection rule `select`)."""
    closed = tracker.close_orphans()
    if closed:
        print_line(f"closed {len(closed)} trial run(s) left RUNNING by an interrupted launch as KILLED")
    return prepare(grid, tracker, select=select)


def _run(grid: Grid, cells: list[PlannedCell], tracker: StudyTracker, experiment: Experiment,
         options: LaunchOptions, print_line: Print, trial_fn: Callable[..., None] | None = None) -> None:
    """Run (or restore) `experiment` until every cell's remaining work is done; record its completion."""
    from wgtune.run.driver import (  # Ray is imported only when a study runs
        RunSettings,
        run_experiment,
    )

    if not experiment.restore:  # a new experiment: every cell it runs starts with a fresh failure cap
        tracker.clear_failing(c.cell.id for c in cells if c.budget.has_work)
    # A rule's re-training searches nothing: the priors.json of the search that ran stays the cell's.
    record_priors(tracker, cells, experiment.restore or options.select != DEFAULT_RULE)
    settings = RunSettings.for_grid(grid, experiment.name, storage=experiment.storage, restore=experiment.restore,
                                    address=options.address, progress_every_s=options.progress_every_s,
                                    progress=options.progress)
    experiment.begin()
    run_experiment(cells, tracker, settings, print_line, trial_fn)
    experiment.complete()


def record_priors(tracker: StudyTracker, cells: list[PlannedCell], restore: bool) -> int:
    """Log each cell's `priors.json` from the plans a new experiment's router is built from; returns how
    many. A restored experiment's router comes back from Tune's state, so the priors.json of the launch
    that made it stays, true (issue 13, defect 8: a restore wrote fresh priors its router never used)."""
    if restore:
        return 0
    chosen = [c for c in cells if c.budget.has_work and c.priors is not None]
    for planned in chosen:
        tracker.log_cell_json(planned.cell.id, "priors.json", planned.priors.describe())
    return len(chosen)


def check_weights(grid: Grid) -> dict[str, str]:
    """Every pretrained cell's weights are on this machine: the source each will load, by cell id, or one
    message naming the model, what was asked for, and which sizes or tags have weights."""
    from trainables.models import PretrainedWeightsError, check_pretrained

    sources = {}
    for cell in grid.cells():
        if cell.pretrained:
            try:
                sources[cell.id] = check_pretrained(cell.model, grid.weights(cell))
            except PretrainedWeightsError as err:
                raise UserError(f"{grid.path}: weights: {err}") from None
    return sources


def check_data(grid: Grid) -> None:
    """Every data set of the grid is on disk, or one message naming the grid's data_root."""
    from trainables.datasets import DataNotFoundError, check_dataset

    for dataset in grid.dataset_names():
        try:
            check_dataset(dataset, grid.data_root)
        except DataNotFoundError as err:
            raise UserError(f"{grid.path}: data_root: {err}") from None


def prepare(grid: Grid, tracker: StudyTracker, register: bool = True, select: str = DEFAULT_RULE) -> list[PlannedCell]:
    """Every cell's plan with its budget left and its priors, from what MLflow holds (`select`: `plan_cells`).

    With `register`, each cell's parent run is created (or reopened) in the store.
    """
    summaries = tracker.cell_summaries()
    cells = plan_cells(grid, summaries, select)
    records = {c.cell.id: cell_record(c) for c in cells}
    n_params = {cell_id: record.n_params for cell_id, record in records.items()}
    peers = [c.cell for c in cells]
    settings_of = {c.cell.id: fixed_settings(c) for c in cells}
    planned = []
    for c in cells:
        priors = cell_priors(c.cell, c.space, summaries, n_params, peers, grid.spec.priors, settings_of,
                             n_startup=grid.spec.search.n_startup)
        if grid.spec.search.scheduler == "asha" and c.budget.search_left:
            priors = replace(priors, curves=_curves(tracker, priors, summaries.get(c.cell.id)))
        planned.append(replace(c, priors=priors))
        if register:
            tracker.cell_run(records[c.cell.id])
    return with_ceilings(grid, planned, tracker.trial_runs() if has_ceilings(grid) else [], n_params)


def _curves(tracker: StudyTracker, priors: CellPriors, summary: CellSummary | None) -> dict[str, tuple]:
    """The early-stopping metric by epoch of the cell's observed, scored trials: ASHA's rungs in a new
    experiment start from them (`search.scheduler.CellASHA`)."""
    from trainables.metrics import STEP_METRIC

    scored = {o.run_id for o in (summary.observations if summary else ()) if not o.failed}
    return tracker.metric_histories([r for r in priors.observed_runs if r in scored], STEP_METRIC)


def priors_report(grid: Grid, tracking_uri: str | None = None, cell_filter: str | None = None) -> str:
    """What a launch would start each cell from (JSON per cell); starts nothing, writes nothing."""
    with existing_study(grid, tracking_uri) as tracker:
        cells = prepare(grid, tracker, register=False)
    chosen = [c for c in cells if cell_filter is None or fnmatch.fnmatchcase(c.cell.id, cell_filter)]
    if not chosen:
        raise UserError(f"no cell of {grid.path} matches {cell_filter!r}; cells: {', '.join(c.cell.id for c in cells)}")
    return "\n".join(json.dumps(c.priors.describe(), indent=2) for c in chosen if c.priors is not None)


def status(grid: Grid, tracking_uri: str | None = None, max_lines: int | None = 60,
           spend: Mapping[str, CellSpend] | None = None) -> str:
    """The launch's view of the study from MLflow alone (Ray is not started, torch not imported): in at most
    `max_lines` lines (`progress.study_view`), or every cell (`progress.render`) with None. `spend`: the
    compute accounting's spend and ETA per cell id (`progress.STUDY` for the study), shown when given."""
    uri = resolve_tracking_uri(grid.study_dir, tracking_uri)
    with existing_study(grid, tracking_uri) as tracker:
        summaries = tracker.cell_summaries()
        plans = plan_cells(grid, summaries)  # once: the rows and adaptive allocation's lines read the same plan
        rows = status_rows(grid, tracker, summaries, plans)
        browse = browse_line(grid, tracker)
        allocation = allocation_lines(grid, plans)
        ceilings = ceiling_lines(grid, tracker.trial_runs() if has_ceilings(grid) else [])
    title = f"study {grid.spec.study} ({redact(uri)})"
    extra = [*allocation, *ceilings, browse]
    if max_lines is None:
        return "\n".join([render(rows.values(), title=title, spend=spend), *extra])
    return "\n".join([title, *study_view(rows.values(), max_lines=max_lines, spend=spend), *extra])


def status_rows(grid: Grid, tracker: StudyTracker, summaries: Mapping[str, CellSummary] | None = None,
                plans: Sequence[PlannedCell] | None = None) -> dict[str, CellProgress]:
    """One progress row per cell of the grid, counted from the tracking store through the plan (`summaries`
    and `plans`: those already read and made from it)."""
    summaries = tracker.cell_summaries() if summaries is None else summaries
    failing = tracker.failing_cells()
    rows = {}
    for planned in plan_cells(grid, summaries) if plans is None else plans:
        s = summaries.get(planned.cell.id)
        rows[planned.cell.id] = CellProgress.of(
            planned.cell, planned.budget,
            running=s.running if s else 0, failed=s.failed if s else 0, best=s.best_value if s else None,
            failing=planned.cell.id in failing, allocation=planned.allocation.action if planned.allocation else "")
    return rows


def cell_parameters(planned: PlannedCell) -> int:
    """The cell's parameter count at the input size and class count it trains with (a ViT's position
    embedding depends on the size); needs no pretrained weights."""
    from trainables.config import TrialConfig
    from trainables.datasets import DATASETS
    from trainables.models import count_parameters, resolve
    from trainables.training import resolve_preprocessing

    cell = planned.cell
    prep = resolve_preprocessing(resolve(cell.model), cell.dataset, TrialConfig.from_mapping(planned.base_config))
    return count_parameters(cell.model, DATASETS.get(cell.dataset).n_classes, prep.image_size)


def cell_record(planned: PlannedCell) -> CellRecord:
    """What the tracking store records about a cell: its parameter count (`cell_parameters`), the pretrained
    weights it loads, and what it trains."""
    from trainables.models import check_pretrained

    cell = planned.cell
    weights = check_pretrained(cell.model, planned.base_config["weights"]) if cell.pretrained else ""
    setting = cell_setting(planned)
    return CellRecord.of(cell, cell_parameters(planned), weights, registered_objective=setting["objective"],
                         environments=setting["environments"], sampler=setting["sampler"])


def headline(grid: Grid, cells: list[PlannedCell], uri: str, study_dir: Path) -> str:
    remaining = sum(c.budget.search_left for c in cells)
    finals = sum(c.budget.final_left for c in cells)
    return (
        f"study {grid.spec.study}: {len(cells)} cells, {remaining} search trials and {finals} final-seed "
        f"trials to run; "
        f"results in {study_dir} (MLflow: {redact(uri)})"
    )

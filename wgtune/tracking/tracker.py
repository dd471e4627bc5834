"""A study's record in MLflow: experiment = study, parent run = cell, child run = trial.

The driver is the only writer (docs/design.md, decision 3). `StudyTracker` makes every MlflowClient
call on one background thread (`tracking_writer.StoreWriter`): per-epoch metrics are buffered
and written in batches across trials, so the Ray driver's event loop never waits on SQLite.

A trial is known by a *handle* (`trial:<trial_id>`) from `start_trial` on: its run is created
by a queued write, since MLflow's run ids are made by the store and waiting for one would hold
Tune's event loop (6-30 ms per trial, bench/tracking_overhead.py) or, while the tracking server
is away, stop the study. With a spool folder every write is journalled first
(`tracking_spool`), so writes a dead or cut-off driver never made are uploaded by the next
launch (`recover`).
"""

from __future__ import annotations

import atexit
import functools
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar

from trainables.metrics import BEST_TEST_WORST, SELECTION_METRIC
from wgtune.spec.errors import UserError
from wgtune.tracking.records import (
    CELL_METRICS,
    CELL_TAG,
    END_STATUSES,
    ERROR_TAG,
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_KIND_TRAINING,
    FAILING_TAG,
    KIND_CELL,
    KIND_STUDY,
    KIND_TAG,
    KIND_TRIAL,
    PARENT_RUN_TAG,
    PHASE_SEARCH,
    PHASE_TAG,
    PROPOSAL_TAG,
    RUN_NAME_TAG,
    RUN_STATUSES,
    SELECT_TAG,
    SHARED_VIEW_TAG_PREFIX,
    STUDY_VIEW_KEY,
    TAG_VALUE_LIMIT,
    TRIAL_ID_TAG,
    CellRecord,
    TrialRecord,
    Write,
    WriteKind,
    is_handle,
    loggable_params,
    metric_rows,
    now_ms,
    run_number_key,
    trial_handle,
    trial_record,
    trial_run_name,
)
from wgtune.tracking.spool import Spool, read_spools
from wgtune.tracking.store import redact, sqlite_path
from wgtune.tracking.summary import CellSummary, summarise
from wgtune.tracking.writer import MAX_PARAMS_TAGS_PER_BATCH, PendingWrite, StoreWriter, TrackingWriteError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

T = TypeVar("T")


@dataclass
class _OpenCell:
    """A cell whose parent run this tracker has found or made, and its trials' runs."""

    record: CellRecord
    parent_run_id: str
    trials: dict[str, str] = field(default_factory=dict)  # trial_id -> run id, or handle while being made
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # trial runs per `records.run_number_key`


class StudyTracker:
    """Logs a study to MLflow: get or create its experiment, a parent run per cell, a child run per trial.

    Public methods are thread-safe; only `__init__`, `cell_run`, `close_orphans`, `run_id` and
    the readers wait for the store. Trials (start, epochs, end) never do.
    """

    def __init__(self, uri: str, study: str, artifact_location: str | None = None, *,
                 spool_dir: Path | None = None, page_size: int = 1000, flush_interval_s: float = 1.0,
                 call_timeout_s: float = 60.0, max_attempts: int = 4, backoff_s: float = 0.2,
                 max_backoff_s: float = 10.0) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.study = study
        self._page_size = page_size
        self._call_timeout_s = call_timeout_s
        db = sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        self.spool_dir = spool_dir
        self._writer = StoreWriter(lambda: MlflowClient(tracking_uri=uri), flush_interval_s=flush_interval_s,
                                   max_attempts=max_attempts, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                   lookup=self._find_trial, spool=Spool(spool_dir) if spool_dir else None,
                                   step_key=SELECTION_METRIC)
        self._lock = threading.Lock()
        self._cells: dict[str, _OpenCell] = {}
        self._live: set[str] = set()
        self._last_step: dict[str, int] = {}
        # A driver that exits without close() still writes what it buffered; bounded, for outages.
        self._close_at_exit = functools.partial(self.close, 30.0)
        atexit.register(self._close_at_exit)
        try:
            self.experiment_id: str = self._call(lambda c: _experiment(c, study, artifact_location, uri))
        except BaseException:
            self.close()
            raise

    # -- cells ------------------------------------------------------------------------------

    def cell_run(self, cell: CellRecord) -> str:
        """The cell's parent run id: the one tagged `wgtune.cell=<cell_id>` if any (reopened), else a new one."""
        with self._lock:
            known = self._cells.get(cell.cell_id)
        if known is not None:
            return known.parent_run_id
        cell_filter = f"tags.`{CELL_TAG}` = {_literal(cell.cell_id)}"

        def find_or_create(client: MlflowClient) -> tuple[str, dict[str, str], Counter[tuple[str, str]]]:
            parents = self._search(client, f"tags.`{KIND_TAG}` = '{KIND_CELL}' and {cell_filter}",
                                   order_by=["attributes.start_time ASC"])
            if parents:
                parent_id = parents[0].info.run_id
                if parents[0].info.status != "RUNNING":
                    client.update_run(parent_id, status="RUNNING")
            else:
                parent_id = client.create_run(self.experiment_id, tags=cell.tags(),
                                              run_name=cell.run_name).info.run_id
            trials = self._search(client, f"tags.`{KIND_TAG}` = '{KIND_TRIAL}' and {cell_filter}")
            index = {run.data.tags.get(TRIAL_ID_TAG, ""): run.info.run_id for run in trials}
            return parent_id, index, Counter(run_number_key(run.data.tags) for run in trials)

        self.flush()  # a queued close_cell must land before the search that may reopen the cell
        parent_id, index, counts = self._call(find_or_create)
        with self._lock:
            self._cells.setdefault(cell.cell_id, _OpenCell(cell, parent_id, index, counts))
        return parent_id

    def close_cell(self, cell_id: str) -> None:
        """Mark the cell's parent run FINISHED (after the trial writes queued before); `cell_run` reopens it."""
        parent_id = self._cell(cell_id).parent_run_id
        with self._lock:
            self._cells.pop(cell_id, None)
        self._writer.add(Write(WriteKind.TERMINATE, parent_id, ("FINISHED", now_ms())))

    def log_cell_json(self, cell_id: str, artifact_file: str, data: Any) -> None:
        """Queue `data` as a JSON artifact of the cell's parent run (the priors the cell used, say)."""
        parent_id = self._cell(cell_id).parent_run_id
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
        self._writer.add(Write(WriteKind.TEXT, parent_id, (artifact_file, text)))

    def mark_failing(self, cell_id: str, failures: int) -> None:
        """Queue the tag that says this launch gave up on the cell (`wgtune status` shows it)."""
        parent_id = self._cell(cell_id).parent_run_id
        self._writer.add(Write(WriteKind.TAGS, parent_id, ((FAILING_TAG, f"gave up after {failures} failed trials"),)))

    def failing_cells(self) -> set[str]:
        """The cells the last launch that ran them gave up on (`mark_failing`, not cleared since)."""
        return {cell for cell, tags in self.cell_tags().items() if FAILING_TAG in tags}

    def clear_failing(self, cell_ids: Iterable[str]) -> None:
        """Remove the failing tag of these cells: a new experiment gives each a fresh failure cap."""
        tagged = self.failing_cells()
        parents = [self._cell(cell).parent_run_id for cell in cell_ids if cell in tagged]

        def clear(client: MlflowClient) -> None:
            for parent_id in parents:
                client.delete_tag(parent_id, FAILING_TAG)

        if parents:
            self._call(clear)

    def cell_tags(self) -> dict[str, dict[str, str]]:
        """Every cell's parent-run tags (dataset, model, parameter count, ...), by cell id."""
        self.flush()
        parents = self._call(lambda c: self._search(c, f"tags.`{KIND_TAG}` = '{KIND_CELL}'",
                                                    order_by=["attributes.start_time ASC"]))
        tags: dict[str, dict[str, str]] = {}
        for run in parents:
            tags.setdefault(run.data.tags.get(CELL_TAG, ""), dict(run.data.tags))
        return tags

    def log_cell_metrics(self, values: Mapping[str, Mapping[str, float]]) -> list[str]:
        """Log each cell's summary (`CELL_METRICS`, by cell id) on its parent run, so the runs table shows
        and sorts cells by it; returns the cells that have no parent run (nothing logged for them)."""
        self.flush()
        stamp = now_ms()

        def log(client: MlflowClient) -> list[str]:
            from mlflow.entities import Metric

            parents: dict[str, str] = {}
            query = f"tags.`{KIND_TAG}` = '{KIND_CELL}'"
            for run in self._search(client, query, order_by=["attributes.start_time ASC"]):
                parents.setdefault(run.data.tags.get(CELL_TAG, ""), run.info.run_id)
            for cell_id, metrics in values.items():
                if cell_id in parents and metrics:
                    rows = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
                    client.log_batch(parents[cell_id], metrics=rows)
            return [cell_id for cell_id in values if cell_id not in parents]

        return self._call(log)

    def publish_view(self) -> None:
        """Save the study's runs-table view on its experiment (`STUDY_VIEW_KEY`): the cells' summary metrics and
        their trials' selection and test metrics as the first columns, rows sorted by cell so that every
        trial is in sight without unfolding its cell. `wgtune.tracking.store.runs_view_url`
        opens it."""
        self.flush()

        def publish(client: MlflowClient) -> None:
            columns = [_column("metrics", m) for m in (*CELL_METRICS, SELECTION_METRIC, BEST_TEST_WORST)]
            # Columns listed first (the grid draws only the columns in sight). Rows sorted by cell: a shared view
            # cannot carry unfolded rows (MLflow drops `runsExpanded` from it), and any sort but by date shows
            # child runs flat, so each cell's run and its trials' runs stand together with nothing to unfold.
            view: dict[str, Any] = {"selectedColumns": columns, "columnOrder": columns,
                                    "orderByKey": _column("tags", CELL_TAG), "orderByAsc": True}
            client.set_experiment_tag(self.experiment_id, SHARED_VIEW_TAG_PREFIX + STUDY_VIEW_KEY, json.dumps(view))

        self._call(publish)

    def log_study_files(self, run_name: str, files: Iterable[Path], folder: str) -> str:
        """Log files as artifacts of the study-level run `run_name` (made once, then reused)."""
        files = list(files)

        def log(client: MlflowClient) -> str:
            found = self._search(client, f"tags.`{KIND_TAG}` = '{KIND_STUDY}' and tags.`{RUN_NAME_TAG}` = {_literal(run_name)}")
            run_id = found[0].info.run_id if found else client.create_run(
                self.experiment_id, tags={KIND_TAG: KIND_STUDY}, run_name=run_name).info.run_id
            for path in files:
                client.log_artifact(run_id, str(path), folder)
            client.set_terminated(run_id, "FINISHED")
            return run_id

        self.flush()
        return self._call(log)

    # -- trials -----------------------------------------------------------------------------

    def start_trial(self, cell_id: str, trial_id: str, params: Mapping[str, Any], proposal: str,
                    phase: str = PHASE_SEARCH, rule: str = "", tags: Mapping[str, str] | None = None) -> str:
        """The trial's handle for `log_epoch` / `end_trial`; its run is made (or reopened) by a queued write, never
        waiting for the store. `rule`: a final seed's rule if not the study's (`SELECT_TAG`); `tags`: a new run's extra."""
        cell = self._cell(cell_id)
        _literal(trial_id)
        handle = trial_handle(trial_id)
        tags = {**(tags or {}), PARENT_RUN_TAG: cell.parent_run_id, KIND_TAG: KIND_TRIAL, CELL_TAG: cell_id,
                TRIAL_ID_TAG: trial_id, PROPOSAL_TAG: proposal, PHASE_TAG: phase, **({SELECT_TAG: rule} if rule else {})}
        with self._lock:
            existing = cell.trials.get(trial_id)
            if existing is None:
                cell.trials[trial_id] = handle
                number = cell.counts[run_number_key(tags)] = cell.counts[run_number_key(tags)] + 1
            self._live.add(handle)
        if existing is not None:
            if not is_handle(existing):
                self._writer.known(handle, existing)
            self._writer.reopened(handle)
            self._writer.add(Write(WriteKind.STATUS, handle, ("RUNNING",)))
            return handle
        name = trial_run_name(cell.record.run_name, number, phase, rule)
        self._writer.add(Write(WriteKind.CREATE, handle, (self.experiment_id, tuple(sorted(tags.items())), name, now_ms())))
        items = sorted(loggable_params(params).items())
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = items[start:start + MAX_PARAMS_TAGS_PER_BATCH]
            self._writer.add(Write(WriteKind.PARAMS, handle, tuple(chunk)))
        return handle

    def run_id(self, handle: str) -> str | None:
        """The MLflow run id of a trial handle, once the queued writes before it are made (None if not)."""
        self.flush()
        return self._writer.resolve(handle)

    def log_epoch(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        """Buffer one epoch's metrics (non-numbers are skipped); written within `flush_interval_s`."""
        self._writer.add_metrics(run_id, metric_rows(run_id, metrics, int(step)))
        with self._lock:
            self._last_step[run_id] = max(int(step), self._last_step.get(run_id, int(step)))

    def end_trial(self, run_id: str, status: str, error: str | None = None,
                  summary: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Queue the trial's end: `summary` as metrics, `tags`, an error (tag `wgtune.error` + `error.txt`),
        its status. The error is recorded whenever given, FAILED or not."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {', '.join(END_STATUSES)}, not {status!r}")
        end_ms = now_ms()
        with self._lock:
            step = self._last_step.pop(run_id, 0)
            self._live.discard(run_id)
        if summary:
            # At the last epoch's step, so that MLflow shows the summary as each key's latest value.
            self._writer.add_metrics(run_id, metric_rows(run_id, summary, step))
        if tags:
            self._writer.add(Write(WriteKind.TAGS, run_id, tuple(sorted((k, str(v)) for k, v in tags.items()))))
        if error:
            short = error if len(error) <= TAG_VALUE_LIMIT else error[:TAG_VALUE_LIMIT - 20] + "… (see error.txt)"
            self._writer.add(Write(WriteKind.TAGS, run_id, ((ERROR_TAG, short),)))
            self._writer.add(Write(WriteKind.TEXT, run_id, ("error.txt", error)))
        self._writer.add(Write(WriteKind.TERMINATE, run_id, (status, end_ms)))

    def close_orphans(self, keep: Iterable[str] = ()) -> list[str]:
        """Mark KILLED the trial runs left RUNNING (by a crashed driver) that are not in `keep` nor live here."""
        self.flush()  # runs being made or reopened are live, not orphans
        with self._lock:
            live = set(self._live)
        spared = set(keep) | {self._writer.resolve(h) or h for h in live}

        def kill(client: MlflowClient) -> list[str]:
            running = self._search(client, f"tags.`{KIND_TAG}` = '{KIND_TRIAL}' and attributes.status = 'RUNNING'")
            orphans = [run.info.run_id for run in running if run.info.run_id not in spared]
            for run_id in orphans:
                client.set_terminated(run_id, "KILLED")
            return orphans

        return self._call(kill)

    # -- reading ----------------------------------------------------------------------------

    def trial_runs(self, cell_id: str | None = None, status: str | None = None) -> list[TrialRecord]:
        """The study's trial runs (of one cell, of one status), oldest first, after writing what is queued."""
        query = f"tags.`{KIND_TAG}` = '{KIND_TRIAL}'"
        if cell_id is not None:
            query += f" and tags.`{CELL_TAG}` = {_literal(cell_id)}"
        if status is not None:
            if status not in RUN_STATUSES:
                raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
            query += f" and attributes.status = '{status}'"
        self.flush()
        runs = self._call(lambda c: self._search(c, query, order_by=["attributes.start_time ASC"]))
        return [trial_record(run) for run in runs]

    def metric_histories(self, run_ids: Iterable[str], key: str) -> dict[str, tuple[tuple[int, float], ...]]:
        """Per run, every (step, value) it logged of metric `key`, by step (runs without any are left out)."""
        run_ids = list(run_ids)

        def read(client: MlflowClient) -> dict[str, tuple[tuple[int, float], ...]]:
            found = {}
            for run_id in run_ids:
                points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
                if points:
                    found[run_id] = tuple(points)
            return found

        self.flush()
        return self._call(read) if run_ids else {}

    def cell_summaries(self, metric: str = SELECTION_METRIC, mode: str = "max") -> dict[str, CellSummary]:
        """Per cell, what MLflow holds of it (`summary.summarise`), after writing what is queued."""
        trials = self.trial_runs()
        parents = self._call(lambda c: self._search(c, f"tags.`{KIND_TAG}` = '{KIND_CELL}'",
                                                    order_by=["attributes.start_time ASC"]))
        parent_ids: dict[str, str] = {}
        for run in parents:
            parent_ids.setdefault(run.data.tags.get(CELL_TAG, ""), run.info.run_id)
        return summarise(trials, parent_ids, metric, mode)

    # -- the writer -------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written (or given up on); False on timeout."""
        return self._writer.flush(timeout)

    def pending(self) -> list[PendingWrite]:
        """Writes waiting for the store to come back (retried by themselves), oldest first."""
        return self._writer.pending()

    def rejected(self) -> list[PendingWrite]:
        """Writes the store refused for good (bad requests), oldest first."""
        return self._writer.rejected()

    def retry_pending(self) -> int:
        """Retry the waiting writes now rather than after their back-off; returns how many wait."""
        return self._writer.retry_pending()

    @property
    def spool_path(self) -> Path | None:
        """This tracker's journal: where writes the store has not taken are kept on disk."""
        return self._writer.spool_path

    def recover(self) -> list[Path]:
        """Queue what earlier drivers journalled but never wrote (killed, or cut off from the store),
        oldest first, ahead of this tracker's own writes; returns the journals taken over.

        Replaying is safe when part of it was written: MLflow keeps one copy of a repeated metric
        point, a create first looks for the trial's run, and statuses end as they ended then.
        """
        if self.spool_dir is None:
            return []
        taken = []
        for unwritten in read_spools(self.spool_dir):
            for handle, run_id in unwritten.runs.items():
                self._writer.known(handle, run_id)
            for write in unwritten.writes:
                if write.kind == WriteKind.METRICS:
                    self._writer.add_metrics(write.run_id, list(write.payload))  # rows are tuples already
                else:
                    self._writer.add(write, replayed=True)
            # Journalled again by this tracker's own spool, so the old file can go.
            unwritten.path.unlink(missing_ok=True)
            taken.append(unwritten.path)
        return taken

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued and stop the writer thread. Idempotent."""
        atexit.unregister(self._close_at_exit)
        self._writer.close(timeout)

    def __enter__(self) -> StudyTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cell(self, cell_id: str) -> _OpenCell:
        with self._lock:
            cell = self._cells.get(cell_id)
        if cell is None:
            raise KeyError(f"unknown cell {cell_id!r}: call cell_run() for it first")
        return cell

    def _call(self, action: Callable[[MlflowClient], T]) -> T:
        try:
            return self._writer.call(action, self._call_timeout_s)
        except (UserError, TrackingWriteError, KeyError, ValueError):
            raise
        except Exception as err:
            raise TrackingWriteError(f"MLflow store {redact(self.uri)}: {err}") from err

    def _find_trial(self, client: MlflowClient, handle: str) -> str | None:
        """The run of a trial handle in the store (a resumed trial; a create that may have been made)."""
        trial_id = handle.split(":", 1)[1]
        found = client.search_runs([self.experiment_id],
                                   f"tags.`{KIND_TAG}` = '{KIND_TRIAL}' and tags.`{TRIAL_ID_TAG}` = {_literal(trial_id)}",
                                   max_results=1, order_by=["attributes.start_time ASC"])
        return found[0].info.run_id if found else None

    def _search(self, client: MlflowClient, query: str, order_by: list[str] | None = None) -> list[Run]:
        """Every run of the study matching `query`, page after page."""
        runs: list[Run] = []
        token: str | None = None
        while True:
            page = client.search_runs([self.experiment_id], query, max_results=self._page_size,
                                      order_by=order_by, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs


def _experiment(client: MlflowClient, study: str, artifact_location: str | None, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        try:
            return client.create_experiment(study, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_TRAINING})
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":  # else another process just made it
                raise
            experiment = client.get_experiment_by_name(study)
            assert experiment is not None
    if experiment.lifecycle_stage != "deleted" and experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND_TRAINING:
        # A study is model training: MLflow 3's UI then opens it on its training views, not GenAI ones.
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"the MLflow experiment {study!r} in {redact(uri)} is deleted: restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`), "
            "remove it for good (`mlflow gc`), or give the study another name")
    return experiment.experiment_id


def _column(kind: str, key: str) -> str:
    """A runs-table column as MLflow's UI names it (`makeCanonicalSortKey`): metrics.`best/val_worst_acc`."""
    return f"{kind}.`{key}`"


def _literal(value: str) -> str:
    """A quoted value for a search filter; MLflow's filter grammar has no escape for quotes."""
    if "'" in value or '"' in value:
        raise ValueError(f"ids used in MLflow search filters cannot contain quotes: {value!r}")
    return f"'{value}'"



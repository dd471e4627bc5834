"""The one thread that talks to the MLflow store: a queue in, batched writes out, retried in order.

Every MlflowClient call of a `StudyTracker` runs here, so SQLite sees a single writer and the
Ray driver's event loop never waits on the store: not for per-epoch logging, not for a new
trial's run, not while the tracking server is away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from wgtune.tracking.records import Write, WriteKind, is_handle

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from wgtune.tracking.spool import Spool

T = TypeVar("T")
Action = Callable[["MlflowClient"], Any]

_log = logging.getLogger(__name__)

# MLflow's per-call limits (mlflow.utils.validation); a store rejects larger batches.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100

# Error codes that no retry can fix: retrying them only delays the writes behind them.
_PERMANENT_ERROR_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST",
})


class TrackingWriteError(RuntimeError):
    """A synchronous tracking call (read runs, a cell's parent run) failed after its retries."""


class UnknownRunError(RuntimeError):
    """A write names a trial handle whose run was never created (its create was refused for good)."""


@dataclass(frozen=True)
class PendingWrite:
    """A write the store did not take, with the store's last error."""

    write: Write
    error: str


def apply(client: MlflowClient, write: Write, run_id: str) -> None:
    """Make `write` to run `run_id` (its handle resolved) with `client`, on the writer thread."""
    from mlflow.entities import Metric, Param, RunTag

    payload = write.payload
    if write.kind == WriteKind.METRICS:
        client.log_batch(run_id, metrics=[Metric(*row) for row in payload], synchronous=True)
    elif write.kind == WriteKind.PARAMS:
        client.log_batch(run_id, params=[Param(k, v) for k, v in payload], synchronous=True)
    elif write.kind == WriteKind.TAGS:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in payload], synchronous=True)
    elif write.kind == WriteKind.TEXT:
        client.log_text(run_id, payload[1], payload[0])
    elif write.kind == WriteKind.STATUS:
        client.update_run(run_id, status=payload[0])
    elif write.kind == WriteKind.TERMINATE:
        client.set_terminated(run_id, payload[0], end_time=payload[1])
    else:
        raise ValueError(f"unknown write kind {write.kind!r}")


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt may succeed (a locked database, a server away), not a bad request."""
    if isinstance(error, UnknownRunError):
        return False
    code = getattr(error, "error_code", None)
    return code not in _PERMANENT_ERROR_CODES


@dataclass
class _Item:
    """A queued write, the journal ids it carries, and whether an attempt at it has failed."""

    write: Write
    ids: tuple[int, ...]
    tried: bool = False


class StoreWriter:
    """Runs every store call on one daemon thread; metrics are buffered and written in batches.

    Three kinds of work. *Calls* (the caller waits for the result: reading runs, a cell's parent
    run) run first, and again before each write, so a caller waits for one write at most. Each
    cycle (every `flush_interval_s`, or on `flush`) then writes, in order: new trial runs, the
    buffered *metrics* (one `log_batch` per run), the ordered *writes* (params, tags, ends).

    Writes may name a trial *handle* (`trial_handle(trial_id)`) instead of a run id: the run is
    created by a queued "create" write, so starting a trial never waits for the store.

    When a write fails after its retries, it and every write after it wait, in order, in a
    *backlog*, retried every few seconds (exponential back-off up to `max_backoff_s`) until the
    store is back. With a `spool`, every write is journalled before it is queued and acknowledged
    once written, so a later launch can replay what a killed driver never wrote.
    """

    def __init__(
        self,
        client_factory: Callable[[], MlflowClient],
        *,
        flush_interval_s: float = 1.0,
        max_attempts: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        max_buffered_metrics: int = 5000,
        lookup: Callable[[MlflowClient, str], str | None] | None = None,
        spool: Spool | None = None,
        step_key: str | None = None,
        name: str = "wgtune-tracking-writer",
    ) -> None:
        self._client_factory = client_factory
        self._client: MlflowClient | None = None
        self._flush_interval_s = flush_interval_s
        self._max_attempts = max(1, max_attempts)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_buffered_metrics = max_buffered_metrics
        self._lookup = lookup
        self._spool = spool
        self._cond = threading.Condition()
        self._calls: deque[tuple[Action, Future[Any]]] = deque()
        self._metrics: dict[str, list[tuple[str, float, int, int]]] = {}
        self._metric_ids: dict[str, list[int]] = {}
        self._n_metrics = 0
        self._writes: list[_Item] = []
        self._backlog: list[_Item] = []
        self._backlog_error = ""
        self._retry_at = 0.0
        self._retry_delay = backoff_s
        self._rejected: list[PendingWrite] = []
        self._runs: dict[str, str] = {}  # trial handle -> MLflow run id
        self._step_key = step_key
        self._reopened: set[str] = set()
        self._floors: dict[str, int] = {}  # reopened handle -> last step its run already had
        self._next_id = 0
        self._seq = 0
        self._done_seq = 0
        self._flush_requested = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- called from any thread -------------------------------------------------------------

    def call(self, action: Callable[[MlflowClient], T], timeout: float | None = None) -> T:
        """Run `action(client)` on the writer thread (before any buffered write) and return its result."""
        future: Future[T] = Future()
        with self._cond:
            self._check_open()
            self._calls.append((action, future))
            self._cond.notify_all()
        try:
            return future.result(timeout)
        except TimeoutError as err:
            # A call still queued is dropped; one already running completes but nobody waits.
            future.cancel()
            raise TrackingWriteError(f"the tracking store did not answer within {timeout:g} s") from err

    def add_metrics(self, run_id: str, metrics: list[tuple[str, float, int, int]]) -> None:
        """Buffer (key, value, timestamp_ms, step) tuples for `run_id`; written at the next cycle."""
        if not metrics:
            return
        with self._cond:
            self._check_open()
            write_id = self._journal(Write(WriteKind.METRICS, run_id, tuple(metrics)))
            self._metrics.setdefault(run_id, []).extend(metrics)
            self._metric_ids.setdefault(run_id, []).append(write_id)
            self._n_metrics += len(metrics)
            self._seq += 1
            if self._n_metrics >= self._max_buffered_metrics:
                self._cond.notify_all()

    def add(self, write: Write, replayed: bool = False) -> None:
        """Queue an ordered write; it runs after the metrics buffered before it.

        `replayed`: from a dead writer's journal, so the store may have it already.
        """
        with self._cond:
            self._check_open()
            self._writes.append(_Item(write, (self._journal(write),), tried=replayed))
            self._seq += 1

    def known(self, handle: str, run_id: str) -> None:
        """Tell the writer which run a handle names (a trial whose run already exists)."""
        with self._cond:
            self._runs[handle] = run_id

    def reopened(self, handle: str) -> None:
        """A resumed trial: its metrics at steps its run already has are dropped, not logged twice.

        A trial restored with its experiment resumes from Tune's last recorded checkpoint, which can
        be older than the last epoch it logged before the driver died; it re-runs those epochs
        (identically on CPU: the checkpoint holds the random state), and the run keeps the first copy.
        """
        with self._cond:
            self._reopened.add(handle)
            self._floors.pop(handle, None)

    def resolve(self, run_id: str) -> str | None:
        """The MLflow run id behind a handle (None while its run is not created); a run id as is."""
        if not is_handle(run_id):
            return run_id
        with self._cond:
            return self._runs.get(run_id)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written, or waits in the backlog; False on timeout."""
        with self._cond:
            target = self._seq
            self._flush_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done_seq >= target or not self._thread.is_alive(),
                                       timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued (one last try at the backlog), then stop the thread. Idempotent."""
        with self._cond:
            self._closing = True
            self._retry_at = 0.0
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._spool is not None and not self._thread.is_alive():
            self._spool.close(keep=bool(self._backlog))

    def pending(self) -> list[PendingWrite]:
        """Writes waiting for the store to come back, oldest first, with the last error."""
        with self._cond:
            return [PendingWrite(item.write, self._backlog_error) for item in self._backlog]

    def rejected(self) -> list[PendingWrite]:
        """Writes the store refused for good (a bad request no retry can fix), oldest first."""
        with self._cond:
            return list(self._rejected)

    def retry_pending(self) -> int:
        """Try the backlog at the next cycle instead of after its back-off; returns its length."""
        with self._cond:
            self._check_open()
            self._retry_at = 0.0
            self._retry_delay = self._backoff_s
            self._seq += 1
            self._cond.notify_all()
            return len(self._backlog)

    @property
    def spool_path(self) -> Path | None:
        """The journal of this writer's writes (kept after close while the backlog is not empty)."""
        return self._spool.path if self._spool is not None else None

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("the tracking writer is closed")

    def _journal(self, write: Write) -> int:
        self._next_id += 1
        if self._spool is not None:
            self._spool.record(self._next_id, write)
        return self._next_id

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._calls or self._flush_requested or self._closing
                        or self._n_metrics >= self._max_buffered_metrics):
                    wait = self._flush_interval_s
                    if self._backlog:
                        wait = max(0.0, min(wait, self._retry_at - time.monotonic()))
                    self._cond.wait(wait)
                calls = list(self._calls)
                self._calls.clear()
                metrics, self._metrics, self._n_metrics = self._metrics, {}, 0
                metric_ids, self._metric_ids = self._metric_ids, {}
                writes, self._writes = self._writes, []
                seq = self._seq
                self._flush_requested = False
                closing = self._closing
            try:
                self._run_calls(calls)
                self._cycle(self._ordered(metrics, metric_ids, writes))
            except Exception:  # never let the thread die: a dead writer would hang every flush
                _log.exception("tracking writer: unexpected error")
            with self._cond:
                self._done_seq = max(self._done_seq, seq)
                self._cond.notify_all()
                if closing and not (self._calls or self._metrics or self._writes):
                    return

    @staticmethod
    def _ordered(metrics: dict[str, list[tuple[str, float, int, int]]], metric_ids: dict[str, list[int]],
                 writes: list[_Item]) -> list[_Item]:
        """New runs first (later writes name them), then metrics, then the other writes in order."""
        batches = []
        for run_id, rows in metrics.items():
            starts = range(0, len(rows), MAX_METRICS_PER_BATCH)
            for start in starts:
                # The journal entries are acknowledged with the run's last batch.
                ids = tuple(metric_ids.get(run_id, ())) if start == starts[-1] else ()
                batches.append(_Item(Write(WriteKind.METRICS, run_id, tuple(rows[start:start + MAX_METRICS_PER_BATCH])), ids))
        creates = [item for item in writes if item.write.kind == WriteKind.CREATE]
        others = [item for item in writes if item.write.kind != "create"]
        return creates + batches + others

    def _cycle(self, items: list[_Item]) -> None:
        with self._cond:
            closing = self._closing
            waiting = bool(self._backlog)
            if waiting:
                self._backlog.extend(items)
            due = waiting and time.monotonic() >= self._retry_at
        if waiting and not due:
            return
        if waiting:  # the store was away: one attempt each, in order, until one fails
            left = self._drain(self._backlog, attempts=1)
            with self._cond:
                written = len(self._backlog) - len(left)
                self._backlog = left
        else:
            left = self._drain(items, attempts=1 if closing else None)
            written = 0
            with self._cond:
                self._backlog = left
        if left:
            with self._cond:
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, self._max_backoff_s)
            if not waiting:
                _log.warning("tracking: the store is not answering (%s); %d write(s) wait and are retried%s",
                             self._backlog_error, len(left), self._where())
        elif waiting:
            with self._cond:
                self._retry_delay = self._backoff_s
            _log.warning("tracking: the store is back; %d waiting write(s) written", written)

    def _drain(self, items: list[_Item], attempts: int | None) -> list[_Item]:
        """Write `items` in order; the first one the store does not take, and all after it, are returned."""
        for k, item in enumerate(items):
            self._run_calls(self._take_calls())
            try:
                self._attempt(lambda client: self._apply(client, item), item.write.description, attempts)
            except Exception as err:
                item.tried = True
                if is_retryable(err):
                    self._backlog_error = _first_line(err)
                    return items[k:]
                _log.warning("tracking: the store refused %s (run %s) for good: %s",
                             item.write.description, item.write.run_id, _first_line(err))
                with self._cond:
                    self._rejected.append(PendingWrite(item.write, _first_line(err)))
            if self._spool is not None:
                self._spool.ack(item.ids)
        return []

    def _apply(self, client: MlflowClient, item: _Item) -> None:
        write = item.write
        if write.kind != "create":
            run_id = self._run_id(client, write.run_id)
            if write.kind == WriteKind.METRICS and write.run_id in self._reopened:
                rows = self._above_floor(client, write.run_id, run_id, write.payload)
                if not rows:
                    return
                write = Write(WriteKind.METRICS, write.run_id, rows)
            apply(client, write, run_id)
            return
        with self._cond:
            if write.run_id in self._runs:  # replayed from a journal, already made
                return
        experiment_id, tags, run_name, start_ms = write.payload
        # A failed attempt may have made the run after all (a timeout over HTTP), and a replayed
        # create may have been made before its driver died: look before making another.
        run_id = self._lookup(client, write.run_id) if item.tried and self._lookup is not None else None
        if run_id is None:
            run_id = client.create_run(experiment_id, start_time=start_ms, tags=dict(tags),
                                       run_name=run_name).info.run_id
        with self._cond:
            self._runs[write.run_id] = run_id
        if self._spool is not None:
            self._spool.resolved(write.run_id, run_id)

    def _above_floor(self, client: MlflowClient, handle: str, run_id: str, rows: tuple[Any, ...]) -> tuple[Any, ...]:
        with self._cond:
            floor = self._floors.get(handle)
        if floor is None:
            history = client.get_metric_history(run_id, self._step_key) if self._step_key else []
            floor = max((m.step for m in history), default=-1)
            with self._cond:
                self._floors[handle] = floor
        return tuple(row for row in rows if row[3] > floor)

    def _run_id(self, client: MlflowClient, run_id: str) -> str:
        if not is_handle(run_id):
            return run_id
        with self._cond:
            known = self._runs.get(run_id)
        if known is None and self._lookup is not None:
            known = self._lookup(client, run_id)
            if known is not None:
                with self._cond:
                    self._runs[run_id] = known
        if known is None:
            raise UnknownRunError(f"no MLflow run for {run_id}")
        return known

    def _where(self) -> str:
        return f" (journal: {self._spool.path})" if self._spool is not None else ""

    def _run_calls(self, calls: list[tuple[Action, Future[Any]]]) -> None:
        for action, future in calls:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._attempt(action, "call"))
            except BaseException as err:  # handed to the waiting caller, not raised here
                future.set_exception(err)

    def _take_calls(self) -> list[tuple[Action, Future[Any]]]:
        with self._cond:
            calls = list(self._calls)
            self._calls.clear()
        return calls

    def _attempt(self, action: Action, description: str, attempts: int | None = None) -> Any:
        attempts = attempts or self._max_attempts
        delay = self._backoff_s
        for attempt in range(1, attempts + 1):
            try:
                if self._client is None:
                    self._client = self._client_factory()
                return action(self._client)
            except Exception as err:
                if attempt == attempts or not is_retryable(err):
                    raise
                _log.info("tracking: %s failed (attempt %d/%d), retrying in %.1f s: %s",
                          description, attempt, attempts, delay, _first_line(err))
                time.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
        raise AssertionError("unreachable")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]

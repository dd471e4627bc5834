"""The one thread that talks to the MLflow store: a queue in, batched writes out, bounded retries.

Every MlflowClient call of a `StudyTracker` runs here, so SQLite sees a single writer and the
Ray driver's event loop never waits on the store for per-epoch logging.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from mlflow import MlflowClient

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
    """A synchronous tracking call (create a run, read runs) failed after its retries."""


@dataclass(frozen=True)
class Write:
    """One write to one run, as plain data, so that a disk spool can save and replay it.

    kind and payload: "metrics" ((key, value, timestamp_ms, step), ...), "params" ((key, value), ...),
    "tags" ((key, value), ...), "text" (artifact_file, text), "status" (status,) to reopen a run,
    "terminate" (status, end_time_ms).
    """

    kind: str
    run_id: str
    payload: tuple[Any, ...]

    @property
    def description(self) -> str:
        """A few words for logs: `22 metrics`, `terminate FINISHED`."""
        if self.kind in ("metrics", "params", "tags"):
            return f"{len(self.payload)} {self.kind}"
        return f"{self.kind} {self.payload[0]}"


@dataclass(frozen=True)
class PendingWrite:
    """A write the store refused after every retry, kept so that it can be replayed later."""

    write: Write
    error: str


def apply(client: MlflowClient, write: Write) -> None:
    """Make `write` with `client` (on the writer thread)."""
    from mlflow.entities import Metric, Param, RunTag

    run_id, payload = write.run_id, write.payload
    if write.kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(*row) for row in payload], synchronous=True)
    elif write.kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in payload], synchronous=True)
    elif write.kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in payload], synchronous=True)
    elif write.kind == "text":
        client.log_text(run_id, payload[1], payload[0])
    elif write.kind == "status":
        client.update_run(run_id, status=payload[0])
    elif write.kind == "terminate":
        client.set_terminated(run_id, payload[0], end_time=payload[1])
    else:
        raise ValueError(f"unknown write kind {write.kind!r}")


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt may succeed (a locked database, a server away), not a bad request."""
    code = getattr(error, "error_code", None)
    return code not in _PERMANENT_ERROR_CODES


class StoreWriter:
    """Runs every store call on one daemon thread; metrics are buffered and written in batches.

    Three kinds of work. *Calls* (the caller waits for the result: creating a run, reading runs)
    run first, and again before each write, so a caller waits for one write at most. Each cycle
    (every `flush_interval_s`, or on `flush`) then writes the buffered *metrics* (one `log_batch`
    per run, all runs of the cycle together), then the ordered *writes* (params, tags, ends).
    """

    def __init__(
        self,
        client_factory: Callable[[], MlflowClient],
        *,
        flush_interval_s: float = 1.0,
        max_attempts: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        max_buffered_metrics: int = 5000,
        name: str = "wgtune-tracking-writer",
    ) -> None:
        self._client_factory = client_factory
        self._client: MlflowClient | None = None
        self._flush_interval_s = flush_interval_s
        self._max_attempts = max(1, max_attempts)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_buffered_metrics = max_buffered_metrics
        self._cond = threading.Condition()
        self._calls: deque[tuple[Action, Future[Any]]] = deque()
        self._metrics: dict[str, list[tuple[str, float, int, int]]] = {}
        self._n_metrics = 0
        self._writes: list[Write] = []
        self._pending: list[PendingWrite] = []
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
        with self._cond:
            self._check_open()
            self._metrics.setdefault(run_id, []).extend(metrics)
            self._n_metrics += len(metrics)
            self._seq += 1
            if self._n_metrics >= self._max_buffered_metrics:
                self._cond.notify_all()

    def add(self, write: Write) -> None:
        """Queue an ordered write; it runs after the metrics buffered before it."""
        with self._cond:
            self._check_open()
            self._writes.append(write)
            self._seq += 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written or given up on; False on timeout."""
        with self._cond:
            target = self._seq
            self._flush_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done_seq >= target or not self._thread.is_alive(),
                                       timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, then stop the thread. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def pending(self) -> list[PendingWrite]:
        """Writes given up on after their retries, oldest first (the seam for a disk spool)."""
        with self._cond:
            return list(self._pending)

    def retry_pending(self) -> int:
        """Queue the writes given up on again; returns how many."""
        with self._cond:
            self._check_open()
            items, self._pending = self._pending, []
            self._writes[:0] = [p.write for p in items]
            self._seq += 1
            return len(items)

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("the tracking writer is closed")

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._calls or self._flush_requested or self._closing
                        or self._n_metrics >= self._max_buffered_metrics):
                    self._cond.wait(self._flush_interval_s)
                calls = list(self._calls)
                self._calls.clear()
                metrics, self._metrics, self._n_metrics = self._metrics, {}, 0
                writes, self._writes = self._writes, []
                seq = self._seq
                self._flush_requested = False
                closing = self._closing
            try:
                self._cycle(calls, metrics, writes)
            except Exception:  # never let the thread die: a dead writer would hang every flush
                _log.exception("tracking writer: unexpected error")
            with self._cond:
                self._done_seq = max(self._done_seq, seq)
                self._cond.notify_all()
                if closing and not (self._calls or self._metrics or self._writes):
                    return

    def _cycle(self, calls: list[tuple[Action, Future[Any]]],
               metrics: dict[str, list[tuple[str, float, int, int]]], writes: list[Write]) -> None:
        self._run_calls(calls)
        batches = [Write("metrics", run_id, tuple(rows[start:start + MAX_METRICS_PER_BATCH]))
                   for run_id, rows in metrics.items()
                   for start in range(0, len(rows), MAX_METRICS_PER_BATCH)]
        # After one write exhausts its retries the store is evidently down: the rest of this
        # cycle gets one attempt each, so an outage costs seconds, not minutes per cycle.
        down = False
        for write in batches + writes:
            down = self._write(write, down)

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

    def _write(self, write: Write, down: bool) -> bool:
        self._run_calls(self._take_calls())
        try:
            self._attempt(lambda client: apply(client, write), write.description, attempts=1 if down else None)
            return down
        except Exception as err:
            _log.warning("tracking: could not write %s (run %s), kept for later: %s",
                         write.description, write.run_id, _first_line(err))
            with self._cond:
                self._pending.append(PendingWrite(write, _first_line(err)))
            return down or is_retryable(err)

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

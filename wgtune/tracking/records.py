"""What a study's MLflow runs hold: cell and trial records, and values made fit to log."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from wgtune.tracking.store import redact

if TYPE_CHECKING:
    from mlflow.entities import Run

_log = logging.getLogger(__name__)

KIND_TAG, CELL_TAG, TRIAL_ID_TAG, ERROR_TAG = "wgtune.kind", "wgtune.cell", "wgtune.trial_id", "wgtune.error"
DIVERGED_TAG = "wgtune.diverged"  # on a FAILED trial run whose loss diverged: a failed configuration, not a fault
FAILING_TAG = "wgtune.failing"  # on a cell run the last launch gave up on (too many failed trials)
OBJECTIVE_METRIC = "best/val_worst_acc"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
RUN_STATUSES = ("RUNNING", "SCHEDULED", *END_STATUSES)
# MLflow 3 accepts 8000 characters in a tag value, older servers 5000; error.txt has the rest.
TAG_VALUE_LIMIT = 5000

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")
# Parts of a parameter name that mark a secret ("max_tokens" is fine, "hf_token" is not).
_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "secret", "token", "apikey", "credential",
                           "credentials", "auth", "authorization", "cookie"})
_SECRET_SUFFIXES = ("api_key", "access_key", "secret_key", "private_key")
# Shapes of well-known tokens (OpenAI, GitHub, Hugging Face, Slack, AWS keys, JWTs).
_SECRET_VALUE = re.compile(r"^(sk-[\w-]{20,}|gh[pousr]_\w{20,}|github_pat_\w{20,}|hf_[A-Za-z0-9]{20,}"
                           r"|xox[abpr]-[\w-]{10,}|AKIA[0-9A-Z]{16}|eyJ[\w-]{10,}\.[\w-]{10,}\.)")


@dataclass(frozen=True)
class CellInfo:
    """What identifies one cell of the grid and is recorded on its parent run."""

    cell_id: str
    dataset: str
    family: str
    size: str
    model: str
    n_params: int
    objective: str
    pretrained: bool

    @property
    def run_name(self) -> str:
        """`waterbirds · resnet-18 · groupdro` (+ ` · pretrained`)."""
        parts = [self.dataset, self.model, self.objective] + (["pretrained"] if self.pretrained else [])
        return " · ".join(parts)

    def tags(self) -> dict[str, str]:
        """The parent run's tags."""
        return {KIND_TAG: "cell", CELL_TAG: self.cell_id, "wgtune.dataset": self.dataset,
                "wgtune.family": self.family, "wgtune.size": self.size, "wgtune.model": self.model,
                "wgtune.n_params": str(self.n_params), "wgtune.objective": self.objective,
                "wgtune.pretrained": str(self.pretrained).lower()}


@dataclass(frozen=True)
class TrialRecord:
    """One trial run as MLflow holds it; `metrics` are the latest value of each key."""

    run_id: str
    cell_id: str
    trial_id: str
    run_name: str
    status: str
    proposal: str
    phase: str
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    start_time_ms: int
    end_time_ms: int | None
    error: str | None
    diverged: bool = False


@dataclass(frozen=True)
class Observation:
    """A finished trial as a prior: its hyperparameters and its objective value (None if never logged).
    A diverged trial is one too, with `diverged` set: its configuration failed."""

    run_id: str
    trial_id: str
    params: Mapping[str, str]
    value: float | None
    diverged: bool = False


@dataclass(frozen=True)
class CellSummary:
    """A cell's progress and best result, read from MLflow. Counts, best and observations are
    of its search trials; final-seed re-trainings of the chosen config are counted apart."""

    cell_id: str
    parent_run_id: str | None
    finished: int = 0
    failed: int = 0
    running: int = 0
    killed: int = 0
    best_value: float | None = None
    best_run_id: str | None = None
    observations: tuple[Observation, ...] = ()
    final_finished: int = 0
    final_diverged: int = 0


def loggable_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten nested mappings (`objective_options.eta`), stringify, and drop what looks like a secret."""
    flat: dict[str, str] = {}
    dropped: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
            return
        text = redact(str(value))  # a URI with a password in it keeps its host, not its password
        if looks_secret(prefix, text):
            dropped.append(prefix)
        else:
            flat[clean_key(prefix)] = text[:6000]  # MLflow's limit on a param value

    walk("", params)
    if dropped:
        _log.warning("tracking: not logging parameters that look like credentials: %s", ", ".join(dropped))
    return flat


def looks_secret(name: str, value: str) -> bool:
    """A credential by its name (`db_password`, `hf_token`, `api_key`; not `max_tokens`) or its shape."""
    lowered = name.lower()
    words = set(re.split(r"[^a-z0-9]+", lowered)) | {lowered.replace("_", "")}
    return bool(words & _SECRET_WORDS or lowered.endswith(_SECRET_SUFFIXES) or _SECRET_VALUE.match(value))


def trial_record(run: Run) -> TrialRecord:
    """The record of a trial run found by a search."""
    tags = run.data.tags
    return TrialRecord(
        run_id=run.info.run_id, cell_id=tags.get(CELL_TAG, ""), trial_id=tags.get(TRIAL_ID_TAG, ""),
        run_name=run.info.run_name or "", status=run.info.status,
        proposal=tags.get("wgtune.proposal", ""), phase=tags.get("wgtune.phase", ""),
        params=dict(run.data.params), metrics=dict(run.data.metrics),
        start_time_ms=run.info.start_time, end_time_ms=run.info.end_time, error=tags.get(ERROR_TAG),
        diverged=tags.get(DIVERGED_TAG) == "true")


def metric_rows(run_id: str, metrics: Mapping[str, Any], step: int) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp, step) rows for the writer; values that are not numbers are skipped."""
    stamp = now_ms()
    rows = []
    for key, value in metrics.items():
        try:
            rows.append((clean_key(key), float(value), stamp, step))
        except (TypeError, ValueError):
            _log.debug("tracking: metric %r of run %s is not a number, skipped", key, run_id)
    return rows


def clean_key(key: object) -> str:
    """MLflow refuses keys outside [/\\w.\\- ]: such a key would fail the whole batch."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:250]


def now_ms() -> int:
    """Milliseconds since the epoch, MLflow's unit of time."""
    return int(time.time() * 1000)

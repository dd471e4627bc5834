"""What a study's MLflow runs hold: cell and trial records, and values made fit to log."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Mapping

from wgtune.spec.grid import cell_short_label
from wgtune.spec.spaces import SpaceError
from wgtune.tracking.store import redact

if TYPE_CHECKING:
    from mlflow.entities import Run

    from wgtune.spec.grid import Cell
    from wgtune.spec.schema import ResourceSpec
    from wgtune.spec.spaces import SearchSpace

_log = logging.getLogger(__name__)

TAG_PREFIX = "wgtune."


def tag(name: str) -> str:
    """The name of one of wgtune's MLflow tags: `wgtune.<name>`."""
    return TAG_PREFIX + name


KIND_TAG, CELL_TAG, TRIAL_ID_TAG, ERROR_TAG = tag("kind"), tag("cell"), tag("trial_id"), tag("error")
"""`kind`: what a run is (`KIND_STUDY`, `KIND_CELL`, `KIND_TRIAL`); `cell`: its cell id; `trial_id`: Tune's
id of a trial run; `error`: a failed attempt's error (the whole text is the run's `error.txt`)."""
PROPOSAL_TAG, PHASE_TAG, ATTEMPTS_TAG = tag("proposal"), tag("phase"), tag("attempts")
"""How a trial's configuration was proposed (`transfer`, `random`, `prior` (a start-up draw from a
size-aware prior), `tpe`, `final`), its phase
(`PHASE_SEARCH` or `PHASE_FINAL`), and how many attempts it took (retries from checkpoints)."""
PROPOSAL_TRANSFER, PROPOSAL_PRIOR, PROPOSAL_RANDOM, PROPOSAL_TPE = "transfer", "prior", "random", "tpe"
"""The values of `PROPOSAL_TAG` on a search trial: a neighbour's best config proposed first, a start-up draw
from the size-aware prior, a random start-up draw, a TPE suggestion (a final trial's proposal is `PHASE_FINAL`)."""
DIVERGED_TAG = tag("diverged")  # on a FAILED trial run whose loss diverged: a failed configuration, not a fault
FAILING_TAG = tag("failing")  # on a cell run the last launch gave up on (too many failed trials)
KIND_STUDY, KIND_CELL, KIND_TRIAL = "study", "cell", "trial"
PHASE_SEARCH, PHASE_FINAL = "search", "final"
"""A search trial informs its cell's TPE; a final trial re-trains the chosen config on a fresh seed."""
SELECT_TAG = tag("select")
"""On a final trial re-trained under another selection rule than the study's (`wgtune launch --select val_avg`):
the rule's name (`tracking.selection.SELECTION_RULES`). A final trial without it re-trained the study's choice."""
SELECT_KEY = "select"
"""The key of a final trial's Tune config that names that rule, from the router to the tracking callback."""
STOPPED_TAG = tag("stopped_early")
"""On a FINISHED search trial that the scheduler (ASHA) stopped before its last epoch: its value is
its best so far, and it is no candidate for a neighbour's transfer points (see `summary.Observation`)."""
DEVICE_TAG = tag("device")
DEVICE_GPU, DEVICE_CPU = "gpu", "cpu"
"""On every trial run: what its `cost/device_s` counts, `gpu` (GPU-seconds: it holds GPUs) or `cpu`
(CPU-core-seconds: it holds none); see `device_use`."""
SEED_PARAM = "seed"
"""The param a trial logs its training seed under (every search trial has its own, and every final seed)."""
CONFIG_PREFIX = "config."
"""Every trial logs its whole resolved trial config as params under this prefix (`config_params`):
what the history of a cell is checked against before it informs a search (issue 13, defect 1)."""
UNCOMPARED_SETTINGS = frozenset({"data_root", "num_workers", "model", SEED_PARAM, "device", "cache", "eval_test",
                                 "compile"})
"""Config keys that do not make two trials' results incomparable: where the data lie, how many
loader processes read them (the order is seeded), the model (a neighbour's differs by design; a
cell's own is its id), the seed (every trial has its own), the device it ran on, whether images
came from the decoded cache (the same pixels, tested), when test was evaluated (selection reads
validation only), and whether the model was compiled (the same function)."""
PARENT_RUN_TAG, RUN_NAME_TAG = "mlflow.parentRunId", "mlflow.runName"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"
"""MLflow 3's UI reads this experiment tag to open an experiment on its "Model training" views rather than its
GenAI ones; the value is the UI's `ExperimentKind.CUSTOM_MODEL_DEVELOPMENT` (mlflow/server/js, MLflow 3.17)."""
SHARED_VIEW_TAG_PREFIX, STUDY_VIEW_KEY = "mlflow.sharedViewState.", "wgtune"
"""An experiment tag `mlflow.sharedViewState.<key>` holds a runs-table view (columns, sort, expanded rows) that
the UI applies when the address carries `viewStateShareKey=<key>` (MLflow 3.17's shared views)."""
CELL_METRIC_PREFIX = "cell/"
CELL_BEST_VAL_WORST, CELL_TEST_WORST_MEAN, CELL_TEST_WORST_LOW, CELL_TEST_WORST_HIGH = (
    f"{CELL_METRIC_PREFIX}{name}" for name in ("best_val_worst_acc", "test_worst_acc_mean", "test_worst_acc_low",
                                               "test_worst_acc_high"))
CELL_TRIALS_SPENT, CELL_FINAL_SEEDS, CELL_FAILED_SEEDS, CELL_DEVICE_HOURS = (
    f"{CELL_METRIC_PREFIX}{name}" for name in ("trials_spent", "final_seeds", "failed_seeds", "device_hours"))
"""`device_hours`: what every trial run of the cell has cost, search and final seeds, failed and killed ones
included (`wgtune.report.compute.cell_cost`): GPU-hours for a cell whose trials hold GPUs, else CPU-core-hours."""
CELL_METRICS = (CELL_TEST_WORST_MEAN, CELL_TEST_WORST_LOW, CELL_TEST_WORST_HIGH, CELL_BEST_VAL_WORST,
                CELL_TRIALS_SPENT, CELL_FINAL_SEEDS, CELL_FAILED_SEEDS, CELL_DEVICE_HOURS)
"""A cell's summary, logged on its parent run (by the report, and by a launch as it closes the cell) so the
runs table can show and sort cells by it; in the order the study's view shows them."""
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


HANDLE_PREFIX = "trial:"


def trial_handle(trial_id: str) -> str:
    """What a trial's writes name before (and after) its MLflow run exists."""
    return HANDLE_PREFIX + trial_id


def is_handle(run_id: str) -> bool:
    """Whether `run_id` is a trial handle rather than an MLflow run id."""
    return run_id.startswith(HANDLE_PREFIX)


class WriteKind(str, Enum):
    """The kinds of tracking write (a str, so a journal line stores and compares it as its name)."""

    CREATE = "create"
    METRICS = "metrics"
    PARAMS = "params"
    TAGS = "tags"
    TEXT = "text"
    STATUS = "status"
    TERMINATE = "terminate"


@dataclass(frozen=True)
class Write:
    """One write to one run, as plain data, so that a disk spool can save and replay it.

    run_id is an MLflow run id or a trial handle (`trial_handle`). kind and payload: "create"
    (experiment_id, ((tag, value), ...), run_name, start_time_ms) makes the handle's run;
    "metrics" ((key, value, timestamp_ms, step), ...), "params" ((key, value), ...),
    "tags" ((key, value), ...), "text" (artifact_file, text), "status" (status,) to reopen a run,
    "terminate" (status, end_time_ms).
    """

    kind: WriteKind
    run_id: str
    payload: tuple[Any, ...]

    @property
    def description(self) -> str:
        """A few words for logs: `22 metrics`, `terminate FINISHED`."""
        if self.kind in (WriteKind.METRICS, WriteKind.PARAMS, WriteKind.TAGS):
            return f"{len(self.payload)} {self.kind.value}"
        if self.kind == WriteKind.CREATE:
            return f"create {self.payload[2]}"
        return f"{self.kind.value} {self.payload[0]}"


@dataclass(frozen=True)
class CellRecord:
    """What the study records about one cell on its MLflow parent run: what identifies it, and its size."""

    cell_id: str
    dataset: str
    family: str
    size: str
    model: str
    n_params: int
    objective: str
    pretrained: bool
    weights: str = ""
    """The pretrained source the cell's trials load (`timm:resnet18.a1_in1k`, `torchvision:...`); empty from scratch."""
    registered_objective: str = ""
    """The registered objective the cell trains: `objective` names the cell (`erm_balanced` may train `erm`)."""
    environments: str = ""
    sampler: str = ""
    """The cell's environments and sampler, resolved (`searched: shuffle | group_balanced` where the space searches it)."""

    @classmethod
    def of(cls, cell: Cell, n_params: int, weights: str = "", **setting: str) -> CellRecord:
        """The record of a grid cell whose model has `n_params` parameters and loads `weights`; `setting` holds
        `registered_objective`, `environments` and `sampler`."""
        return cls(cell.id, cell.dataset, cell.family, cell.size, cell.model, n_params, cell.objective, cell.pretrained,
                   weights, **setting)

    @classmethod
    def unknown(cls, cell_id: str) -> CellRecord:
        """A cell known only by its id (runs without a parent run, say): on no curve."""
        return cls(cell_id, "", "", "", "", 0, "", False)

    @property
    def run_name(self) -> str:
        """The parent run's name: the cell's short label (`wb/r18/dro/pt`); its id is the `wgtune.cell` tag."""
        return cell_short_label(self.dataset, self.model, self.objective, self.pretrained)

    def tags(self) -> dict[str, str]:
        """The parent run's tags: `wgtune.kind=cell`, `wgtune.cell=<id>`, and `wgtune.<field>` for every field."""
        # An empty field (a scratch cell's weights) is no tag: `from_tags` reads an absent tag as empty.
        fields = {tag(f.name): _tag_text(getattr(self, f.name)) for f in dataclasses.fields(self)
                  if f.name != "cell_id" and getattr(self, f.name) != ""}
        return {KIND_TAG: KIND_CELL, CELL_TAG: self.cell_id, **fields}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> CellRecord:
        """The record a parent run's tags hold (`tags()` read back); an absent tag reads as unknown."""
        values: dict[str, Any] = {"cell_id": tags.get(CELL_TAG, "")}
        for f in dataclasses.fields(cls):
            if f.name == "cell_id":
                continue
            text = tags.get(tag(f.name), "")
            if f.type == "int":
                values[f.name] = int(text) if text.isdigit() else 0
            elif f.type == "bool":
                values[f.name] = text.lower() == "true"
            else:
                values[f.name] = text
        return cls(**values)


def run_number_key(tags: Mapping[str, str]) -> tuple[str, str]:
    """What a trial run's number counts within its cell, from its tags: final seeds per selection rule, every
    other run as a search trial (runs from before phases were tagged among them)."""
    phase = tags.get(PHASE_TAG, "")
    return (PHASE_FINAL, tags.get(SELECT_TAG, "")) if phase == PHASE_FINAL else (PHASE_SEARCH, "")


def trial_run_name(cell_name: str, number: int, phase: str = PHASE_SEARCH, rule: str = "") -> str:
    """A trial run's name: `wb/r50/dro · t07` for the cell's 7th search trial, `wb/r50/dro · seed 2` for its
    2nd final seed (`· seed 2 · val_avg` re-trained under another selection rule, `SELECT_TAG`)."""
    if phase == PHASE_FINAL:
        return f"{cell_name} · seed {number}" + (f" · {rule}" if rule else "")
    return f"{cell_name} · t{number:02d}"


def _tag_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def device_use(resources: ResourceSpec) -> tuple[str, float]:
    """What a trial holding `resources` counts its compute in, and how many of them it holds: its GPUs when it
    holds any (a fraction of one when it shares one: its share of the GPU's time), else its CPU cores. A GPU
    trial's CPUs are not added: GPU-seconds and CPU-core-seconds are not one unit, and the GPU is the cost."""
    return (DEVICE_GPU, float(resources.gpu)) if resources.gpu > 0 else (DEVICE_CPU, float(resources.cpu))


def final_seed_done(status: str, diverged: bool) -> bool:
    """Whether a final-seed trial has given its seed's result: it finished, or the chosen config
    diverged on that seed (re-training it would diverge again, so it is never re-run)."""
    return status == "FINISHED" or (status == "FAILED" and diverged)


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
    stopped_early: bool = False
    device: str = ""
    """What its `cost/device_s` counts (`DEVICE_GPU`, `DEVICE_CPU`); empty for a run from before costs were logged."""
    select: str = ""
    """The selection rule a final trial re-trained the choice of (`SELECT_TAG`); empty: the study's own."""


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


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """A trial's resolved config as MLflow params, `config.<key>` (nested options as
    `config.objective_options.<name>`), less its seed, which has its own param (`SEED_PARAM`)."""
    return loggable_params({CONFIG_PREFIX.rstrip("."): {k: v for k, v in config.items() if k != SEED_PARAM}})


def logged_config(params: Mapping[str, str]) -> dict[str, str] | None:
    """The config a trial run logged (`config_params` read back, keys without the prefix); None for a
    run from before configs were logged."""
    found = {k[len(CONFIG_PREFIX):]: v for k, v in params.items() if k.startswith(CONFIG_PREFIX)}
    return found or None


def parse_params(space: SearchSpace, logged: Mapping[str, str]) -> dict[str, Any]:
    """MLflow's string params back to the typed values of the space's searched dimensions (a value
    the run did not search is read from its logged config). Read by the search (priors) and the report
    (search analysis), so a logged value means the same to both."""
    values: dict[str, Any] = {}
    config = logged_config(logged) or {}
    for dim in space.searched():
        # A dim fixed when the run trained and searched now has its value in the run's config.
        text = logged.get(dim.name, config.get(dim.name if dim.target == "config" else f"{dim.target}.{dim.name}"))
        if text is None:
            raise SpaceError(f"no value logged for {dim.name!r}")
        if dim.kind == "choice":
            matches = [option for option in dim.args if str(option) == text]
            if not matches:
                raise SpaceError(f"{dim.name}={text} is not one of the choices {list(dim.args)}")
            values[dim.name] = matches[0]
        else:
            number = float(text)
            values[dim.name] = int(number) if dim.integer else number
    return values


@functools.lru_cache(maxsize=1)
def default_settings() -> dict[str, str]:
    """Every trial setting's default, flattened and stringified as `config_params` logs it."""
    from trainables.config import TrialConfig

    return {k[len(CONFIG_PREFIX):]: v for k, v in config_params(TrialConfig().as_dict()).items()}


def settings_mismatch(expected: Mapping[str, str], logged: Mapping[str, str], free: frozenset[str] | set[str]
                      ) -> str | None:
    """Why a run's logged config (`logged_config`) was trained under other settings than `expected`
    (the same flattening), or None. Keys in `free` (the searched ones) and `UNCOMPARED_SETTINGS` may differ."""
    ignored = set(free) | UNCOMPARED_SETTINGS
    defaults = default_settings()
    differing = []
    for key in sorted((set(expected) | set(logged)) - ignored):
        # A setting a run predates (not logged then) trained at its default, which it had before it existed.
        here, there = expected.get(key, defaults.get(key)), logged.get(key, defaults.get(key))
        if here != there:
            differing.append(f"{key}: {'unset' if there is None else there} there, {'unset' if here is None else here} here")
    return "; ".join(differing) or None


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
        proposal=tags.get(PROPOSAL_TAG, ""), phase=tags.get(PHASE_TAG, ""),
        params=dict(run.data.params), metrics=dict(run.data.metrics),
        start_time_ms=run.info.start_time, end_time_ms=run.info.end_time, error=tags.get(ERROR_TAG),
        diverged=tags.get(DIVERGED_TAG) == "true", stopped_early=tags.get(STOPPED_TAG) == "true",
        device=tags.get(DEVICE_TAG, ""), select=tags.get(SELECT_TAG, ""))


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

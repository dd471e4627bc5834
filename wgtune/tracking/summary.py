"""A cell's state as MLflow holds it: its search trials' counts, best value and observations.

Computed from trial records alone (`summarise`), so the plan of a launch, `wgtune status` and the
priors all count the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from trainables.metrics import SELECTION_METRIC
from wgtune.tracking.records import PHASE_FINAL, TrialRecord, final_seed_done


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
    final_done: int = 0
    """Final seeds that gave their result (`final_seed_done`): finished, or diverged for good."""



def summarise(trials: Sequence[TrialRecord], parent_ids: Mapping[str, str], metric: str = SELECTION_METRIC,
              mode: str = "max") -> dict[str, CellSummary]:
    """Per cell (every cell with a parent run, and every cell a trial names): search-trial counts by
    status, the best finished search trial by `metric`, every finished search trial's params as an
    observation (a diverged one as a failed observation), and how many final seeds are done."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    by_cell: dict[str, list[TrialRecord]] = {cell: [] for cell in parent_ids}
    for trial in trials:
        by_cell.setdefault(trial.cell_id, []).append(trial)
    sign = 1.0 if mode == "max" else -1.0
    summaries = {}
    for cell_id, every in by_cell.items():
        records = [t for t in every if t.phase != PHASE_FINAL]
        finished = [t for t in records if t.status == "FINISHED"]
        observations = tuple(Observation(t.run_id, t.trial_id, t.params, t.metrics.get(metric)) for t in finished)
        # A diverged configuration failed for good: TPE learns it as its worst observation.
        observations += tuple(Observation(t.run_id, t.trial_id, t.params, None, diverged=True)
                              for t in records if t.status == "FAILED" and t.diverged)
        scored = [o for o in observations if o.value is not None]
        best = max(scored, key=lambda o: sign * o.value) if scored else None  # type: ignore[operator]
        summaries[cell_id] = CellSummary(
            cell_id, parent_ids.get(cell_id), finished=len(finished),
            failed=sum(t.status == "FAILED" for t in records),
            running=sum(t.status == "RUNNING" for t in records),
            killed=sum(t.status == "KILLED" for t in records),
            best_value=best.value if best else None, best_run_id=best.run_id if best else None,
            observations=observations,
            final_done=sum(t.phase == PHASE_FINAL and final_seed_done(t.status, t.diverged) for t in every))
    return summaries

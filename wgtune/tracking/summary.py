"""A cell's state as MLflow holds it: its search trials' counts, best value and observations.

Computed from trial records alone (`summarise`), so the plan of a launch, `wgtune status` and the
priors all count the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from trainables.metrics import SELECTION_METRIC
from wgtune.tracking.records import PHASE_FINAL, TrialRecord, final_seed_done, logged_config, settings_mismatch
from wgtune.tracking.selection import RuleChoice, rule_choices


@dataclass(frozen=True)
class Observation:
    """A search trial as a prior: its params (searched values, seed, `config.*`) and its objective
    value (None if never logged).

    What a trial's outcome is, the same inside a launch (the router) and after it (from MLflow),
    so that a relaunch learns what the launch that ran the trial learnt (issue 13, defect 7):

    - finished: its value, the best epoch's selection metric;
    - `stopped` early by ASHA: FINISHED too, its value its best *so far*, as the router saw it when
      Tune completed it. TPE ranks configurations, and a trial ASHA stopped lost to its rung peers,
      so its partial value ranks it low where it belongs; it is marked, and never a neighbour's
      transfer point (a partial value is no estimate of what the config reaches);
    - `diverged`: a failed observation (its configuration fails for good);
    - `errored` after Tune's retries: a failed observation too, as the router records it in the
      launch (`router.TRIAL_ERROR`); forgetting it on relaunch would let TPE propose it again as
      if unseen. Neither failure counts against the budget: each was replaced.
    """

    run_id: str
    trial_id: str
    params: Mapping[str, str]
    value: float | None
    diverged: bool = False
    errored: bool = False
    stopped: bool = False

    @property
    def failed(self) -> bool:
        """A failed configuration: TPE ranks it below every value."""
        return self.diverged or self.errored


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
    """The study's final seeds that gave their result (`final_seed_done`): finished, or diverged for good.
    Seeds re-trained under another selection rule (`records.SELECT_TAG`) are not the study's: see `choices`."""
    choices: Mapping[str, RuleChoice] = field(default_factory=dict)
    """The chosen search trial under each selection rule, with the final seeds done that re-trained it under
    that rule (`selection.rule_choices`): what `wgtune launch --select` re-trains, and how much is done."""

    def trained_as(self, expected: Mapping[str, str], free: frozenset[str]) -> CellSummary:
        """This summary less the runs trained under other settings than `expected` (`records.settings_mismatch`;
        `free`: the searched keys): what counts against the budget of a cell that trains as `expected`.
        Runs that logged no config (from before configs were) are kept: see `search.priors`."""
        def same(o: Observation) -> bool:
            logged = logged_config(o.params)
            return logged is None or settings_mismatch(expected, logged, free) is None

        kept = tuple(o for o in self.observations if same(o))
        if len(kept) == len(self.observations):
            return self
        scored = [o for o in kept if o.value is not None]
        best = max(scored, key=lambda o: o.value) if scored else None  # type: ignore[arg-type,return-value]
        # A rule's choice among runs that no longer count is no choice of this cell's (it cannot be re-chosen
        # here: observations keep no other rule's metric), so it is dropped.
        runs = {o.run_id for o in kept}
        return replace(self, finished=sum(not o.failed for o in kept), failed=sum(o.failed for o in kept),
                       best_value=best.value if best else None, best_run_id=best.run_id if best else None,
                       observations=kept, choices={r: c for r, c in self.choices.items() if c.run_id in runs})


def summarise(trials: Sequence[TrialRecord], parent_ids: Mapping[str, str], metric: str = SELECTION_METRIC,
              mode: str = "max") -> dict[str, CellSummary]:
    """Per cell (every cell with a parent run, and every cell a trial names): search-trial counts by
    status, the best finished search trial by `metric`, every finished search trial's params as
    an observation (a diverged or errored one as a failed observation), and how many final seeds are done."""
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
        observations = tuple(Observation(t.run_id, t.trial_id, t.params, t.metrics.get(metric), stopped=t.stopped_early)
                             for t in finished)
        # A diverged or errored configuration failed: TPE learns it as its worst observation.
        observations += tuple(Observation(t.run_id, t.trial_id, t.params, None, diverged=t.diverged, errored=not t.diverged)
                              for t in records if t.status == "FAILED")
        scored = [o for o in observations if o.value is not None]
        best = max(scored, key=lambda o: sign * o.value) if scored else None  # type: ignore[operator]
        summaries[cell_id] = CellSummary(
            cell_id, parent_ids.get(cell_id), finished=len(finished),
            failed=sum(t.status == "FAILED" for t in records),
            running=sum(t.status == "RUNNING" for t in records),
            killed=sum(t.status == "KILLED" for t in records),
            best_value=best.value if best else None, best_run_id=best.run_id if best else None,
            observations=observations, choices=rule_choices(every),
            final_done=sum(t.phase == PHASE_FINAL and not t.select and final_seed_done(t.status, t.diverged)
                           for t in every))
    return summaries

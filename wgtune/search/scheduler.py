"""Early stopping within each cell: asynchronous successive halving whose rungs hold one cell's trials.

Anything that compares trials compares them within one cell (docs/design.md, decision 5): cells
differ in difficulty, and a scheduler that pooled them would starve the hard ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from trainables.metrics import STEP_METRIC
from wgtune.tracking.records import PHASE_FINAL

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

Curves = Mapping[str, Sequence[tuple[int, float]]]
"""A cell's earlier trials' early-stopping metric by epoch: run id -> ((epoch, value), ...)."""


def make_scheduler(name: str, grace_period: int, max_t: int | Mapping[str, int],
                   history: Mapping[str, Curves] | None = None) -> FIFOScheduler:
    """The experiment's trial scheduler: per-cell ASHA over `max_t` epochs (one number, or per cell id:
    data sets train for different lengths), its rungs seeded with each cell's `history` (per cell id),
    or first-in-first-out (no early stopping)."""
    if name == "asha":
        return CellASHA(grace_period=grace_period, max_t=max_t, history=history)
    return FIFOScheduler()


class CellASHA(FIFOScheduler):
    """Asynchronous successive halving within each cell: a trial's rung competitors are trials
    of its own cell only, since cells differ in difficulty and pooling them would starve the hard ones.

    A new experiment's rungs start from the cell's history (issue 13, defect 7): every earlier
    trial's metric at each rung's milestone, read from MLflow's per-epoch history, is recorded in
    the rung as the trial recorded it when it passed (Ray's `_Bracket.on_result` records a trial's
    value at the first rung milestone it reaches, in each rung once). So early stopping on a
    relaunch compares new trials with the ones already run, as an uninterrupted launch would.
    A restored experiment brings its rungs back with Tune's state and is not seeded.
    """

    def __init__(self, grace_period: int, max_t: int | Mapping[str, int], reduction_factor: float = 3,
                 history: Mapping[str, Curves] | None = None) -> None:
        super().__init__()
        self._grace_period, self._reduction_factor = grace_period, reduction_factor
        self._max_t = max_t if isinstance(max_t, int) else dict(max_t)
        self._cells: dict[str, AsyncHyperBandScheduler] = {}
        self._history = {cell: dict(curves) for cell, curves in (history or {}).items()}
        # Final-seed re-trainings of a chosen config run to the end: a seed stopped at a rung
        # would report a one-epoch test accuracy into the mean over seeds (docs/design.md, decision 7).
        self._final = FIFOScheduler()

    def _of(self, trial: Trial) -> TrialScheduler:
        if trial.config.get("phase") == PHASE_FINAL:
            return self._final
        cell = trial.config["cell"]
        if cell not in self._cells:
            max_t = self._max_t if isinstance(self._max_t, int) else self._max_t[cell]
            self._cells[cell] = AsyncHyperBandScheduler(
                time_attr="training_iteration", metric=STEP_METRIC, mode="max", max_t=max_t,
                grace_period=min(self._grace_period, max_t), reduction_factor=self._reduction_factor,
            )
            seed_rungs(self._cells[cell], self._history.pop(cell, {}))
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


def seed_rungs(asha: AsyncHyperBandScheduler, curves: Curves) -> int:
    """Record earlier trials in `asha`'s rungs, as if they had just run (mode max); returns how many
    rung entries were made.

    Reads Ray's bracket bookkeeping (ray/tune/schedulers/async_hyperband.py, `_Bracket._rungs`:
    a list of (milestone, {trial id: metric x mode sign}), highest milestone first), which has no
    public setter: a trial that reached a milestone enters that rung with its metric at the first
    epoch at or after it, under a key no live trial has. A trial that stopped before a milestone
    is not in that rung, as when it ran.
    """
    made = 0
    for bracket in asha._brackets:
        for milestone, recorded in bracket._rungs:
            for run_id, points in curves.items():
                reached = [value for epoch, value in sorted(points) if epoch >= milestone]
                if reached:
                    recorded[f"history:{run_id}"] = reached[0]  # mode max: Ray's sign is +1
                    made += 1
    return made

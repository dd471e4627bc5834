"""Early stopping within each cell: asynchronous successive halving whose rungs hold one cell's trials.

Anything that compares trials compares them within one cell (docs/design.md, decision 5): cells
differ in difficulty, and a scheduler that pooled them would starve the hard ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from trainables.metrics import STEP_METRIC
from wgtune.tracking.records import PHASE_FINAL

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

def make_scheduler(name: str, grace_period: int, max_t: int) -> FIFOScheduler:
    """The experiment's trial scheduler: per-cell ASHA, or first-in-first-out (no early stopping)."""
    if name == "asha":
        return CellASHA(grace_period=grace_period, max_t=max_t)
    return FIFOScheduler()


class CellASHA(FIFOScheduler):
    """Asynchronous successive halving within each cell: a trial's rung competitors are trials
    of its own cell only, since cells differ in difficulty and pooling them would starve the hard ones."""

    def __init__(self, grace_period: int, max_t: int, reduction_factor: float = 3) -> None:
        super().__init__()
        self._options = {"grace_period": min(grace_period, max_t), "max_t": max_t, "reduction_factor": reduction_factor}
        self._cells: dict[str, AsyncHyperBandScheduler] = {}
        # Final-seed re-trainings of a chosen config run to the end: a seed stopped at a rung
        # would report a one-epoch test accuracy into the mean over seeds (docs/design.md, decision 7).
        self._final = FIFOScheduler()

    def _of(self, trial: Trial) -> TrialScheduler:
        if trial.config.get("phase") == PHASE_FINAL:
            return self._final
        cell = trial.config["cell"]
        if cell not in self._cells:
            self._cells[cell] = AsyncHyperBandScheduler(
                time_attr="training_iteration", metric=STEP_METRIC, mode="max", **self._options
            )
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

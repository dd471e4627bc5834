"""Adaptive allocation: a study's search trials spent across its cells where the scaling curve needs them.

Opt in with `search: {allocation: adaptive, study_trials: N}`. Fixed allocation (the default) gives every cell
`num_samples` trials. Under adaptive allocation:

- every cell first gets its **floor**: its random start-up plus `FLOOR_TPE_TRIALS` TPE trials (grid
  `search.min_trials` to set it), reserved out of the pool, so no cell is judged on random draws alone;
- beyond the floor, each next search trial of the study's pool of `study_trials` (the study's search trials in
  all, floors included) goes to the **rising** cell whose expected best is expected to gain most from one more
  trial: E[best of k+1] − E[best of k] from the cell's own finished values (`tracking/best_of_k.py`, the
  report's tuning noise), k its trials spent (running ones included, so a cell with trials in flight is
  charged for them);
- a cell is **plateaued**, and gets no more, when its last doubling (⌈k/2⌉ → k trials) raised its expected best
  by less than `search.plateau_gain` (default `PLATEAU_GAIN`): the report's "search-limited?" test, with a
  threshold in place of the final seeds' standard error, which a search does not have yet. A plateaued cell
  goes on to its final seeds at once. Its trials are not handed on when the pool is otherwise idle: stopping
  early is the point, and the unspent pool is the saving (`wgtune status` says how much is left);
- a cell never takes more than `num_samples` trials (its cap).

Each cell counts equally: the value of a trial is its expected gain in the cell's best validation worst-group
accuracy, the quantity every point of the curve is chosen by. Weighing cells by their leverage on the fitted
exponent was considered and left out: that leverage depends on the fit's weights (the final seeds' spread),
which do not exist while the search runs.

The estimate treats a cell's trials as draws from one distribution, as the report's best-of-k does; TPE's
trials are not (they concentrate where the best ones were), so the gain errs low for a search that is
converging, which is the case it should stop. It cannot see a peak no trial has come near: a hard cell whose
floor found nothing looks flat. `bench/allocation.py` measures what that costs on a simulated study.

Every decision is a function of the cells' finished values and trial counts alone (`decide`), so the plan
computes it from MLflow (`run/plan.py`), `wgtune status` shows it, a relaunch continues it, and the router
(`router.py`) applies it as trials finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from wgtune.tracking.best_of_k import doubling_gain, next_trial_gain

if TYPE_CHECKING:
    from wgtune.spec.schema import SearchSettings

__all__ = [
    "ACTIONS", "ALLOCATION_FILE", "FLOOR", "FLOOR_TPE_TRIALS", "PLATEAU_GAIN", "TERMINAL", "AllocationPolicy",
    "CellState", "Decision", "decide", "pool_cell",
]

ALLOCATION_FILE = "allocation.json"
"""The artifact of a cell's parent run that holds the allocation's decision on it and its reason."""
FLOOR_TPE_TRIALS = 3
"""TPE trials a cell gets after its random start-up before it is judged (default floor: n_startup + this)."""
PLATEAU_GAIN = 0.005
"""Default `search.plateau_gain`: half a point of validation worst-group accuracy per doubling of a cell's
search. Below it a doubling moves the cell's point less than its final seeds resolve (3 seeds of a
worst-group accuracy with a 1–2 point spread give a standard error of 0.6–1.2 points)."""

FLOOR, RISING, PLATEAUED, POOL_SPENT, CAPPED, WAITING, UNSCORED = (
    "floor", "rising", "plateaued", "pool spent", "capped", "waiting", "unscored")
ACTIONS = (FLOOR, RISING, PLATEAUED, POOL_SPENT, CAPPED, WAITING, UNSCORED)
"""What the allocator says of a cell: below its floor (it searches), rising (it may take pool trials), plateaued,
the pool is spent, its cap is reached, waiting for its running trials to say, or unscored (fewer than two
scored trials and none running: nothing to judge a gain by, so it stops)."""
TERMINAL = frozenset({PLATEAUED, POOL_SPENT, CAPPED, UNSCORED})
"""Decisions that end a cell's search once none of its trials is running."""


@dataclass(frozen=True)
class AllocationPolicy:
    """The study's adaptive allocation: its pool, each cell's floor and cap, and the plateau threshold."""

    study_trials: int
    """Search trials the cells decided here may spend in all (floors included)."""
    floor: int
    cap: int
    plateau_gain: float = PLATEAU_GAIN

    def __post_init__(self) -> None:
        if not 0 <= self.floor <= self.cap or self.study_trials < 0 or self.plateau_gain < 0:
            raise ValueError(f"an allocation needs 0 <= floor <= cap, a pool >= 0 and a threshold >= 0: {self}")

    @classmethod
    def of(cls, search: SearchSettings) -> AllocationPolicy | None:
        """The grid's `search` block as a policy; None under fixed allocation."""
        if search.allocation != "adaptive":
            return None
        assert search.study_trials is not None  # the schema requires it under adaptive
        floor = search.min_trials if search.min_trials is not None else search.n_startup + FLOOR_TPE_TRIALS
        plateau = search.plateau_gain if search.plateau_gain is not None else PLATEAU_GAIN
        return cls(search.study_trials, min(floor, search.num_samples), search.num_samples, plateau)

    def less(self, spent: int) -> AllocationPolicy:
        """This policy for a subset of the cells, the others having spent `spent` trials of the pool."""
        return AllocationPolicy(max(self.study_trials - spent, 0), self.floor, self.cap, self.plateau_gain)


@dataclass(frozen=True)
class CellState:
    """What the allocator reads of a cell: its search trials spent (finished and running; failed ones are
    replaced and spend nothing), the finished ones' values (higher is better), and how many are running."""

    spent: int
    values: tuple[float, ...] = ()
    running: int = 0


@dataclass(frozen=True)
class Decision:
    """The allocator's word on a cell, with its reason (logged as the cell's `allocation.json`)."""

    action: str
    spent: int
    reason: str
    gain: float | None = None
    """Expected gain of the best from one more trial (rising cells are served by it)."""
    doubling: float | None = None
    """Expected gain of the best over the last doubling of its trials (the plateau test)."""

    @property
    def ends_search(self) -> bool:
        """The cell's search is over: a terminal decision (`TERMINAL`)."""
        return self.action in TERMINAL

    def record(self) -> dict[str, Any]:
        """As the cell's parent run records it."""
        return {"action": self.action, "trials": self.spent, "reason": self.reason,
                "gain_next_trial": self.gain, "gain_last_doubling": self.doubling}


def decide(policy: AllocationPolicy, states: Mapping[str, CellState]) -> dict[str, Decision]:
    """Each cell's decision, given every cell the pool is shared by (a floor not yet spent is reserved)."""
    used = sum(max(s.spent, policy.floor) for s in states.values())
    left = policy.study_trials - used
    out = {}
    for name, s in states.items():
        if s.spent < policy.floor:
            out[name] = Decision(FLOOR, s.spent, f"below its floor of {policy.floor} trials")
        elif s.spent >= policy.cap:
            out[name] = Decision(CAPPED, s.spent, f"reached its cap of {policy.cap} trials (search.num_samples)")
        elif len(s.values) < 2:
            out[name] = (Decision(WAITING, s.spent, "fewer than 2 scored trials: waiting for its running ones")
                         if s.running else Decision(UNSCORED, s.spent, "fewer than 2 scored trials to judge a gain by"))
        else:
            doubling = doubling_gain(s.values, s.spent)
            gain = next_trial_gain(s.values, s.spent)
            if doubling < policy.plateau_gain:
                out[name] = Decision(PLATEAUED, s.spent, f"its last doubling gained {doubling:.4f} < plateau_gain "
                                     f"{policy.plateau_gain:g}", gain, doubling)
            elif left <= 0:
                out[name] = Decision(POOL_SPENT, s.spent, f"the study's {policy.study_trials} trials are spent",
                                     gain, doubling)
            else:
                out[name] = Decision(RISING, s.spent, f"its last doubling gained {doubling:.4f}; one more trial "
                                     f"is expected to add {gain:.4f}", gain, doubling)
    return out


def pool_cell(decisions: Mapping[str, Decision], eligible: Mapping[str, bool] | None = None) -> str | None:
    """The cell the next pool trial goes to: the rising one with the largest expected gain of one more trial
    (the first, in the decisions' order, on ties); among those `eligible` says may start one now (default all)."""
    best, best_gain = None, float("-inf")
    for name, d in decisions.items():
        if d.action == RISING and (eligible is None or eligible.get(name, False)) and d.gain is not None \
                and d.gain > best_gain:
            best, best_gain = name, d.gain
    return best

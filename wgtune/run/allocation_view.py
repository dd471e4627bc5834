"""Adaptive allocation as a launch records it and `wgtune status` shows it, from the plan's decisions
(`run/plan.py: allocate`, computed from MLflow alone, so both agree with what a relaunch will do). Under fixed
allocation both do nothing, and plan nothing."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Sequence

from wgtune.run.plan import PlannedCell, plan_cells
from wgtune.search.allocation import ACTIONS, ALLOCATION_FILE, AllocationPolicy

if TYPE_CHECKING:
    from wgtune.spec.grid import Grid
    from wgtune.tracking.tracker import StudyTracker


def record_allocation(grid: Grid, tracker: StudyTracker) -> int:
    """Log each cell's decision and its reason as its parent run's `allocation.json`; returns how many."""
    if AllocationPolicy.of(grid.spec.search) is None:
        return 0
    decided = [c for c in plan_cells(grid, tracker.cell_summaries()) if c.allocation is not None]
    for planned in decided:
        assert planned.allocation is not None
        tracker.log_cell_json(planned.cell.id, ALLOCATION_FILE, planned.allocation.record())
    return len(decided)


def allocation_lines(grid: Grid, plans: Sequence[PlannedCell]) -> list[str]:
    """The study's pool and each cell's decision with its reason, from the cells planned from MLflow
    (`plan_cells(grid, tracker.cell_summaries())`); nothing under fixed allocation."""
    policy = AllocationPolicy.of(grid.spec.search)
    if policy is None:
        return []
    decided = [(c.cell.label, c.allocation) for c in plans if c.allocation]
    spent = sum(d.spent for _, d in decided)
    counts = Counter(d.action for _, d in decided)
    lines = [f"adaptive allocation: {spent} of {policy.study_trials} study trials spent (floor {policy.floor}, "
             f"cap {policy.cap}, plateau_gain {policy.plateau_gain:g}); "
             + ", ".join(f"{counts[a]} {a}" for a in ACTIONS if counts[a])]
    width = max([len(label) for label, _ in decided] + [4])
    return lines + [f"  {label:<{width}}  {d.action}: {d.reason}" for label, d in decided]

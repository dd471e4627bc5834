"""Ceilings on what a study spends, in device-hours (issue 16, item 2): the router proposes nothing more in a cell
whose ceiling, or whose study's, the next trial would pass.

The rule: a trial is proposed only if what is spent, plus the expected cost of the trials running, plus the expected
cost of the new one stays within the limit, for the cell (`budget.cell_device_hours`) and for the study in the
cell's unit (`budget.study_device_hours`: GPU-hours over GPU cells and CPU-core-hours over CPU cells, each held to
the limit on its own, never added, docs/design.md decision 13). Running trials always finish, so a study ends
within its limit unless a trial costs more than expected. A trial's expected cost is the dry run's estimate
(`run/estimate.py`, handed down as plain numbers), else the mean of the cell's trials finished in this launch,
else zero: with nothing known, the rule is "spent < limit".

What is spent comes from MLflow at launch (`report.compute.cell_cost` over the cell's runs, counted by
`run/ceilings.py`) plus each trial that completes in the launch (its last result's `cost/device_s`). A trial that
errors reports no result to the searcher: its cost counts from the next launch on (MLflow has it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["CeilingLedger", "CellCeiling"]


@dataclass(frozen=True)
class CellCeiling:
    """A cell's limits and what was spent when the launch began, in device-seconds of the cell's unit."""

    device: str
    cell_limit_s: float | None = None
    study_limit_s: float | None = None
    cell_spent_s: float = 0.0
    study_spent_s: float = 0.0
    """The whole study's spend in `device`'s unit at launch (every cell of that unit)."""
    search_trial_s: float | None = None
    """Expected device-seconds of one search trial (None: unknown)."""
    final_trial_s: float | None = None


class CeilingLedger:
    """What each cell and the study (per unit) have spent and committed during a launch; the router asks it
    before it proposes a trial (`allows`) and tells it what a trial spent when it completes (`finish`)."""

    def __init__(self, ceilings: Mapping[str, CellCeiling]) -> None:
        self.ceilings = dict(ceilings)
        self.spent: dict[str, float] = {cell: 0.0 for cell in ceilings}
        self.finished: dict[str, int] = {cell: 0 for cell in ceilings}
        self.running: dict[str, tuple[str, float]] = {}
        """Ray trial id -> (cell, its expected device-seconds)."""

    def expected(self, cell: str, final: bool) -> float:
        """One trial's expected device-seconds: the estimate, else the mean of this launch's, else 0."""
        ceiling = self.ceilings[cell]
        given = ceiling.final_trial_s if final else ceiling.search_trial_s
        if given is not None:
            return given
        return self.spent[cell] / self.finished[cell] if self.finished[cell] else 0.0

    def cell_spent(self, cell: str) -> float:
        """Device-seconds the cell has spent: at launch, and since."""
        return self.ceilings[cell].cell_spent_s + self.spent[cell]

    def study_spent(self, device: str) -> float:
        """Device-seconds the study has spent in `device`'s unit: at launch, and since."""
        at_launch = max((c.study_spent_s for c in self.ceilings.values() if c.device == device), default=0.0)
        return at_launch + sum(s for cell, s in self.spent.items() if self.ceilings[cell].device == device)

    def allows(self, cell: str, final: bool) -> bool:
        """Whether one more trial of `cell` stays within the cell's and the study's limits (module docstring)."""
        ceiling = self.ceilings.get(cell)
        if ceiling is None:
            return True
        running = [(c, s) for c, s in self.running.values() if self.ceilings[c].device == ceiling.device]
        next_s = self.expected(cell, final)
        if ceiling.cell_limit_s is not None:
            committed = sum(s for c, s in running if c == cell)
            if self.cell_spent(cell) + committed + next_s > ceiling.cell_limit_s:
                return False
        if ceiling.study_limit_s is not None:
            committed = sum(s for _, s in running)
            if self.study_spent(ceiling.device) + committed + next_s > ceiling.study_limit_s:
                return False
        return True

    def start(self, trial_id: str, cell: str, final: bool) -> None:
        if cell in self.ceilings:
            self.running[trial_id] = (cell, self.expected(cell, final))

    def finish(self, trial_id: str, device_s: Any) -> None:
        """A trial completed: what it spent (its last result's `cost/device_s`; nothing if it reported none)."""
        cell, _ = self.running.pop(trial_id, (None, 0.0))
        if cell is None or not isinstance(device_s, (int, float)) or device_s != device_s:
            return
        self.spent[cell] += float(device_s)
        self.finished[cell] += 1

    def get_state(self) -> dict[str, Any]:
        return {"spent": dict(self.spent), "finished": dict(self.finished), "running": dict(self.running)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.spent.update(state.get("spent", {}))
        self.finished.update(state.get("finished", {}))
        self.running = {k: tuple(v) for k, v in state.get("running", {}).items()}  # type: ignore[misc]

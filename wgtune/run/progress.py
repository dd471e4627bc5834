"""Per-cell progress as a compact table: the live view of a launch and `wgtune status` share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from wgtune.search.budget import CellBudget
from wgtune.tracking.records import ERROR_TAG


@dataclass
class CellProgress:
    """One row: how far a cell's search is, and the best validation worst-group accuracy so far.

    Starts from the plan's `CellBudget` (what MLflow held when the launch began) and counts on.
    """

    label: str
    budget: CellBudget
    running: int = 0
    failed: int = 0
    best: float | None = None
    failing: bool = False
    """Too many of its trials failed in the last launch that ran it, which gave up on it (see their
    `wgtune.error`); the next launch tries it again with a fresh failure cap."""
    allocation: str = ""
    """Adaptive allocation's decision on the cell (`search.allocation.ACTIONS`); empty under fixed allocation."""

    finished: int = field(init=False)
    """Search trials finished: the budget's `search_done`, then counted on."""
    final: int = field(init=False)
    """Final seeds done (`records.final_seed_done`): the budget's `final_done`, then counted on."""

    def __post_init__(self) -> None:
        self.finished = self.budget.search_done
        self.final = self.budget.final_done

    def record(self, value: float | None) -> None:
        """Count a finished search trial and keep the best value."""
        self.finished += 1
        if value is not None and value == value and (self.best is None or value > self.best):
            self.best = value

    def record_final(self) -> None:
        """Count a final seed that gave its result (finished, or diverged for good)."""
        self.final += 1


def render(rows: Iterable[CellProgress], title: str = "") -> str:
    """A fixed-width table, one line per cell, with a total line: readable with dozens of cells."""
    rows = list(rows)
    width = max([len(r.label) for r in rows] + [4])
    lines = [title] if title else []
    lines.append(f"{'cell':<{width}}  {'search':>9}  {'final':>7}  {'run':>3}  {'fail':>4}  best val worst-group")
    for r in rows:
        best = f"{r.best:.3f}" if r.best is not None else "-"
        done, final = f"{r.finished}/{r.budget.search}", f"{r.final}/{r.budget.final}"
        state = f"  FAILING: too many failed trials, see their {ERROR_TAG} in MLflow" if r.failing else ""
        lines.append(f"{r.label:<{width}}  {done:>9}  {final:>7}  {r.running:>3}  {r.failed:>4}  {best}{state}")
    total = f"{sum(r.finished for r in rows)}/{sum(r.budget.search for r in rows)}"
    finals = f"{sum(r.final for r in rows)}/{sum(r.budget.final for r in rows)}"
    running, failed = sum(r.running for r in rows), sum(r.failed for r in rows)
    lines.append(f"{'total':<{width}}  {total:>9}  {finals:>7}  {running:>3}  {failed:>4}")
    return "\n".join(lines)

"""Per-cell progress as a compact table: the live view of a launch and `wgtune status` share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass
class CellProgress:
    """One row: how far a cell's search is, and the best validation worst-group accuracy so far."""

    label: str
    budget: int
    finished: int = 0
    running: int = 0
    failed: int = 0
    best: float | None = None
    final: int = 0
    """Final seeds done: finished, or diverged (that seed's result, never re-trained)."""
    final_budget: int = 0
    failing: bool = False
    """Too many of its trials failed in the last launch that ran it, which gave up on it (see their
    `wgtune.error`); the next launch tries it again with a fresh failure cap."""

    def record(self, value: float | None) -> None:
        """Count a finished trial and keep the best value."""
        self.finished += 1
        if value is not None and value == value and (self.best is None or value > self.best):
            self.best = value


def render(rows: Iterable[CellProgress], title: str = "") -> str:
    """A fixed-width table, one line per cell, with a total line: readable with dozens of cells."""
    rows = list(rows)
    width = max([len(r.label) for r in rows] + [4])
    lines = [title] if title else []
    lines.append(f"{'cell':<{width}}  {'search':>9}  {'final':>7}  {'run':>3}  {'fail':>4}  best val worst-group")
    for r in rows:
        best = f"{r.best:.3f}" if r.best is not None else "-"
        done, final = f"{r.finished}/{r.budget}", f"{r.final}/{r.final_budget}"
        state = "  FAILING: too many failed trials, see their wgtune.error in MLflow" if r.failing else ""
        lines.append(f"{r.label:<{width}}  {done:>9}  {final:>7}  {r.running:>3}  {r.failed:>4}  {best}{state}")
    total = f"{sum(r.finished for r in rows)}/{sum(r.budget for r in rows)}"
    finals = f"{sum(r.final for r in rows)}/{sum(r.final_budget for r in rows)}"
    running, failed = sum(r.running for r in rows), sum(r.failed for r in rows)
    lines.append(f"{'total':<{width}}  {total:>9}  {finals:>7}  {running:>3}  {failed:>4}")
    return "\n".join(lines)

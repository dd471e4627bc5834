"""What a cell may still spend: counted once, from MLflow, by the plan of a launch.

The plan (`wgtune.run.plan`), the router, the live progress table and `wgtune status` all read a
cell's budget from this one value, so "how many trials are left" has one answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellBudget:
    """A cell's search and final-seed budgets, and how much of each MLflow says is done."""

    search: int
    """Search trials the cell gets in all (the grid's `search.num_samples`)."""
    search_done: int = 0
    """Finished search trials (a failed trial is replaced, so it spends nothing)."""
    final: int = 0
    """Re-trainings of the chosen config on fresh seeds (the grid's `final_seeds`)."""
    final_done: int = 0
    """Final seeds that gave their result: finished, or diverged for good (`records.final_seed_done`)."""

    def __post_init__(self) -> None:
        if min(self.search, self.search_done, self.final, self.final_done) < 0:
            raise ValueError(f"a cell budget counts trials, which cannot be negative: {self}")

    @property
    def search_left(self) -> int:
        """Search trials still to run."""
        return max(self.search - self.search_done, 0)

    @property
    def final_left(self) -> int:
        """Final-seed re-trainings still to run, once the search is spent."""
        return max(self.final - self.final_done, 0)

    @property
    def has_work(self) -> bool:
        """Whether a launch has anything to run for the cell."""
        return self.search_left > 0 or self.final_left > 0

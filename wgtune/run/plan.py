"""What a launch will do, computed before anything starts: per cell, its space, budget and config.

Plain data and no Ray, so `--dry-run`, `wgtune status` and `wgtune priors` share it with
the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from wgtune.spec.grid import Cell, Grid, ResourceSpec
from wgtune.search.priors import CellPriors
from wgtune.spec.spaces import SearchSpace, load_space
from wgtune.tracking.records import CellSummary

OBJECTIVE_METRIC = "best/val_worst_acc"
"""What every trial is selected on: the best epoch's validation worst-group accuracy."""


@dataclass(frozen=True)
class PlannedCell:
    """One cell as a launch sees it."""

    cell: Cell
    space: SearchSpace
    base_config: dict[str, Any]
    resources: ResourceSpec
    budget: int
    finished: int = 0
    seed: int = 0
    priors: CellPriors | None = None
    final_seeds: int = 0
    final_finished: int = 0
    final_diverged: int = 0
    """Final seeds on which the chosen config diverged: done, and never re-trained (it would again)."""

    @property
    def remaining(self) -> int:
        """Search trials still to run."""
        return max(self.budget - self.finished, 0)

    @property
    def final_remaining(self) -> int:
        """Final-seed re-trainings of the chosen config still to run (after the search)."""
        return max(self.final_seeds - self.final_finished - self.final_diverged, 0)

    @property
    def has_work(self) -> bool:
        return self.remaining > 0 or self.final_remaining > 0


def plan_cells(grid: Grid, history: Mapping[str, CellSummary] | None = None) -> list[PlannedCell]:
    """Every cell's plan; `history` is what MLflow already holds per cell id."""
    history = history or {}
    plans = []
    for cell in grid.cells():
        space = load_space(
            cell.objective,
            grid.space_overrides(cell),
            override_source=f"{grid.path}: search_space",
        )
        plans.append(
            PlannedCell(
                cell=cell,
                space=space,
                base_config=base_config(grid, cell),
                resources=grid.resources(cell),
                budget=grid.spec.search.num_samples,
                finished=history[cell.id].finished if cell.id in history else 0,
                seed=cell.seed(grid.spec.search.seed),
                final_seeds=grid.spec.final_seeds,
                final_finished=history[cell.id].final_finished if cell.id in history else 0,
                final_diverged=history[cell.id].final_diverged if cell.id in history else 0,
            )
        )
    return plans


def base_config(grid: Grid, cell: Cell) -> dict[str, Any]:
    """The trial settings that do not vary within a cell (searched values are added per trial)."""
    objective = grid.objective_settings(cell.objective)
    train = grid.spec.train
    return {
        "dataset": cell.dataset,
        "dataset_options": grid.dataset_options(cell.dataset),
        "data_root": grid.data_root,
        "model": cell.model,
        "pretrained": cell.pretrained,
        "objective": cell.objective,
        "objective_options": dict(objective.options),
        "environments": objective.environments,
        "epochs": grid.spec.epochs,
        "image_size": train.image_size,
        "num_workers": train.num_workers,
        "amp": train.amp,
        "seed": cell.seed(grid.spec.search.seed) % 2**31,
    }


def trial_config(plan: PlannedCell, params: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    """A full trial config: the cell's base, then the searched values (objective options merged),
    and for a final-seed trial its own seed."""
    updates = plan.space.to_config(params)
    config = dict(plan.base_config)
    options = {**config.get("objective_options", {}), **updates.pop("objective_options", {})}
    config.update(updates)
    config["objective_options"] = options
    if seed is not None:
        config["seed"] = seed
    return config

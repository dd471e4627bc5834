"""What a launch will do, computed before anything starts: per cell, its space, budget and config.

Plain data and no Ray, so `--dry-run`, `wgtune status` and `wgtune priors` share it with
the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wgtune.grid import Cell, Grid, ResourceSpec
from wgtune.priors import CellPriors
from wgtune.spaces import SearchSpace, load_space

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

    @property
    def remaining(self) -> int:
        return max(self.budget - self.finished, 0)


def plan_cells(grid: Grid, finished: dict[str, int] | None = None) -> list[PlannedCell]:
    """Every cell's plan; `finished` counts trials MLflow already holds per cell id."""
    finished = finished or {}
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
                finished=finished.get(cell.id, 0),
                seed=cell.seed(grid.spec.search.seed),
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


def trial_config(plan: PlannedCell, params: dict[str, Any]) -> dict[str, Any]:
    """A full trial config: the cell's base, then the searched values (objective options merged)."""
    updates = plan.space.to_config(params)
    config = dict(plan.base_config)
    options = {**config.get("objective_options", {}), **updates.pop("objective_options", {})}
    config.update(updates)
    config["objective_options"] = options
    return config

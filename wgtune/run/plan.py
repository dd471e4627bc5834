"""What a launch will do, computed before anything starts: per cell, its space, budget and config.

Plain data and no Ray, so `--dry-run`, `wgtune status` and `wgtune priors` share it with
the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from wgtune.search.budget import CellBudget
from wgtune.search.priors import CellPriors
from wgtune.spec.grid import Cell, Grid, ResourceSpec
from wgtune.spec.spaces import SearchSpace, load_space
from wgtune.tracking.records import config_params, logged_config
from wgtune.tracking.summary import CellSummary


@dataclass(frozen=True)
class PlannedCell:
    """One cell as a launch sees it: what it trains, on what, with how much budget left and which priors."""

    cell: Cell
    space: SearchSpace
    base_config: dict[str, Any]
    resources: ResourceSpec
    budget: CellBudget
    seed: int = 0
    priors: CellPriors | None = None


def plan_cells(grid: Grid, history: Mapping[str, CellSummary] | None = None) -> list[PlannedCell]:
    """Every cell's plan; `history` is what MLflow already holds per cell id (none: a new study)."""
    history = history or {}
    plans = []
    for cell in grid.cells():
        space = load_space(
            cell.objective,
            grid.space_overrides(cell),
            override_source=f"{grid.path}: search_space",
        )
        planned = PlannedCell(cell=cell, space=space, base_config=base_config(grid, cell),
                              resources=grid.resources(cell), budget=cell_budget(grid, None),
                              seed=cell.seed(grid.spec.search.seed))
        summary = history.get(cell.id)
        # Runs trained under other fixed settings (the grid changed them since) are not this cell's
        # work: they neither count against its budget nor inform its search (search/priors.py).
        trained = summary.trained_as(fixed_settings(planned), space.searched_keys()) if summary else None
        plans.append(replace(planned, budget=cell_budget(grid, trained)))
    return plans


def cell_budget(grid: Grid, summary: CellSummary | None) -> CellBudget:
    """A cell's budget: the grid's per-cell counts, less what MLflow says is done."""
    return CellBudget(search=grid.spec.search.num_samples, search_done=summary.finished if summary else 0,
                      final=grid.spec.final_seeds, final_done=summary.final_done if summary else 0)


def base_config(grid: Grid, cell: Cell) -> dict[str, Any]:
    """The trial settings that do not vary within a cell (searched values are added per trial)."""
    from trainables.setting import resolve_setting

    objective = grid.objective_settings(cell.objective)
    environments, sampler = resolve_setting(cell.objective, objective.environments, objective.sampler)
    train = grid.spec.train
    return {
        "dataset": cell.dataset,
        "dataset_options": grid.dataset_options(cell.dataset),
        "data_root": grid.data_root,
        "model": cell.model,
        "pretrained": cell.pretrained,
        "objective": cell.objective,
        "objective_options": dict(objective.options),
        # Resolved here, so what MLflow logs (and history is compared on) is what trains, never "None".
        "environments": environments,
        "sampler": sampler,
        "epochs": grid.epochs(cell.dataset),
        "augment": grid.augment(cell.dataset),
        "weights": grid.weights(cell),
        "image_size": train.image_size,
        "num_workers": train.num_workers,
        "amp": train.amp,
        "cache": train.cache,
        "eval_test": train.eval_test,
        "compile": train.compile,
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


def fixed_settings(plan: PlannedCell) -> dict[str, str]:
    """The cell's trial settings that no trial searches, flattened as a trial logs its config
    (`records.config_params`, read back by `records.logged_config`): what a history run must match."""
    config = dict(plan.base_config)
    options = dict(config.get("objective_options", {}))
    for d in plan.space.dims:
        if d.kind == "fixed":
            (options if d.target == "objective_options" else config)[d.name] = d.args[0]
    config["objective_options"] = options
    return logged_config(config_params(config)) or {}

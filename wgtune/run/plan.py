"""What a launch will do, computed before anything starts: per cell, its space, budget and config.

Plain data and no Ray, so `--dry-run`, `wgtune status` and `wgtune priors` share it with
the driver.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from wgtune.search.allocation import AllocationPolicy, CellState, Decision, decide
from wgtune.search.budget import CellBudget
from wgtune.search.ceiling import CellCeiling
from wgtune.search.priors import CellPriors
from wgtune.spec.grid import Cell, Grid, GridError
from wgtune.spec.schema import ResourceSpec
from wgtune.spec.spaces import SearchSpace, SpaceError, load_space
from wgtune.tracking.records import config_params, logged_config, parse_params
from wgtune.tracking.selection import DEFAULT_RULE, rule_of
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
    select: str = DEFAULT_RULE
    """The selection rule whose choice the cell's final seeds re-train (`tracking.selection.SELECTION_RULES`)."""
    final_params: dict[str, Any] | None = None
    """Under another rule than the study's: the searched values of its chosen trial, which the final seeds re-train
    (the study's rule leaves the choice to the router, over the search as it ends)."""
    note: str = ""
    """Why a cell has no work under another rule (its search is not done, or the rule chose as the study did)."""
    search_values: tuple[float, ...] = ()
    """Adaptive allocation: the values of the cell's finished search trials in MLflow (what it is judged by)."""
    allocation: Decision | None = None
    """Adaptive allocation's decision on the cell from MLflow (`allocate`); None under fixed allocation."""
    ceiling: CellCeiling | None = None
    """Its compute limits and what it has spent (grid `budget:`; `run/ceilings.py`); None: no limit."""


def plan_cells(grid: Grid, history: Mapping[str, CellSummary] | None = None,
               select: str = DEFAULT_RULE) -> list[PlannedCell]:
    """Every cell's plan; `history` is what MLflow already holds per cell id (none: a new study).

    Under another selection rule than the study's (`wgtune launch --select`), a cell runs no search: where its
    search is done and the rule chose another config than the study's final seeds re-trained, its budget is
    `final_seeds` re-trainings of that config (less those done), tagged with the rule (`records.SELECT_TAG`).
    """
    rule_of(select)
    history = history or {}
    plans = []
    for cell in grid.cells():
        space = load_space(
            grid.registered_objective(cell.objective),
            grid.space_overrides(cell),
            override_source=f"{grid.path}: search_space",
        )
        config = base_config(grid, cell)
        check_cell_setting(grid, cell, space, config)
        planned = PlannedCell(cell=cell, space=space, base_config=config,
                              resources=grid.resources(cell), budget=cell_budget(grid, None),
                              seed=cell.seed(grid.spec.search.seed))
        summary = history.get(cell.id)
        # Runs trained under other fixed settings (the grid changed them since) are not this cell's
        # work: they neither count against its budget nor inform its search (search/priors.py).
        trained = summary.trained_as(fixed_settings(planned), space.searched_keys()) if summary else None
        planned = replace(planned, budget=cell_budget(grid, trained))
        if select != DEFAULT_RULE:
            planned = rule_plan(grid, planned, trained, select)
        elif trained is not None:
            values = tuple(o.value for o in trained.observations if not o.failed and o.value is not None
                           and math.isfinite(o.value))
            planned = replace(planned, search_values=values)
        plans.append(planned)
    running = {c: s.running for c, s in history.items()}
    return allocate(grid, plans, running) if select == DEFAULT_RULE else plans


def allocate(grid: Grid, plans: list[PlannedCell], running: Mapping[str, int]) -> list[PlannedCell]:
    """Under adaptive allocation (`search/allocation.py`), each cell's decision from what MLflow holds (`running`:
    its search trials running), and a search the decision ended closed: its budget is what it has spent, so a
    relaunch continues the allocation where it stood. Under fixed allocation, `plans` unchanged."""
    policy = AllocationPolicy.of(grid.spec.search)
    if policy is None:
        return plans
    if policy.study_trials < policy.floor * len(plans):
        raise GridError(f"{grid.path}: search.study_trials: {policy.study_trials} cannot give each of the "
                        f"{len(plans)} cells its floor of {policy.floor} trials: set at least "
                        f"{policy.floor * len(plans)}, or lower search.min_trials")
    states = {p.cell.id: CellState(p.budget.search_done + running.get(p.cell.id, 0), p.search_values,
                                   running.get(p.cell.id, 0)) for p in plans}
    decisions = decide(policy, states)
    out = []
    for p in plans:
        d = decisions[p.cell.id]
        if d.ends_search and not states[p.cell.id].running:
            p = replace(p, budget=replace(p.budget, search=p.budget.search_done))
        out.append(replace(p, allocation=d))
    return out


SETTING_DIMS = ("batch_size", "sampler", "environments")
"""The trial-config keys (besides the objective's options) that decide whether an objective can train every
parameter (`trainables.setting.check_setting`)."""


def check_cell_setting(grid: Grid, cell: Cell, space: SearchSpace, config: Mapping[str, Any]) -> None:
    """Refuse, before anything starts, a cell whose objective cannot train every parameter somewhere in its search
    space (an ILC threshold that freezes the classifier's bias at the top of its range, say), naming the grid, the
    cell, the setting and the objective's reason. A searched range is checked at its ends and a choice at every
    option: the conditions `check_setting` applies are monotone in each value (ILC: the threshold, the batch size)."""
    from trainables.config import TrialConfig
    from trainables.datasets import DATASETS
    from trainables.setting import check_setting

    data = DATASETS.get(cell.dataset)
    dims = [d for d in space.dims if d.target == "objective_options" or d.name in SETTING_DIMS]
    base = {"batch_size": TrialConfig.batch_size, **{k: config[k] for k in SETTING_DIMS if k in config}}
    for values in itertools.product(*(_extremes(d.kind, d.args) for d in dims)):
        point = dict(base)
        options = dict(config.get("objective_options", {}))
        for d, value in zip(dims, values):
            (options if d.target == "objective_options" else point)[d.name] = value
        try:
            check_setting(config["objective"], environments=point["environments"], sampler=point["sampler"],
                          options=options, n_classes=data.n_classes, n_groups=data.n_groups,
                          batch_size=int(point["batch_size"]))
        except ValueError as err:
            where = ", ".join(f"{d.name} {v}" for d, v in zip(dims, values) if d.kind != "fixed")
            raise GridError(f"{grid.path}: objectives.{cell.objective}: cell {cell.label}"
                            f"{f' (searched, at {where})' if where else ''}: {err}") from None


def cell_setting(plan: PlannedCell) -> dict[str, str]:
    """What the cell trains: its registered objective, environments and sampler (a searched one as
    `searched: a | b`), as the dry run prints it and the cell's parent run records it."""
    searched = {d.name: d for d in plan.space.searched() if d.target == "config"}
    setting = {"objective": str(plan.base_config["objective"])}
    for key in ("environments", "sampler"):
        dim = searched.get(key)
        setting[key] = (f"searched: {' | '.join(map(str, dim.args))}" if dim is not None and dim.kind == "choice"
                        else str(plan.base_config[key]))
    return setting


def _extremes(kind: str, args: tuple[Any, ...]) -> list[Any]:
    if kind == "fixed":
        return [args[0]]
    if kind == "choice":
        return list(args)
    if kind == "normal":
        return [args[0]]
    return [args[0], args[1]]


def rule_plan(grid: Grid, planned: PlannedCell, trained: CellSummary | None, select: str) -> PlannedCell:
    """The cell under rule `select`: no search, and its final seeds only where the rule's choice needs them."""
    done = planned.budget.search_done
    idle = replace(planned, select=select, budget=CellBudget(search=done, search_done=done))
    if planned.budget.search_left:
        return replace(idle, note=f"its search is not done ({done} of {planned.budget.search} trials): "
                                  "launch the study first")
    choice = trained.choices.get(select) if trained else None
    if choice is None:
        return replace(idle, note=f"no finished search trial logged {rule_of(select).metric}")
    if not choice.needs_retraining:
        return replace(idle, note="the rule chose the config the study's own final seeds re-train")
    try:
        params = parse_params(planned.space, choice.params)
    except (SpaceError, ValueError) as err:
        return replace(idle, note=f"its chosen trial {choice.run_id} is outside the current space: {err}")
    budget = CellBudget(search=done, search_done=done, final=grid.spec.final_seeds, final_done=choice.final_done)
    return replace(idle, budget=budget, final_params=params)


def cell_budget(grid: Grid, summary: CellSummary | None) -> CellBudget:
    """A cell's budget: the grid's per-cell counts, less what MLflow says is done."""
    return CellBudget(search=grid.spec.search.num_samples, search_done=summary.finished if summary else 0,
                      final=grid.spec.final_seeds, final_done=summary.final_done if summary else 0)


def base_config(grid: Grid, cell: Cell) -> dict[str, Any]:
    """The trial settings that do not vary within a cell (searched values are added per trial)."""
    from trainables.setting import resolve_setting

    objective = grid.objective_settings(cell.objective)
    registered = grid.registered_objective(cell.objective)
    environments, sampler = resolve_setting(registered, objective.environments, objective.sampler)
    train = grid.spec.train
    return {
        "dataset": cell.dataset,
        "dataset_options": grid.dataset_options(cell.dataset),
        "data_root": grid.data_root,
        "model": cell.model,
        "pretrained": cell.pretrained,
        "objective": registered,
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

"""Adaptive allocation: floors, plateaued vs rising cells, the study's pool never passed, decisions recomputed
identically from the same history (a relaunch), and the grid keys validated by name."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from hyperopt import hp

from wgtune.run.plan import plan_cells
from wgtune.search.allocation import (
    CAPPED,
    FLOOR,
    PLATEAUED,
    POOL_SPENT,
    RISING,
    AllocationPolicy,
    CellState,
    decide,
    pool_cell,
)
from wgtune.search.budget import CellBudget
from wgtune.search.router import CellRouter, SearchPlan
from wgtune.spec.grid import GridError, load_grid
from wgtune.tracking.summary import CellSummary, Observation

METRIC = "score"
FLAT = (0.70,) * 8  # every trial reached the same value: doubling the search gains nothing
RISING_VALUES = (0.10, 0.15, 0.20, 0.22, 0.25, 0.30, 0.35, 0.80)  # one trial far above the rest: still rising


def _space() -> dict[str, Any]:
    return {"x": hp.uniform("x", 0.0, 1.0), "y": hp.uniform("y", 0.0, 1.0)}


def _plan(cell: str, cap: int, seed: int, history: tuple[float, ...] = ()) -> SearchPlan:
    return SearchPlan(cell, _space(), CellBudget(cap, search_done=len(history)), seed, n_startup=3,
                      history_values=history)


def _score(cell: str, params: dict[str, Any]) -> float:
    """A cell's response surface: a peak whose width differs by cell (narrow: hard to tune)."""
    width = {"a": 0.5, "b": 0.05, "c": 0.2, "d": 0.02}.get(cell, 0.3)
    return math.exp(-((params["x"] - 0.3) ** 2 + (params["y"] - 0.6) ** 2) / (2 * width**2))


def _run(router: CellRouter, concurrency: int = 1, fail_every: int = 0) -> dict[str, int]:
    """Drive the router as Tune does (suggest until None/FINISHED, complete the oldest); trials per cell that
    finished. Every `fail_every`-th trial errors (it is replaced and spends nothing)."""
    running: list[tuple[str, dict]] = []
    finished: dict[str, int] = {}
    n = 0
    while True:
        while len(running) < concurrency:
            suggestion = router.suggest(f"t{n}")
            if not isinstance(suggestion, dict):
                break
            running.append((f"t{n}", suggestion))
            n += 1
        if not running:
            assert router.suggest(f"t{n}") == CellRouter.FINISHED
            return finished
        trial_id, suggestion = running.pop(0)
        if fail_every and int(trial_id[1:]) % fail_every == fail_every - 1 and suggestion.get("phase") != "final":
            router.on_trial_complete(trial_id, error=True)
            continue
        router.on_trial_complete(trial_id, {METRIC: _score(suggestion["cell"], suggestion["params"])})
        if suggestion.get("phase") != "final":
            finished[suggestion["cell"]] = finished.get(suggestion["cell"], 0) + 1


def test_every_cell_gets_its_floor_and_a_floors_only_pool_gives_nothing_more() -> None:
    policy = AllocationPolicy(study_trials=4 * 4, floor=4, cap=12, plateau_gain=0.0)
    router = CellRouter([_plan(c, 12, i) for i, c in enumerate("abcd")], metric=METRIC, allocation=policy)
    assert _run(router, concurrency=3) == {c: 4 for c in "abcd"}
    assert {d.action for d in router.decisions.values()} <= {POOL_SPENT, PLATEAUED}


def test_a_plateaued_cell_gets_no_pool_trials_while_a_rising_one_does() -> None:
    ended: list[tuple[str, dict]] = []
    policy = AllocationPolicy(study_trials=8 + 8 + 6, floor=5, cap=30)
    plans = [_plan("flat", 30, 1, FLAT), _plan("rising", 30, 2, RISING_VALUES)]
    router = CellRouter(plans, metric=METRIC, allocation=policy, on_allocation=lambda c, r: ended.append((c, r)))
    first = router.suggest("t0")
    assert first["cell"] == "rising" and router.decisions["flat"].action == PLATEAUED
    assert ended[0][0] == "flat" and ended[0][1]["action"] == PLATEAUED and "plateau_gain" in ended[0][1]["reason"]
    router.on_trial_complete("t0", {METRIC: 0.3})
    assert _run(router) == {"rising": 5}, "the pool's 6 trials less the one above, all to the rising cell"
    assert router.decisions["rising"].action in (POOL_SPENT, PLATEAUED)


def test_pool_trials_go_to_the_largest_expected_gain_and_only_to_rising_cells() -> None:
    policy = AllocationPolicy(study_trials=100, floor=4, cap=50)
    states = {"flat": CellState(8, FLAT), "rising": CellState(8, RISING_VALUES),
              "steeper": CellState(8, (*RISING_VALUES[:-1], 0.95)), "new": CellState(2, (0.5, 0.6), running=0),
              "full": CellState(50, RISING_VALUES)}
    decisions = decide(policy, states)
    assert [decisions[c].action for c in states] == [PLATEAUED, RISING, RISING, FLOOR, CAPPED]
    assert pool_cell(decisions) == "steeper"
    assert pool_cell(decisions, {"rising": True}) == "rising"
    assert decisions["rising"].gain > 0 and decisions["flat"].doubling < policy.plateau_gain


@pytest.mark.parametrize("concurrency,fail_every", [(1, 0), (4, 0), (4, 5)])
def test_the_study_never_spends_more_than_its_trials(concurrency: int, fail_every: int) -> None:
    policy = AllocationPolicy(study_trials=37, floor=4, cap=15, plateau_gain=0.001)
    router = CellRouter([_plan(c, 15, i) for i, c in enumerate("abcde")], metric=METRIC, allocation=policy)
    finished = _run(router, concurrency, fail_every)
    assert all(n >= 4 for n in finished.values()), f"every cell keeps its floor: {finished}"
    assert sum(finished.values()) <= 37 and max(finished.values()) <= 15


def test_decisions_are_recomputed_identically_from_the_same_history() -> None:
    policy = AllocationPolicy(study_trials=40, floor=4, cap=15, plateau_gain=0.002)
    router = CellRouter([_plan(c, 15, i) for i, c in enumerate("abcd")], metric=METRIC, allocation=policy)
    for n in range(26):  # interrupted part-way: some cells rising, some ended
        suggestion = router.suggest(f"t{n}")
        router.on_trial_complete(f"t{n}", {METRIC: _score(suggestion["cell"], suggestion["params"])})
    router.suggest("probe")  # decide on the completed trials (the probe trial counts as spent)
    router.on_trial_complete("probe", error=True)  # ...and errors: it spends nothing
    states = router.allocation_states()
    assert sum(s.spent for s in states.values()) == 26 and not any(s.running for s in states.values())
    before = decide(policy, states)
    assert {d.action for d in before.values()} - {RISING, FLOOR}, "some cell's search has ended by now"
    # A relaunch sees each cell's values from MLflow, in any order, and its trials as spent.
    shuffled = {name: CellState(s.spent, tuple(random.Random(7).sample(s.values, len(s.values))))
                for name, s in states.items()}
    assert decide(policy, shuffled) == before
    relaunched = CellRouter([_plan(name, 15, 9, s.values) for name, s in states.items()],
                            metric=METRIC, allocation=policy)
    relaunched.suggest("r0")
    assert {n: (d.action, d.spent) for n, d in relaunched.decisions.items()} == \
        {n: (d.action, d.spent) for n, d in before.items()}


GRID = """\
study: alloc
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25, 10x0.5]}
objectives: [erm]
epochs: 1
final_seeds: 2
"""


def _grid(tmp_path: Path, search: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID + f"search: {search}\n")
    return path


def test_the_plan_closes_a_plateaued_cell_from_mlflow_and_keeps_a_rising_one(tmp_path: Path) -> None:
    grid = load_grid(_grid(tmp_path, "{num_samples: 20, allocation: adaptive, study_trials: 30, n_startup: 3}"))
    small, large = grid.cells()

    def summary(cell_id: str, values: tuple[float, ...]) -> CellSummary:
        obs = tuple(Observation(f"{cell_id}{i}", f"t{i}", {}, v) for i, v in enumerate(values))
        return CellSummary(cell_id, "parent", finished=len(values), observations=obs)

    history = {small.id: summary(small.id, FLAT), large.id: summary(large.id, RISING_VALUES)}
    flat, rising = plan_cells(grid, history)
    assert flat.allocation.action == PLATEAUED and flat.budget.search_left == 0 and flat.budget.final_left == 2
    assert rising.allocation.action == RISING and rising.budget.search_left == 12
    fixed = plan_cells(load_grid(_grid(tmp_path, "{num_samples: 20}")), history)
    assert [p.allocation for p in fixed] == [None, None] and [p.budget.search_left for p in fixed] == [12, 12]


@pytest.mark.parametrize("search,expected", [
    ("{allocation: adaptive}", r"search\.study_trials: .*required under allocation: adaptive"),
    ("{study_trials: 40}", r"search\.study_trials: .*only under allocation: adaptive"),
    ("{plateau_gain: 0.01}", r"search\.plateau_gain: .*only under allocation: adaptive"),
    ("{allocation: adaptive, study_trials: 40, min_trials: 20}", r"search\.min_trials: .*cannot pass its cap"),
    ("{allocation: adaptive, study_trials: 40, plateau_gain: -1}", r"search\.plateau_gain: .*greater than or equal"),
    ("{allocation: adaptiv, study_trials: 40}", r"search\.allocation: .*'fixed' or 'adaptive'"),
])
def test_bad_allocation_keys_are_named(tmp_path: Path, search: str, expected: str) -> None:
    with pytest.raises(GridError, match=expected):
        load_grid(_grid(tmp_path, search))


def test_a_pool_smaller_than_the_floors_is_refused_naming_the_key(tmp_path: Path) -> None:
    grid = load_grid(_grid(tmp_path, "{allocation: adaptive, study_trials: 10, n_startup: 5}"))
    with pytest.raises(GridError, match=r"search\.study_trials: 10 cannot give each of the 2 cells its floor of 8"):
        plan_cells(grid)

"""Compute ceilings: the router proposes no trial that would pass a cell's or the study's limit (spent + running
expected + the next one's expected), counts what completed trials spent, keeps GPU and CPU apart, and carries its
count through a save and restore."""

from __future__ import annotations

import math

from hyperopt import hp

from trainables.metrics import DEVICE_SECONDS
from wgtune.search.budget import CellBudget
from wgtune.search.ceiling import CeilingLedger, CellCeiling
from wgtune.search.router import CellRouter, SearchPlan

FINISHED = "FINISHED"


def space() -> dict:
    return {"lr": hp.loguniform("lr", math.log(1e-4), 0.0)}


def router(ceilings: dict[str, CellCeiling], search: int = 4, final: int = 0) -> CellRouter:
    plans = [SearchPlan(cell, space(), CellBudget(search, final=final), i) for i, cell in enumerate(ceilings)]
    return CellRouter(plans, metric="score", ceiling=CeilingLedger(ceilings))


def complete(r: CellRouter, trial_id: str, device_s: float) -> None:
    r.on_trial_complete(trial_id, {"score": 0.5, DEVICE_SECONDS: device_s})


def test_a_cell_stops_where_its_next_trial_would_pass_its_limit() -> None:
    # 100 s spent before this launch, trials expected at 100 s: limit 450 s admits three more, not a fourth.
    r = router({"a": CellCeiling("cpu", cell_limit_s=450.0, cell_spent_s=100.0, search_trial_s=100.0)}, search=10)
    started = []
    for i in range(10):
        got = r.suggest(f"t{i}")
        if not isinstance(got, dict):
            break
        started.append(f"t{i}")
    assert len(started) == 3  # running trials' expected cost counts: 100 + 3 × 100 + 100 > 450
    for trial in started:
        complete(r, trial, 100.0)
    assert r.suggest("late") == FINISHED
    assert r.ceiling.cell_spent("a") == 400.0


def test_what_trials_really_spend_counts_and_unknown_costs_learn_from_this_launch() -> None:
    """No estimate: the first trial is allowed (spent < limit); then the cell's own mean this launch."""
    r = router({"a": CellCeiling("cpu", cell_limit_s=250.0)}, search=10)
    assert isinstance(r.suggest("t0"), dict)
    complete(r, "t0", 120.0)
    assert isinstance(r.suggest("t1"), dict)  # 120 + 120 expected <= 250
    complete(r, "t1", 120.0)
    assert r.suggest("t2") == FINISHED  # 240 + 120 > 250


def test_the_study_limit_holds_per_unit_across_cells() -> None:
    study = 300.0
    r = router({"a": CellCeiling("cpu", study_limit_s=study, study_spent_s=100.0, search_trial_s=100.0),
                "b": CellCeiling("cpu", study_limit_s=study, study_spent_s=100.0, search_trial_s=100.0),
                "g": CellCeiling("gpu", study_limit_s=study, search_trial_s=100.0)}, search=5)
    cells = []
    for i in range(15):
        got = r.suggest(f"t{i}")
        if not isinstance(got, dict):
            break
        cells.append(got["cell"])
        complete(r, f"t{i}", 100.0)
    # CPU: 100 spent, room for two more trials over a and b together; GPU: three, counted on its own.
    assert sorted(c for c in cells if c != "g") == ["a", "b"] and cells.count("g") == 3
    assert r.ceiling.study_spent("cpu") == 300.0 and r.ceiling.study_spent("gpu") == 300.0


def test_final_seeds_are_held_to_the_ceiling_too() -> None:
    r = router({"a": CellCeiling("cpu", cell_limit_s=350.0, search_trial_s=100.0, final_trial_s=200.0)}, search=1,
               final=3)
    search = r.suggest("s")
    assert isinstance(search, dict) and "phase" not in search  # a search trial
    complete(r, "s", 100.0)
    first = r.suggest("f0")
    assert isinstance(first, dict) and first["phase"] == "final"  # 100 + 200 <= 350
    complete(r, "f0", 200.0)
    assert r.suggest("f1") == FINISHED  # 300 + 200 > 350


def test_the_count_survives_a_save_and_restore(tmp_path) -> None:
    ceilings = {"a": CellCeiling("cpu", cell_limit_s=250.0, search_trial_s=100.0)}
    r = router(ceilings, search=5)
    r.suggest("t0")
    complete(r, "t0", 100.0)
    r.suggest("t1")  # running: 100 expected
    r.save(str(tmp_path / "state.pkl"))
    restored = router(ceilings, search=5)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.ceiling.cell_spent("a") == 100.0
    assert restored.suggest("t2") is None  # 100 spent + 100 running + 100 next > 250: waits for t1
    complete(restored, "t1", 100.0)
    assert restored.suggest("t3") == FINISHED

"""CellRouter: routing, budgets, hyperopt bookkeeping, save/restore, and a real Ray Tune run."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hyperopt import STATUS_FAIL, STATUS_OK, hp
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING

from wgtune.search.budget import CellBudget
from wgtune.search.router import CellRouter, SearchPlan

if TYPE_CHECKING:
    from pathlib import Path

FINISHED = "FINISHED"


def _space() -> dict[str, Any]:
    return {
        "lr": hp.loguniform("lr", math.log(1e-5), 0.0),
        "x": hp.uniform("x", 0.0, 1.0),
        "opt": hp.choice("opt", ["sgd", "adam"]),
    }


def _loss(p: dict[str, Any]) -> float:
    return (math.log10(p["lr"]) + 2) ** 2 + (p["x"] - 0.3) ** 2


def _drain(router: CellRouter, n: int, prefix: str = "t") -> list[Any]:
    return [router.suggest(f"{prefix}{i}") for i in range(n)]


def test_budgets_exact_and_cells_interleaved() -> None:
    plans = [SearchPlan("a", _space(), CellBudget(3), 1), SearchPlan("b", _space(), CellBudget(1), 2), SearchPlan("c", _space(), CellBudget(2), 3)]
    router = CellRouter(plans, metric="score")
    out = _drain(router, 8)
    assert [s["cell"] for s in out[:6]] == ["a", "b", "c", "a", "c", "a"]
    assert out[6:] == [None, None], "every slot is started, but a running trial may fail and need a replacement"
    assert {c: p["started"] for c, p in router.progress().items()} == {"a": 3, "b": 1, "c": 2}
    assert router.cell_of("t1") == "b"
    for i in range(6):
        router.on_trial_complete(f"t{i}", {"score": 0.5})
    assert router.suggest("t8") == FINISHED


def test_running_cap_returns_none_then_resumes() -> None:
    router = CellRouter(
        [SearchPlan("a", _space(), CellBudget(2), 1), SearchPlan("b", _space(), CellBudget(2), 2)], metric="score", max_running_per_cell=1
    )
    assert [s["cell"] for s in _drain(router, 2)] == ["a", "b"]
    assert router.suggest("t2") is None
    router.on_trial_complete("t0", {"score": 1.0})
    assert router.suggest("t3")["cell"] == "a"
    assert router.suggest("t4") is None
    router.on_trial_complete("t1", {"score": 1.0})
    assert router.suggest("t5")["cell"] == "b"
    # Every budget slot is started; not FINISHED while trials run, since one may fail.
    assert router.suggest("t6") is None
    assert router.progress()["a"] == {
        "started": 2, "finished": 1, "failed": 0, "errored": 0, "running": 1, "search_trials": 2, "final_started": 0,
        "final_running": 0, "final_failed": 0, "final_diverged": 0, "observed": 0, "gave_up": False, "best": 1.0,
    }
    router.on_trial_complete("t3", {"score": 1.0})
    router.on_trial_complete("t5", {"score": 1.0})
    assert router.suggest("t7") == FINISHED


def test_final_seeds_retrain_the_best_config_once_the_cells_search_has_settled() -> None:
    history = (({"lr": 1e-2, "x": 0.5, "opt": 0}, -0.9),)  # the best so far comes from history
    router = CellRouter([SearchPlan("a", _space(), CellBudget(2, final=3, final_done=1), 1, observations=history)],
                        metric="score")
    first, second = router.suggest("s0"), router.suggest("s1")
    assert {first["proposal"], second["proposal"]} <= {"random", "tpe"}
    assert router.suggest("f0") is None, "the search has trials running: no final yet"
    router.on_trial_complete("s0", {"score": 0.5})
    assert router.suggest("f0") is None
    router.on_trial_complete("s1", {"score": 0.95})

    finals = [router.suggest("f0"), router.suggest("f1")]

    assert [f["proposal"] for f in finals] == ["final", "final"] and all(f["phase"] == "final" for f in finals)
    assert all(f["params"] == second["params"] for f in finals), "the chosen config: best score"
    assert len({f["seed"] for f in finals}) == 2
    assert router.suggest("f2") is None, "finals run: one may fail"
    docs_before = len(router.hyperopt_trials("a").trials)
    router.on_trial_complete("f0", {"score": 0.1})
    assert len(router.hyperopt_trials("a").trials) == docs_before, "final seeds inform no TPE"
    restored = CellRouter([SearchPlan("a", _space(), CellBudget(2, final=3, final_done=1), 1, observations=history)],
                          metric="score")
    restored.set_state(router.get_state())
    assert restored.cell_of("f1") == "a" and restored.suggest("f3") is None
    restored.on_trial_complete("f1", {"score": 0.2})
    assert restored.suggest("f4") == FINISHED


def test_final_seeds_continue_the_numbering_of_earlier_launches() -> None:
    history = (({"lr": 1e-2, "x": 0.5, "opt": 0}, -0.9),)
    earlier = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=3), 1, observations=history)], metric="score")
    later = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=3, final_done=2), 1, observations=history)],
                       metric="score")

    seeds = [earlier.suggest(f"e{i}")["seed"] for i in range(3)]

    assert later.suggest("l0")["seed"] == seeds[2]


def test_proposal_labels_transfer_then_random_then_tpe() -> None:
    firsts = ({"lr": 1e-3, "x": 0.25, "opt": 1}, {"lr": 0.1, "x": 0.75, "opt": 0})
    plan = SearchPlan("a", _space(), CellBudget(6), 7, n_startup=4, observations=(({"lr": 1e-2, "x": 0.5, "opt": 0}, 0.4),), first_points=firsts)
    router = CellRouter([plan], metric="score")
    out = _drain(router, 7)
    # docs before each suggestion: 1, 2, 3 -> transfer, transfer, random; then 4, 5, 6 -> tpe
    assert [s["proposal"] for s in out[:6]] == ["transfer", "transfer", "random", "tpe", "tpe", "tpe"]
    assert out[0]["params"] == {"lr": 1e-3, "x": 0.25, "opt": "adam"}
    assert out[1]["params"] == {"lr": 0.1, "x": 0.75, "opt": "sgd"}
    assert out[6] is None
    docs = router.hyperopt_trials("a").trials
    assert [d["tid"] for d in docs] == list(range(7))
    assert docs[1]["misc"]["vals"] == {"lr": [1e-3], "x": [0.25], "opt": [1]}
    assert docs[1]["misc"]["idxs"] == {"lr": [1], "x": [1], "opt": [1]}
    assert all(d["state"] == JOB_STATE_RUNNING for d in docs[1:])


def test_first_points_beyond_budget_are_dropped() -> None:
    plan = SearchPlan("a", _space(), CellBudget(1), 0, first_points=({"lr": 1e-3, "x": 0.2, "opt": 0},) * 3)
    out = _drain(CellRouter([plan], metric="score"), 2)
    assert out[0]["proposal"] == "transfer" and out[1] is None


def test_observations_look_like_tpe_docs() -> None:
    plan = SearchPlan("a", _space(), CellBudget(1), 0, observations=(({"lr": 1e-2, "x": 0.5, "opt": 1}, 0.25),))
    router = CellRouter([plan], metric="score")
    [doc] = router.hyperopt_trials("a").trials
    assert doc["state"] == JOB_STATE_DONE and doc["tid"] == doc["misc"]["tid"] == 0
    assert doc["result"] == {"loss": 0.25, "status": STATUS_OK}
    assert doc["misc"]["vals"] == {"lr": [1e-2], "x": [0.5], "opt": [1]}
    assert doc["misc"]["idxs"] == {"lr": [0], "x": [0], "opt": [0]}
    assert router.progress()["a"]["best"] == -0.25  # mode max: metric = -loss


def test_informed_posterior_beats_cold_start() -> None:
    space = {"lr": hp.loguniform("lr", math.log(1e-5), 0.0), "x": hp.uniform("x", 0.0, 1.0)}
    rng = np.random.default_rng(0)
    warm, cold = [], []
    for k in range(6):
        points = [{"lr": float(10 ** rng.uniform(-5, 0)), "x": float(rng.uniform(0, 1))} for _ in range(30)]
        observations = tuple((p, _loss(p)) for p in points)
        warm.append(SearchPlan(f"c{k}", space, CellBudget(5), k, observations=observations))
        cold.append(SearchPlan(f"c{k}", space, CellBudget(5), k))
    medians = []
    for plans in (warm, cold):
        out = _drain(CellRouter(plans, metric="loss", mode="min"), 30)
        # distance to the optimum (lr=1e-2, x=0.3) in (log10 lr, x) is sqrt(loss)
        medians.append(float(np.median([math.sqrt(_loss(s["params"])) for s in out])))
    assert {s["proposal"] for s in out} == {"random"}  # cold: 5 suggestions < n_startup docs
    assert medians[0] < 0.6 * medians[1], medians


@pytest.mark.parametrize(
    ("result", "why"),
    [({"score": float("nan")}, "non-finite metric"), ({"other": 1.0}, "no numeric 'score' in result"),
     (None, "no numeric 'score' in result")],
)
def test_unusable_results_recorded_as_fail_and_budget_spent(result: dict | None, why: str) -> None:
    # The trial finished (MLflow counts it), its result is just useless to TPE: no replacement.
    router = CellRouter([SearchPlan("a", _space(), CellBudget(3), 0, n_startup=1)], metric="score")
    _drain(router, 2)
    router.on_trial_complete("t0", result)
    router.on_trial_complete("t1", {"score": 0.75})
    docs = router.hyperopt_trials("a").trials
    # No "loss" key: tpe.suggest would otherwise read it although the status is fail.
    assert docs[0]["state"] == JOB_STATE_DONE
    assert docs[0]["result"] == {"status": STATUS_FAIL, "failure": why}
    assert docs[1]["result"] == {"loss": -0.75, "status": STATUS_OK}
    assert router.hyperopt_trials("a").best_trial["tid"] == 1
    assert router.suggest("t2")["proposal"] == "tpe"  # TPE runs with a failed doc present
    assert router.suggest("t3") is None
    p = router.progress()["a"]
    assert (p["started"], p["finished"], p["failed"], p["errored"], p["running"], p["best"]) == (3, 2, 1, 0, 1, 0.75)


def test_an_errored_trial_is_a_failed_tpe_point_and_gets_a_replacement() -> None:
    router = CellRouter([SearchPlan("a", _space(), CellBudget(2), 0, n_startup=1), SearchPlan("b", _space(), CellBudget(1), 1)], metric="score")
    assert [s["cell"] for s in _drain(router, 3)] == ["a", "b", "a"]
    router.on_trial_complete("t0", None, error=True)  # Tune's retries are spent

    replacement = router.suggest("t3")

    assert replacement["cell"] == "a" and replacement["proposal"] == "tpe"
    doc = router.hyperopt_trials("a").trials[0]
    assert doc["result"] == {"status": STATUS_FAIL, "failure": "trial error"}, "TPE sorts it after every real loss"
    assert router.suggest("t4") is None
    for trial_id in ("t1", "t2", "t3"):
        router.on_trial_complete(trial_id, {"score": 0.5})
    assert router.suggest("t5") == FINISHED
    p = router.progress()["a"]
    assert (p["started"], p["finished"], p["failed"], p["errored"], p["gave_up"]) == (3, 3, 1, 1, False)
    assert p["started"] - p["errored"] == p["search_trials"], "exactly the budget completed"


def test_a_result_that_says_the_trial_failed_is_an_error_and_gets_a_replacement() -> None:
    # A diverged trial ends itself (so that Tune does not retry it) with the failed key in its result.
    router = CellRouter([SearchPlan("a", _space(), CellBudget(1), 0, n_startup=1, max_failed=2)], metric="score",
                        failed_key="diverged")
    router.suggest("t0")
    router.on_trial_complete("t0", {"score": float("nan"), "diverged": "Traceback ... DivergedError"})

    assert router.suggest("t1")["cell"] == "a", "a replacement"
    assert router.hyperopt_trials("a").trials[0]["result"] == {"status": STATUS_FAIL, "failure": "trial error"}
    assert router.progress()["a"]["errored"] == 1


def test_a_cell_whose_every_trial_fails_gives_up_at_its_cap_and_the_others_go_on() -> None:
    told: list[tuple[str, int]] = []
    plans = [SearchPlan("bad", _space(), CellBudget(2, final=1), 0), SearchPlan("good", _space(), CellBudget(3), 1)]
    router = CellRouter(plans, metric="score", on_give_up=lambda cell, n: told.append((cell, n)))
    started: dict[str, list[str]] = {"bad": [], "good": []}
    for i in range(30):
        suggestion = router.suggest(f"t{i}")
        if suggestion == FINISHED:
            break
        assert suggestion is not None, "nothing is running between these steps"
        started[suggestion["cell"]].append(f"t{i}")
        router.on_trial_complete(f"t{i}", {"score": 0.5}, error=suggestion["cell"] == "bad")

    assert suggestion == FINISHED
    # Cap: budget + final seeds = 3 failed trials, then no more; no final phase without a config.
    assert len(started["bad"]) == 3 and told == [("bad", 3)]
    assert len(started["good"]) == 3
    bad, good = router.progress()["bad"], router.progress()["good"]
    assert bad["gave_up"] and bad["errored"] == 3 and bad["final_started"] == 0
    assert not good["gave_up"] and good["finished"] == 3


def test_the_cap_counts_failures_of_this_experiment_and_can_be_set() -> None:
    router = CellRouter([SearchPlan("a", _space(), CellBudget(5), 0, max_failed=1)], metric="score")
    _drain(router, 2)
    router.on_trial_complete("t0", None, error=True)
    # Given up: nothing more will start, so FINISHED although its other trial runs on.
    assert router.suggest("t2") == FINISHED
    router.on_trial_complete("t1", {"score": 0.5})
    assert router.progress()["a"]["finished"] == 2
    with pytest.raises(ValueError, match="max_failed"):
        SearchPlan("a", _space(), CellBudget(1), 0, max_failed=0)


def test_a_failed_final_seed_is_retrained_on_the_same_seed() -> None:
    history = (({"lr": 1e-2, "x": 0.5, "opt": 0}, -0.9),)
    router = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=2), 1, observations=history)], metric="score")
    first, second = router.suggest("f0"), router.suggest("f1")
    router.on_trial_complete("f0", None, error=True)

    again = router.suggest("f2")

    assert again["seed"] == first["seed"] and again["params"] == first["params"] and again["phase"] == "final"
    router.on_trial_complete("f1", {"score": 0.5})
    router.on_trial_complete("f2", {"score": 0.5})
    assert router.suggest("f3") == FINISHED
    p = router.progress()["a"]
    assert (p["final_started"], p["final_failed"]) == (3, 1)
    # The finished seeds are the first two of the sequence, so a later launch continues after them.
    later = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=3, final_done=2), 1, observations=history)],
                       metric="score")
    assert later.suggest("l0")["seed"] not in {first["seed"], second["seed"]}


def test_a_final_seed_that_diverged_is_that_seeds_result_and_is_not_retrained(tmp_path: Path) -> None:
    history = (({"lr": 1e-2, "x": 0.5, "opt": 0}, -0.9),)
    router = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=2), 1, observations=history)], metric="score",
                        failed_key="diverged")
    first, second = router.suggest("f0"), router.suggest("f1")
    router.on_trial_complete("f0", {"score": float("nan"), "diverged": "DivergedError"})
    router.on_trial_complete("f1", {"score": 0.5})

    assert router.suggest("f2") == FINISHED, "the same seed would diverge again: no re-training"
    p = router.progress()["a"]
    assert (p["final_started"], p["final_failed"], p["final_diverged"], p["gave_up"]) == (2, 0, 1, False)
    router.save(str(tmp_path / "state.pkl"))
    restored = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=2), 1, observations=history)], metric="score",
                          failed_key="diverged")
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.progress()["a"]["final_diverged"] == 1 and restored.suggest("f3") == FINISHED
    # A later launch with one more seed counts the diverged one as used: seed numbering goes on after both.
    later = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=3, final_done=2), 1, observations=history)],
                       metric="score")
    assert later.suggest("l0")["seed"] not in {first["seed"], second["seed"]}


def test_restore_keeps_failures_and_pending_replacements(tmp_path: Path) -> None:
    history = (({"lr": 1e-2, "x": 0.5, "opt": 0}, -0.9),)

    def plans() -> list[SearchPlan]:
        return [SearchPlan("a", _space(), CellBudget(2, final=1), 0, observations=history)]

    router = CellRouter(plans(), metric="score")
    _drain(router, 2)
    router.on_trial_complete("t0", None, error=True)
    router.on_trial_complete("t1", {"score": 0.5})
    router.save(str(tmp_path / "searcher.pkl"))
    restored = CellRouter(plans(), metric="score")
    restored.restore(str(tmp_path / "searcher.pkl"))

    assert restored.progress() == router.progress()
    assert restored.suggest("t2") == router.suggest("t2"), "the replacement is not lost"
    for r in (router, restored):
        r.on_trial_complete("t2", {"score": 0.6})
        assert r.suggest("f0")["phase"] == "final"
        r.on_trial_complete("f0", None, error=True)
    restored_again = CellRouter(plans(), metric="score")
    restored_again.set_state(restored.get_state())
    assert restored_again.suggest("f1")["seed"] == router.suggest("f1")["seed"]
    assert restored_again.progress()["a"]["final_failed"] == 1 and restored_again.progress()["a"]["gave_up"] is False


def test_nan_observation_is_a_failed_doc() -> None:
    plan = SearchPlan("a", _space(), CellBudget(1), 0, observations=(({"lr": 1e-2, "x": 0.5, "opt": 0}, float("nan")),))
    [doc] = CellRouter([plan], metric="score").hyperopt_trials("a").trials
    assert doc["result"]["status"] == STATUS_FAIL and "loss" not in doc["result"]


def test_save_restore_continues_without_repeats(tmp_path: Path) -> None:
    def plans() -> list[SearchPlan]:
        obs = (({"lr": 1e-2, "x": 0.4, "opt": 0}, 0.1),)
        return [SearchPlan("a", _space(), CellBudget(6), 11, n_startup=3, observations=obs), SearchPlan("b", _space(), CellBudget(5), 12)]

    def step(router: CellRouter, i: int) -> Any:
        s = router.suggest(f"t{i}")
        if i >= 2:  # keep two trials running across the checkpoint
            router.on_trial_complete(f"t{i - 2}", {"score": -_loss(router_params[f"t{i - 2}"])})
        return s

    original = CellRouter(plans(), metric="score")
    router_params: dict[str, dict] = {}
    for i in range(5):
        router_params[f"t{i}"] = step(original, i)["params"]
    original.save(str(tmp_path / "searcher.pkl"))
    restored = CellRouter(plans(), metric="score")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.progress() == original.progress()
    assert restored.cell_of("t4") == original.cell_of("t4")

    # Both continue identically: same RNG, same Trials, same running trials.
    tail = []
    for i in range(5, 13):
        a, b = step(original, i), step(restored, i)
        assert a == b
        tail.append(b)
        if isinstance(b, dict):
            router_params[f"t{i}"] = b["params"]
    assert tail[-2:] == [None, None], "the last trials still run"
    for r in (original, restored):
        for trial_id in ("t9", "t10"):
            r.on_trial_complete(trial_id, {"score": -_loss(router_params[trial_id])})
        assert r.suggest("t13") == FINISHED
    seen = [tuple(sorted(p.items())) for p in router_params.values()]
    assert len(seen) == len(set(seen)) == 11
    for name in ("a", "b"):
        untimed = [  # completion times differ by a millisecond between the two routers
            [{k: v for k, v in d.items() if not k.endswith("_time")} for d in r.hyperopt_trials(name).trials]
            for r in (original, restored)
        ]
        assert untimed[0] == untimed[1]

    with pytest.raises(ValueError, match="other plans"):
        CellRouter([SearchPlan("a", _space(), CellBudget(6), 11)], metric="score").restore(str(tmp_path / "searcher.pkl"))


def test_same_seeds_same_calls_same_suggestions() -> None:
    def run() -> list[Any]:
        plans = [SearchPlan("a", _space(), CellBudget(8), 3, n_startup=2), SearchPlan("b", _space(), CellBudget(8), 4)]
        router = CellRouter(plans, metric="s")
        out = []
        for i in range(17):
            out.append(router.suggest(f"t{i}"))
            if isinstance(out[-1], dict):
                router.on_trial_complete(f"t{i}", {"s": -_loss(out[-1]["params"])})
        return out

    assert run() == run()


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        CellRouter([SearchPlan("a", _space(), CellBudget(1), 0), SearchPlan("a", _space(), CellBudget(1), 1)], metric="s")
    with pytest.raises(ValueError, match="unknown labels"):
        bad = {"lr": 0.1, "x": 0.1, "opt": 0, "wd": 1}
        CellRouter([SearchPlan("a", _space(), CellBudget(1), 0, first_points=(bad,))], metric="s")
    with pytest.raises(ValueError, match="budget"):
        SearchPlan("a", _space(), CellBudget(-1), 0)
    router = CellRouter([SearchPlan("a", _space(), CellBudget(1), 0)], metric="s", mode="max")
    assert router.set_search_properties("s", "max", {"epochs": 3}) is False
    with pytest.raises(ValueError, match="mode"):
        router.set_search_properties("s", "min", {"epochs": 3})


# --- with a real Ray cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _trainable(config: dict[str, Any]) -> None:
    from ray import tune

    start = time.time()
    time.sleep(0.6)  # long enough for two trials to overlap
    tune.report({"score": -_loss(config["params"]), "start": start, "end": time.time()})


@pytest.mark.slow
def test_tuner_runs_every_cell_budget_and_overlaps_cells(ray_cluster: Any, tmp_path: Path) -> None:
    from ray import tune

    budgets = {"d/r10/erm": 4, "d/r18/erm": 3, "d/r10/dro": 3}
    plans = [SearchPlan(c, _space(), CellBudget(b), i, n_startup=2) for i, (c, b) in enumerate(budgets.items())]
    router = CellRouter(plans, metric="score")
    tuner = tune.Tuner(
        _trainable,
        tune_config=tune.TuneConfig(
            search_alg=router, metric="score", mode="max",
            num_samples=-1, time_budget_s=75,  # -1: FINISHED must end it; the budget is a guard
            # Ray gives a custom Searcher one pending trial at a time unless max_concurrent_trials
            # is set: without it, short trials never overlap.
            max_concurrent_trials=2, reuse_actors=True,
        ),
        run_config=tune.RunConfig(name="grid", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    rows = [(r.config["cell"], r.config["params"], r.metrics) for r in results]
    assert {c: sum(row[0] == c for row in rows) for c in budgets} == budgets
    assert len(rows) == sum(budgets.values())
    for _, params, metrics in rows:
        assert 1e-5 <= params["lr"] <= 1.0 and 0.0 <= params["x"] <= 1.0 and params["opt"] in ("sgd", "adam")
        assert metrics["score"] == pytest.approx(-_loss(params))
    overlaps = [
        (a, b) for a in rows for b in rows
        if a[0] < b[0] and a[2]["start"] < b[2]["end"] and b[2]["start"] < a[2]["end"]
    ]
    assert overlaps, "trials of different cells never ran at the same time"

    # Tune saved our state through save_to_dir -> save; a fresh router restores it.
    restored = CellRouter(plans, metric="score")
    restored.restore_from_dir(str(tmp_path / "grid"))
    assert {c: (p["started"], p["finished"]) for c, p in restored.progress().items()} == {
        c: (b, b) for c, b in budgets.items()
    }
    assert restored.progress() == router.progress()  # Tune drove the very object we passed


def _relaunch_plan(first: CellRouter, budget: int, **kw: Any) -> SearchPlan:
    """Launch 2's plan of cell "a": launch 1's finished trials as observations, the same cell seed."""
    docs = first.hyperopt_trials("a").trials
    space = {"lr": hp.loguniform("lr", math.log(1e-5), 0.0), "x": hp.uniform("x", 0.0, 1.0)}
    observations = tuple(({k: v[0] for k, v in d["misc"]["vals"].items()}, d["result"]["loss"]) for d in docs)
    return SearchPlan("a", space, CellBudget(budget), 11, n_startup=5, observations=observations, **kw)


def _launch_one(budget: int) -> tuple[CellRouter, list[dict[str, Any]]]:
    space = {"lr": hp.loguniform("lr", math.log(1e-5), 0.0), "x": hp.uniform("x", 0.0, 1.0)}
    router = CellRouter([SearchPlan("a", space, CellBudget(budget), 11, n_startup=5)], metric="score", mode="min")
    out = []
    for i in range(budget):
        s = router.suggest(f"l1-{i}")
        router.on_trial_complete(f"l1-{i}", {"score": _loss({**s["params"], "opt": "sgd"})})
        out.append(s)
    return router, out


def test_a_new_experiment_never_re_runs_a_configuration_its_history_holds() -> None:
    """Guards issue 13, defect 3: each cell's RNG restarted from the same seed in a new (not restored)
    experiment, so launch 2's random draws equalled launch 1's: identical wasted trials and duplicate
    observations. Even with the very same seed, a draw that repeats a tried configuration is drawn again."""
    first, launched = _launch_one(3)
    again = CellRouter([_relaunch_plan(first, 3)], metric="score", mode="min")
    tried = {(s["params"]["lr"], s["params"]["x"]) for s in launched}
    for i in range(3):
        s = again.suggest(f"l2-{i}")
        assert (s["params"]["lr"], s["params"]["x"]) not in tried
        tried.add((s["params"]["lr"], s["params"]["x"]))
        again.on_trial_complete(f"l2-{i}", {"score": 1.0})


def test_repeats_are_run_when_the_grid_allows_them() -> None:
    """`search: {allow_repeats: true}`: the same seed then replays the first launch's draws, repeats and all."""
    import dataclasses

    first, launched = _launch_one(3)
    plan = dataclasses.replace(_relaunch_plan(first, 3), allow_repeats=True)
    again = _drain(CellRouter([plan], metric="score", mode="min"), 3)
    tried = [(s["params"]["lr"], s["params"]["x"]) for s in launched]
    assert any((s["params"]["lr"], s["params"]["x"]) in tried for s in again)


def test_a_new_experiment_seeded_from_its_history_draws_anew_and_every_search_trial_trains_on_its_own_seed() -> None:
    """Guards issue 13, defect 3: the draw seed derives from the cell and the history it starts from,
    so launch 2's draws are not launch 1's shifted; and every search trial trains with its own seed
    (all of a cell's search trials trained with the cell's one seed)."""
    from wgtune.spec.grid import derive_seed
    from wgtune.tracking.records import SEED_PARAM

    first, launched = _launch_one(3)
    seeds = [s[SEED_PARAM] for s in launched]
    plan = _relaunch_plan(first, 3, draw_seed=derive_seed(11, "run-1", "run-2", "run-3"))
    again = _drain(CellRouter([plan], metric="score", mode="min"), 3)
    assert len(set(seeds + [s[SEED_PARAM] for s in again])) == 6, "no two search trials share a training seed"
    cold = _drain(CellRouter([SearchPlan("a", plan.space, CellBudget(3), 11, n_startup=5)], metric="score"), 3)
    assert [s["params"] for s in again] != [s["params"] for s in cold]


def test_a_transfer_point_the_cell_has_tried_is_not_proposed_again() -> None:
    """Guards issue 13, defect 4: a transfer point that diverged or errored (a failed observation now)
    was proposed first again on every relaunch."""
    failed = {"lr": 1e-3, "x": 0.25, "opt": 1}
    fresh = {"lr": 0.1, "x": 0.75, "opt": 0}
    plan = SearchPlan("a", _space(), CellBudget(3), 7, observations=((failed, None),), first_points=(failed, fresh))
    out = _drain(CellRouter([plan], metric="score"), 3)
    assert [s["proposal"] for s in out] == ["transfer", "random", "random"]
    assert out[0]["params"] == {"lr": 0.1, "x": 0.75, "opt": "sgd"}


def test_with_a_size_prior_the_start_up_draws_from_it_then_tpe_searches_the_whole_space() -> None:
    """`priors: {narrow: soft}`: the router's start-up draws come from the cell's size-aware prior
    (proposal `prior`), and TPE afterwards searches the original space (mass outside the band stays)."""
    from wgtune.search.soft_prior import NeighbourTrials, build_prior
    from wgtune.spec.spaces import load_space

    space = load_space("erm", objective_defaults={})
    rng = np.random.default_rng(0)

    def trials(n_params: int, best: float) -> NeighbourTrials:
        points = []
        for _ in range(14):
            x = best + rng.normal(0, 0.3)
            points.append(({"lr": 10 ** x, "weight_decay": 1e-4, "batch_size": 64, "optimizer": "sgd"},
                           0.9 - (x - best) ** 2))
        return NeighbourTrials(str(n_params), n_params, tuple(points))

    prior = build_prior(space, [trials(2_000_000, -1.3), trials(50_000_000, -2.0)], 10_000_000, n_startup=5)
    assert prior.informed
    plan = SearchPlan("a", space.to_hyperopt(), CellBudget(8), 3, n_startup=5, prior=prior)
    out = _drain(CellRouter([plan], metric="score"), 5)
    assert [s["proposal"] for s in out] == ["prior"] * 5
    inside = sum(prior.holds(s["params"]) for s in out)
    assert inside >= 2, "most start-up draws fall in the bands (a quarter per dimension comes from the full space)"


def test_another_rules_final_seeds_retrain_its_given_choice_tagged_and_on_the_studys_seeds() -> None:
    """`wgtune launch --select val_avg`: the plan hands the rule's choice (searched values read from MLflow); the
    final seeds re-train it, not the TPE best, carry the rule, and are the study's seed sequence (a paired
    comparison with the study's own final seeds)."""
    history = (({"lr": 1e-2, "x": 0.5, "opt": 0}, -0.9), ({"lr": 1e-3, "x": 0.1, "opt": 1}, -0.5))
    chosen = {"lr": 1e-3, "x": 0.1, "opt": "adam"}  # not the best by the study's metric (loss -0.9)
    study = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=2), 1, observations=history)], metric="score")
    rule = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=2), 1, observations=history,
                                  final_params=chosen, rule="val_avg")], metric="score")

    own = [study.suggest(f"s{i}") for i in range(2)]
    other = [rule.suggest(f"r{i}") for i in range(2)]

    assert all(f["params"] == {"lr": 1e-2, "x": 0.5, "opt": "sgd"} and "select" not in f for f in own)
    assert all(f["params"] == chosen and f["select"] == "val_avg" and f["phase"] == "final" for f in other)
    assert [f["seed"] for f in other] == [f["seed"] for f in own]
    assert rule.suggest("r2") is None and len(rule.hyperopt_trials("a").trials) == 2, "no search, no TPE doc"


def test_the_studys_final_phase_takes_the_earliest_of_tied_best_trials_as_the_report_does() -> None:
    """One rule in one place (`tracking.selection.best_index`): the router and `select_trial` break ties alike."""
    history = (({"lr": 1e-2, "x": 0.5, "opt": 0}, -0.8), ({"lr": 1e-3, "x": 0.1, "opt": 1}, -0.8))
    router = CellRouter([SearchPlan("a", _space(), CellBudget(0, final=1), 1, observations=history)], metric="score")
    assert router.suggest("f0")["params"] == {"lr": 1e-2, "x": 0.5, "opt": "sgd"}

"""CellASHA (`search: {scheduler: asha}`): asynchronous successive halving within each cell only.

Cells differ in difficulty (docs/design.md, decision 5). A trial's rung competitors are the trials of
its own cell: a hard cell whose best trials score far below every trial of an easy cell still
keeps its better trials and stops its worse ones, where one ASHA pooling all cells would stop
every trial of the hard cell at its first rung.

The unit tests drive the scheduler through the hooks Tune calls (on_trial_add, on_trial_result,
on_trial_complete), with real `ray.tune.experiment.Trial` objects (`stub=True`: no trainable, no
Ray instance). The slow test runs a real study: local Ray, the real driver, CellRouter and
StudyTracker on SQLite, with only the trial replaced (`run_experiment`'s `trial_fn`) by a
synthetic one whose per-epoch `val/worst_acc` depends on its cell and its learning rate.
"""

from __future__ import annotations

import math
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from tests.wgtune.studies import planned_study, run_study
from trainables.metrics import SELECTION_METRIC, STEP_METRIC
from wgtune.search.scheduler import CellASHA, make_scheduler

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
MAX_T = 6  # epochs; with grace_period 1 and reduction factor 3 the rungs are at epochs 1 and 3
HARD, EASY = "digits/resnet-small/erm/scratch", "digits/resnet-large/erm/scratch"

# One arrival order of first-rung (epoch 1) results, the two cells interleaved as they are when
# they share the cluster. Every easy-cell trial beats every hard-cell trial.
FIRST_RUNG = [
    (EASY, "e1", 0.80),
    (HARD, "h1", 0.15),
    (EASY, "e2", 0.90),
    (HARD, "h2", 0.20),
    (EASY, "e3", 0.85),
    (HARD, "h3", 0.10),
]


def make_trial(cell: str, trial_id: str, **config: Any) -> Trial:
    """A real Tune trial as the driver's trials look to a scheduler: the cell is a key of the config."""
    return Trial("wgtune_trial", config={"cell": cell, "params": {"lr": 0.01}, **config}, trial_id=trial_id,
                 stub=True)


def result(epoch: int, value: float) -> dict[str, float]:
    return {"training_iteration": epoch, "epoch": float(epoch), STEP_METRIC: value, SELECTION_METRIC: value}


def pooled_asha() -> AsyncHyperBandScheduler:
    """What a stock ASHA over the whole experiment would be, with CellASHA's settings."""
    return AsyncHyperBandScheduler(time_attr="training_iteration", metric=STEP_METRIC, mode="max",
                                   grace_period=1, max_t=MAX_T, reduction_factor=3)


def decisions(scheduler: TrialScheduler, arrivals: list[tuple[str, str, float]], epoch: int = 1,
              trials: dict[str, Trial] | None = None) -> dict[str, str]:
    """Feed results at `epoch` in arrival order (adding each trial first if it is new); the decision on each."""
    trials = {} if trials is None else trials
    out = {}
    for cell, trial_id, value in arrivals:
        if trial_id not in trials:
            trials[trial_id] = make_trial(cell, trial_id)
            scheduler.on_trial_add(None, trials[trial_id])
        out[trial_id] = scheduler.on_trial_result(None, trials[trial_id], result(epoch, value))
    return out


# --- unit: the scheduler's decisions -------------------------------------------------------------


def test_a_relaunch_seeded_with_the_cells_curves_stops_what_the_uninterrupted_launch_stops():
    """Guards issue 13, defect 7: ASHA's rungs started empty in a new experiment, so after a relaunch
    the first trials of every cell could not be stopped however poor. Seeded with the earlier trials'
    per-epoch metric (from MLflow), the relaunched scheduler decides as one that ran them itself."""
    curves = {f"r{i}": [(epoch, 0.5 + 0.1 * i + 0.01 * epoch) for epoch in range(1, MAX_T + 1)] for i in range(3)}
    uninterrupted = CellASHA(grace_period=1, max_t=MAX_T)
    for run, points in curves.items():
        trial = make_trial(HARD, run)
        uninterrupted.on_trial_add(None, trial)
        for epoch, value in points[:-1]:
            uninterrupted.on_trial_result(None, trial, result(epoch, value))
        uninterrupted.on_trial_complete(None, trial, result(*points[-1]))
    relaunched = make_scheduler("asha", 1, MAX_T, history={HARD: curves})
    cold = CellASHA(grace_period=1, max_t=MAX_T)

    poor = [(HARD, "new", 0.4)]
    assert decisions(uninterrupted, poor) == decisions(relaunched, poor) == {"new": STOP}
    assert decisions(cold, poor) == {"new": CONTINUE}, "what an empty rung does"
    good = [(HARD, "better", 0.9)]
    assert decisions(uninterrupted, good) == decisions(relaunched, good) == {"better": CONTINUE}
    assert decisions(uninterrupted, good, epoch=3) == decisions(relaunched, good, epoch=3) == {"better": CONTINUE}



def test_hard_cell_trials_continue_at_a_rung_that_every_easy_cell_trial_beats():
    got = decisions(CellASHA(grace_period=1, max_t=MAX_T), FIRST_RUNG)

    # h1 and h2 are the hard cell's better trials: they go on, although 0.15 and 0.20 are below
    # every easy-cell score (0.80-0.90) recorded at the same rung before them.
    assert got["h1"] == CONTINUE and got["h2"] == CONTINUE


def test_hard_cell_trials_that_are_worse_than_their_own_cell_are_stopped():
    got = decisions(CellASHA(grace_period=1, max_t=MAX_T), FIRST_RUNG)

    # h3 (0.10) is below its own cell's cutoff (the 2/3 quantile of 0.15 and 0.20): stopped.
    assert got["h3"] == STOP
    # Within the easy cell the same rule: e3 (0.85) is below the cutoff of 0.80 and 0.90.
    assert got["e1"] == CONTINUE and got["e2"] == CONTINUE and got["e3"] == STOP


def test_a_pooled_asha_fed_the_same_results_stops_every_hard_cell_trial():
    """Why CellASHA exists: one ASHA over all cells starves the hard cell at its first rung."""
    cell_asha = decisions(CellASHA(grace_period=1, max_t=MAX_T), FIRST_RUNG)
    pooled = decisions(pooled_asha(), FIRST_RUNG)

    hard = [trial_id for cell, trial_id, _ in FIRST_RUNG if cell == HARD]
    assert [pooled[t] for t in hard] == [STOP, STOP, STOP]
    assert [cell_asha[t] for t in hard] == [CONTINUE, CONTINUE, STOP]


def test_a_cells_decisions_do_not_depend_on_other_cells_results():
    hard_only = [arrival for arrival in FIRST_RUNG if arrival[0] == HARD]
    easy_first = sorted(FIRST_RUNG, key=lambda arrival: arrival[0] != EASY)
    hard_first = sorted(FIRST_RUNG, key=lambda arrival: arrival[0] != HARD)

    alone = decisions(CellASHA(grace_period=1, max_t=MAX_T), hard_only)
    for order in (FIRST_RUNG, easy_first, hard_first):
        mixed = decisions(CellASHA(grace_period=1, max_t=MAX_T), order)
        assert {t: mixed[t] for t in alone} == alone


def test_a_hard_cells_best_trial_passes_every_rung_and_runs_to_max_t():
    scheduler, trials = CellASHA(grace_period=1, max_t=MAX_T), {}
    decisions(scheduler, FIRST_RUNG, epoch=1, trials=trials)
    # The easy cell's survivors reach the second rung (epoch 3) first, far above the hard cell.
    decisions(scheduler, [(EASY, "e2", 0.92), (EASY, "e1", 0.84)], epoch=3, trials=trials)
    at_3 = decisions(scheduler, [(HARD, "h2", 0.25), (HARD, "h1", 0.18)], epoch=3, trials=trials)
    assert at_3 == {"h2": CONTINUE, "h1": STOP}

    h2 = trials["h2"]
    for epoch in range(4, MAX_T):
        assert scheduler.on_trial_result(None, h2, result(epoch, 0.25 + epoch / 100)) == CONTINUE
    # At max_t ASHA stops every trial (it is done): the hard cell's best trial got its full budget.
    assert scheduler.on_trial_result(None, h2, result(MAX_T, 0.3)) == STOP


def test_no_trial_is_stopped_before_the_grace_period():
    scheduler, trials = CellASHA(grace_period=3, max_t=MAX_T), {}
    arrivals = [(HARD, "h1", 0.5), (HARD, "h2", 0.4), (HARD, "h3", 0.1), (EASY, "e1", 0.9)]
    for epoch in (1, 2):
        assert set(decisions(scheduler, arrivals, epoch=epoch, trials=trials).values()) == {CONTINUE}
    assert decisions(scheduler, arrivals, epoch=3, trials=trials) == {
        "h1": CONTINUE, "h2": STOP, "h3": STOP, "e1": CONTINUE}


def test_a_completed_trial_is_a_rung_competitor_in_its_own_cell_only():
    scheduler = CellASHA(grace_period=1, max_t=MAX_T)
    # Trials that end at the first rung (ended by their trainable, or stopped) are recorded there
    # through on_trial_complete: an easy one with 0.9, a hard one with 0.2.
    for cell, trial_id, value in [(EASY, "e_done", 0.9), (HARD, "h_done", 0.2)]:
        trial = make_trial(cell, trial_id)
        scheduler.on_trial_add(None, trial)
        scheduler.on_trial_complete(None, trial, result(1, value))

    got = decisions(scheduler, [(HARD, "h_better", 0.25), (HARD, "h_worse", 0.1), (EASY, "e_worse", 0.5)])

    # 0.25 beats its own cell's 0.2 (the easy 0.9 is not its competitor); 0.1 does not; 0.5 loses to 0.9.
    assert got == {"h_better": CONTINUE, "h_worse": STOP, "e_worse": STOP}


def test_final_seed_retrainings_of_the_chosen_config_are_never_stopped_early():
    """Decision 7: the chosen config is re-trained on N seeds to full length; its spread over seeds
    is what the report shows. A seed that happens to sit below the search's rung cutoff is still a
    seed of the chosen config, and must not be cut to one epoch."""
    scheduler, trials = CellASHA(grace_period=1, max_t=MAX_T), {}
    # The search is spent: its trials are recorded at the first rung.
    decisions(scheduler, [(HARD, "s1", 0.30), (HARD, "s2", 0.25), (HARD, "s3", 0.20)], trials=trials)

    for seed, value in [(0, 0.22), (1, 0.18)]:  # the chosen config, other seeds: a little below its search score
        final = make_trial(HARD, f"final{seed}", phase="final", proposal="final", seed=seed)
        scheduler.on_trial_add(None, final)
        for epoch in range(1, MAX_T):
            assert scheduler.on_trial_result(None, final, result(epoch, value)) == CONTINUE, (seed, epoch)


def test_the_grid_asha_setting_builds_a_per_cell_asha_and_fifo_builds_fifo():
    asha = make_scheduler("asha", grace_period=10, max_t=MAX_T)
    assert isinstance(asha, CellASHA)
    # A grace period longer than the training budget is clamped to it (a stock ASHA would refuse it).
    trial = make_trial(HARD, "t")
    asha.on_trial_add(None, trial)
    assert [asha.on_trial_result(None, trial, result(e, 0.5)) for e in range(1, MAX_T + 1)] == [CONTINUE] * 5 + [STOP]

    fifo = make_scheduler("fifo", grace_period=10, max_t=MAX_T)
    assert type(fifo) is FIFOScheduler


def test_each_cell_is_stopped_at_its_own_training_length():
    """Data sets train for different lengths (grid `epochs` per data set): a cell's ASHA ends its trials at its own."""
    asha = make_scheduler("asha", grace_period=10, max_t={HARD: 2, EASY: MAX_T})
    short, long = make_trial(HARD, "s"), make_trial(EASY, "l")
    asha.on_trial_add(None, short)
    asha.on_trial_add(None, long)
    assert [asha.on_trial_result(None, short, result(e, 0.5)) for e in (1, 2)] == [CONTINUE, STOP]
    assert [asha.on_trial_result(None, long, result(e, 0.5)) for e in range(1, MAX_T + 1)] == [CONTINUE] * 5 + [STOP]


def test_the_scheduler_keeps_its_per_cell_rungs_through_pickling():
    """Tune stores the scheduler with the experiment (tuner.pkl) and loads it on restore."""
    scheduler, trials = CellASHA(grace_period=1, max_t=MAX_T), {}
    decisions(scheduler, FIRST_RUNG[:4], trials=trials)

    restored = pickle.loads(pickle.dumps(scheduler))

    assert decisions(restored, FIRST_RUNG[4:], trials=trials) == {"e3": STOP, "h3": STOP}
    assert decisions(restored, [(HARD, "h4", 0.19)]) == {"h4": CONTINUE}  # 0.19 >= cutoff of 0.15, 0.20, 0.10


# --- end to end: a real study with `scheduler: asha` --------------------------------------------

HARD_MODEL, EASY_MODEL = "resnet-10x0.25", "resnet-10x0.5"
TRIALS_PER_CELL = 6
GRID = f"""
study: asha
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [10x0.25, 10x0.5]}}
objectives: [erm]
epochs: {MAX_T}
final_seeds: 0
search: {{num_samples: {TRIALS_PER_CELL}, max_concurrent: 2, n_startup: {TRIALS_PER_CELL}, scheduler: asha,
          grace_period: 1, max_failures: 0}}
resources: {{cpu: 1}}
"""


def synthetic_trial(config: dict, cells: dict) -> None:
    """No training: each epoch reports a val worst-group accuracy rising towards a ceiling set by
    the trial's learning rate (best near 1e-2), on top of its cell's level (hard 0.1, easy 0.7),
    so that every trial of the hard cell scores below every trial of the easy cell."""
    from ray import tune

    base = 0.1 if cells[config["cell"]].cell.model == HARD_MODEL else 0.7
    quality = math.exp(-((math.log10(config["params"]["lr"]) + 2.0) ** 2))
    for epoch in range(1, MAX_T + 1):
        value = base + 0.2 * quality * epoch / MAX_T
        tune.report({"epoch": float(epoch), "val/worst_acc": value, "best/val_worst_acc": value,
                     "best/epoch": float(epoch)})


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_study_with_asha_stops_trials_early_within_each_cell_and_the_hard_cell_still_reaches_max_t(
        tmp_path: Path, ray_local: None) -> None:
    from mlflow import MlflowClient

    from wgtune.spec.grid import load_grid

    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID))
    grid = load_grid(path)
    tracker, cells = planned_study(grid)
    done = run_study(grid, tracker, cells, synthetic_trial, name="asha")
    progress, runs = done.progress, done.runs

    client = MlflowClient(done.uri)
    model_of = {c.cell.id: c.cell.model for c in cells}
    # Per cell (by model): each trial's val/worst_acc, epoch by epoch, as MLflow holds it.
    curves: dict[str, list[list[float]]] = {HARD_MODEL: [], EASY_MODEL: []}
    for run in runs:
        assert run.status == "FINISHED" and "best/val_worst_acc" in run.metrics, run  # stopped early is finished
        history = sorted(client.get_metric_history(run.run_id, STEP_METRIC), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        curves[model_of[run.cell_id]].append([m.value for m in history])
    assert {model: len(trials) for model, trials in curves.items()} == {HARD_MODEL: TRIALS_PER_CELL,
                                                                        EASY_MODEL: TRIALS_PER_CELL}
    assert all(row.finished == TRIALS_PER_CELL for row in progress.values())
    # The premise: the hard cell's best epoch is below the easy cell's worst, so a pooled ASHA would starve it.
    assert max(max(c) for c in curves[HARD_MODEL]) < min(min(c) for c in curves[EASY_MODEL])

    for model, trials in curves.items():
        lengths = sorted(len(c) for c in trials)
        # Trials end at a rung (epochs 1 and 3) or at max_t, nowhere else.
        assert set(lengths) <= {1, 3, MAX_T}, (model, lengths)
        assert lengths[0] < MAX_T, f"{model}: no trial was stopped early: {lengths}"
        assert lengths[-1] == MAX_T, f"{model}: no trial reached max_t: {lengths}"
        # Every early stop is justified within the cell: at the rung where it stopped, some trial of
        # its own cell had done better.
        for curve in trials:
            if len(curve) < MAX_T:
                rung = len(curve)
                assert any(len(other) >= rung and other[rung - 1] > curve[-1] for other in trials), (model, curve)
    # Issue 13, defect 7: a stopped trial is marked (its value is its best so far), and a relaunch
    # reads every observed trial's curve back from MLflow for the new experiment's rungs.
    for run in runs:
        assert run.stopped_early == (len(client.get_metric_history(run.run_id, STEP_METRIC)) < MAX_T), run
    from wgtune.run.study import prepare
    from wgtune.tracking.tracker import StudyTracker

    with StudyTracker(done.uri, grid.spec.study) as again:
        grown = grid.spec.model_copy(update={"search": grid.spec.search.model_copy(update={"num_samples": TRIALS_PER_CELL + 1})})
        replanned = prepare(type(grid)(grown, grid.path), again, register=False)
    for planned in replanned:
        priors = planned.priors
        assert set(priors.curves) == set(priors.observed_runs) and len(priors.curves) == TRIALS_PER_CELL
        for run_id, points in priors.curves.items():
            stored = sorted((m.step, m.value) for m in client.get_metric_history(run_id, STEP_METRIC))
            assert list(points) == stored

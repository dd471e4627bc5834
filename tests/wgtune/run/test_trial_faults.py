"""Trial faults in one real study (local Ray, SQLite MLflow, real trainables): an exception, CUDA out
of memory and a killed worker on a trial's first attempt, a loss that diverges (not retried), a
final-seed trial that always fails, and a cell whose every trial fails.

Faults go in through `launch`'s `trial_fn` seam: `_faulty_trial` runs the real trial
(`bench.soak.run_trial_watching`), claims one fault per trial from a list (claim files in the study's
folder) and logs each attempt's start and epochs, so the tests know which trial got which fault;
`bench.soak.inject` causes the fault.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from bench.soak import inject, run_trial_watching
from wgtune.run.study import LaunchOptions, launch
from wgtune.search.router import TRIAL_ERROR
from wgtune.spec.grid import load_grid

pytestmark = pytest.mark.slow

GRID = """
study: faults
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25, 10x0.5]}
objectives: [erm, groupdro]
exclude: [{model: resnet-10x0.5, objective: groupdro}]
epochs: 3
final_seeds: 1
search: {num_samples: 2, max_concurrent: 2, n_startup: 2, max_failures: 1}
resources: {cpu: 1}
train: {image_size: 16}
"""
ERM = "spurious_digits/resnet-10x0.25/erm/scratch"
DRO = "spurious_digits/resnet-10x0.25/groupdro/scratch"
BAD = "spurious_digits/resnet-10x0.5/erm/scratch"
# Per cell and phase, the faults its trials claim in the order they start; later trials run clean.
FAULTS = {(ERM, "search"): ["exception", "oom"], (DRO, "search"): ["kill", "nan"], (DRO, "final"): ["final"]}
TRANSIENT = ("exception", "oom", "kill")  # on the first attempt only, before epoch 2 is reported


def _claim(root: Path, config: dict[str, Any]) -> str | None:
    if config["cell"] == BAD:
        return "bug"
    for fault in FAULTS.get((config["cell"], config.get("phase", "search")), []):
        try:
            os.close(os.open(root / f"claim-{fault}", os.O_CREAT | os.O_EXCL))  # one trial per fault
            return fault
        except FileExistsError:
            continue
    return None


def _faulty_trial(config: dict[str, Any], cells: Any, root: str) -> None:
    """The real trial, with the fault this trial claimed on its first attempt; each attempt logged."""
    from ray import tune

    folder = Path(root)
    log = folder / f"attempts-{tune.get_context().get_trial_id()}.json"
    attempts = json.loads(log.read_text()) if log.exists() else []
    fault = attempts[0]["fault"] if attempts else _claim(folder, config)
    attempt = {"fault": fault, "cell": config["cell"], "checkpoint": tune.get_checkpoint() is not None, "epochs": []}
    attempts.append(attempt)
    log.write_text(json.dumps(attempts))
    if fault == "bug":
        raise ValueError("injected bug: every trial of this cell fails")
    if fault == "final":
        raise RuntimeError("injected fault: this final-seed trial always fails")
    if fault == "nan":  # a real divergence: DivergedError from the training loop
        config = {**config, "params": {**config["params"], "lr": 1.0e6, "optimizer": "sgd"}}

    def on_epoch(metrics: dict[str, Any]) -> None:
        attempt["epochs"].append(int(metrics["epoch"]))
        log.write_text(json.dumps(attempts))
        if fault in TRANSIENT and len(attempts) == 1 and metrics["epoch"] == 2:
            inject(fault)

    run_trial_watching(config, cells, on_epoch)


class Study:
    """What the test study left: MLflow runs, attempt logs, tracker calls per trial, printed lines."""

    def __init__(self, root: Path, lines: list[str], events: dict[str, list[str]]) -> None:
        from mlflow import MlflowClient

        self.root, self.lines, self.events = root, lines, events
        self.client = MlflowClient(f"sqlite:///{root / 'study' / 'mlflow.db'}")
        experiment = self.client.get_experiment_by_name("faults")
        self.runs = [r for r in self.client.search_runs([experiment.experiment_id], max_results=1000)
                     if r.data.tags.get("wgtune.kind") == "trial"]
        self.attempts = {p.name[len("attempts-"):-len(".json")]: json.loads(p.read_text())
                         for p in root.glob("attempts-*.json")}

    def run_of(self, fault: str) -> Any:
        [trial_id] = [t for t, attempts in self.attempts.items() if attempts[0]["fault"] == fault]
        [run] = [r for r in self.runs if r.data.tags["wgtune.trial_id"] == trial_id]
        return run

    def of_cell(self, cell: str, phase: str = "search", status: str | None = None) -> list:
        return [r for r in self.runs if r.data.tags["wgtune.cell"] == cell and r.data.tags["wgtune.phase"] == phase
                and (status is None or r.info.status == status)]

    def steps(self, run: Any) -> list[int]:
        return [m.step for m in self.client.get_metric_history(run.info.run_id, "val/worst_acc")]

    def table_row(self, label: str) -> str:
        """The cell's row of the table printed when the study finished."""
        table = next(line for line in self.lines if line.startswith("study finished"))
        [row] = [line for line in table.splitlines() if label in line]
        return row

    def error_file(self, run: Any) -> str:
        path = self.client.download_artifacts(run.info.run_id, "error.txt", str(self.root / "downloads" / run.info.run_id))
        return Path(path).read_text()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    import ray

    from wgtune.tracking.tracker import StudyTracker

    root = tmp_path_factory.mktemp("faults")
    (root / "grid.yaml").write_text(textwrap.dedent(GRID))
    events: dict[str, list[str]] = defaultdict(list)  # trial id -> the run's statuses as the driver set them
    handles: dict[str, str] = {}
    start_trial, end_trial = StudyTracker.start_trial, StudyTracker.end_trial

    def spy_start(self: StudyTracker, cell_id: str, trial_id: str, *args: Any, **kwargs: Any) -> str:
        handle = start_trial(self, cell_id, trial_id, *args, **kwargs)
        handles[handle] = trial_id
        events[trial_id].append("RUNNING")
        return handle

    def spy_end(self: StudyTracker, handle: str, status: str, *args: Any, **kwargs: Any) -> None:
        events[handles[handle]].append(status)
        end_trial(self, handle, status, *args, **kwargs)

    lines: list[str] = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(StudyTracker, "start_trial", spy_start)
            patch.setattr(StudyTracker, "end_trial", spy_end)
            faulty = functools.partial(_faulty_trial, root=str(root))
            launch(load_grid(root / "grid.yaml"), LaunchOptions(progress_every_s=3600), lines.append, trial_fn=faulty)
    finally:
        ray.shutdown()
    return Study(root, lines, events)


@pytest.mark.parametrize(
    ("fault", "message"),
    [("exception", "RuntimeError: injected fault: the trainable raised"),
     ("oom", "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"),
     ("kill", "The actor died unexpectedly")],
)
def test_a_transient_fault_is_logged_failed_then_resumed_from_its_checkpoint(study: Study, fault: str,
                                                                               message: str) -> None:
    run = study.run_of(fault)
    trial_id = run.data.tags["wgtune.trial_id"]

    # FAILED with the error while Tune re-queues it; the same run reopened RUNNING for the retry.
    assert study.events[trial_id] == ["RUNNING", "FAILED", "RUNNING", "FINISHED"]
    assert (run.info.status, run.data.tags["wgtune.attempts"]) == ("FINISHED", "2")
    error = run.data.tags["wgtune.error"]
    assert error.startswith("attempt 1 of 2 failed; Tune retries it from its last checkpoint (epoch 2 next)")
    assert message in error and message in study.error_file(run)
    # The retry starts from the epoch-1 checkpoint: epoch 2 next, and MLflow's history has each epoch once.
    first, second = study.attempts[trial_id]
    assert (first["checkpoint"], first["epochs"]) == (False, [1, 2])
    assert (second["checkpoint"], second["epochs"]) == (True, [2, 3])
    assert study.steps(run) == [1, 2, 3]
    # Its cost is the trial's, not the last attempt's: each epoch's images once (the retry carries epoch 1's
    # from its checkpoint), and wall seconds over both attempts up to the checkpoint, in CPU-core-seconds.
    images = {m.step: m.value for m in study.client.get_metric_history(run.info.run_id, "train/images_seen")}
    assert images[3] == 3 * images[1] > 0
    assert run.data.tags["wgtune.device"] == "cpu"
    assert run.data.metrics["train/elapsed_s"] > 0
    assert run.data.metrics["cost/device_s"] == pytest.approx(run.data.metrics["train/elapsed_s"])
    assert any(line.startswith("[retrying]") and trial_id in line and "retrying from epoch 2 (attempt 2/2)" in line
               for line in study.lines)


def test_a_diverged_loss_fails_the_trial_at_once_and_tpe_learns_it(study: Study) -> None:
    run = study.run_of("nan")
    trial_id = run.data.tags["wgtune.trial_id"]

    # No retry: it would resume from the same checkpoint, with the same data order, and diverge again.
    assert study.events[trial_id] == ["RUNNING", "FAILED"]
    assert len(study.attempts[trial_id]) == 1
    assert (run.info.status, run.data.tags["wgtune.attempts"], run.data.tags["wgtune.diverged"]) == ("FAILED", "1", "true")
    error = study.error_file(run)
    assert error.startswith("the training loss diverged; not retried")
    assert error.count("DivergedError: training loss became") == 1
    assert run.data.tags["wgtune.error"].startswith("the training loss diverged")
    assert study.steps(run) == [], "the diverged epoch is not logged as one"
    # But what it spent is: the steps it trained before the loss was found non-finite, and their time.
    assert run.data.metrics["train/images_seen"] > 0 and run.data.metrics["cost/device_s"] > 0
    assert run.data.tags["wgtune.device"] == "cpu"
    assert any(line.startswith("[diverged]") and trial_id in line and "not retried" in line
               and "a new trial replaces it" in line for line in study.lines)
    # The router's state as Tune saved it (CellRouter.save): a failed point to TPE, not a good one.
    [saved] = (study.root / "study" / "ray").glob("faults-*/searcher-state-*.pkl")
    state = pickle.loads(saved.read_bytes())
    [doc] = [d for d in state["cells"][DRO]["docs"] if d["misc"].get("ray_trial_id") == trial_id]
    assert doc["result"] == {"status": "fail", "failure": TRIAL_ERROR}


def test_the_next_launch_starts_tpe_knowing_the_diverged_configuration(study: Study) -> None:
    from wgtune.run.study import prepare
    from wgtune.tracking.tracker import StudyTracker

    run = study.run_of("nan")
    grid = load_grid(study.root / "grid.yaml")
    with StudyTracker(f"sqlite:///{study.root / 'study' / 'mlflow.db'}", "faults") as tracker:
        [dro] = [c for c in prepare(grid, tracker, register=False) if c.cell.id == DRO]
    assert run.info.run_id in dro.priors.observed_runs
    losses = dict(zip(dro.priors.observed_runs, (loss for _, loss in dro.priors.observations)))
    assert losses[run.info.run_id] is None, "a failure to TPE, ranked below every loss"
    assert sum(loss is not None for loss in losses.values()) == 2, "and the two finished trials"
    assert dro.priors.describe()["failed_observations"] == 1, "priors.json says so"


def test_every_cell_ends_with_exactly_its_budget_of_finished_trials(study: Study) -> None:
    for cell in (ERM, DRO):
        assert len(study.of_cell(cell, status="FINISHED")) == 2, cell
        assert len(study.of_cell(cell, phase="final", status="FINISHED")) == 1, cell
    assert len(study.of_cell(ERM)) == 2, "transient faults are retried, not replaced"
    assert len(study.of_cell(DRO, status="FAILED")) == 1 and len(study.of_cell(DRO)) == 3, "the NaN trial was replaced"
    assert not [r for r in study.runs if r.info.status == "RUNNING"]
    for label in ("resnet-10x0.25 · erm", "resnet-10x0.25 · groupdro"):
        assert study.table_row(label).split()[-5:-3] == ["2/2", "1/1"], label


def test_a_final_seed_trial_that_fails_is_replaced_on_its_seed(study: Study) -> None:
    failed = study.run_of("final")
    [finished] = study.of_cell(DRO, phase="final", status="FINISHED")

    assert failed.info.status == "FAILED" and study.events[failed.data.tags["wgtune.trial_id"]] == [
        "RUNNING", "FAILED", "RUNNING", "FAILED"]
    assert "injected fault: this final-seed trial always fails" in failed.data.tags["wgtune.error"]
    error = study.error_file(failed)
    assert error.startswith("attempt 2 of 2 failed; no retries left")
    assert error.count("RuntimeError: injected fault: this final-seed trial always fails") == 2, "both attempts"
    assert error.index("Failure # 2") < error.index("Failure # 1"), "latest first"
    assert finished.data.params["seed"] == failed.data.params["seed"]
    assert study.steps(finished) == [1, 2, 3]


def test_a_cell_whose_every_trial_fails_stops_at_its_cap_and_the_study_goes_on(study: Study) -> None:
    runs = [r for r in study.runs if r.data.tags["wgtune.cell"] == BAD]

    # Its cap: budget + final seeds = 3 failed trials, each tried twice; no final phase without a config.
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FAILED"}
    assert all("ValueError: injected bug: every trial of this cell fails" in r.data.tags["wgtune.error"] for r in runs)
    assert all(len(study.attempts[r.data.tags["wgtune.trial_id"]]) == 2 for r in runs)
    assert sum("no more trials for this cell" in line for line in study.lines) == 1
    assert "FAILING" in study.table_row("resnet-10x0.5 · erm")


def test_status_shows_the_cell_the_launch_gave_up_on(study: Study) -> None:
    from wgtune.run.study import status

    text = status(load_grid(study.root / "grid.yaml"), f"sqlite:///{study.root / 'study' / 'mlflow.db'}")

    [failing] = [line for line in text.splitlines() if "FAILING" in line]
    assert "resnet-10x0.5 · erm" in failing, "that cell only"
    [parent] = [r for r in study.client.search_runs([study.runs[0].info.experiment_id], "tags.`wgtune.kind` = 'cell'")
                if r.data.tags["wgtune.cell"] == BAD]
    assert parent.data.tags["wgtune.failing"] == "gave up after 3 failed trials"

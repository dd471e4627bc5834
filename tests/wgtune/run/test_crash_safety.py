"""Kill the driver mid-study with SIGKILL, launch again, and check that nothing was lost or doubled."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BUDGET = 4
GRID = f"""
study: crash
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [10x0.25]}}
objectives: [erm, groupdro]
epochs: 4
final_seeds: 0
search: {{num_samples: {BUDGET}, max_concurrent: 2, n_startup: 2}}
resources: {{cpu: 1}}
train: {{image_size: 16}}
"""


def start(folder: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return subprocess.Popen(
        [sys.executable, "-m", "wgtune.cli", "launch", "--grid", "grid.yaml"],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: the local Ray it starts goes with it
    )


def trial_runs(folder: Path) -> list:
    from mlflow import MlflowClient

    db = folder / "study" / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("crash")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], "tags.`wgtune.kind` = 'trial'", max_results=1000)
    return list(runs)


def histories(folder: Path, runs: list) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'study' / 'mlflow.db'}")
    return {r.info.run_id: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val/worst_acc")]
            for r in runs}


def statuses(folder: Path) -> dict[str, str]:
    """Trial run id -> status, read straight from SQLite: opening the store with MLflow while the
    driver creates it would race its schema migration."""
    db = folder / "study" / "mlflow.db"
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            rows = connection.execute(
                "SELECT runs.run_uuid, runs.status FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE tags.key = 'wgtune.kind' AND tags.value = 'trial'").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    return dict(rows)


def kill_when_some_finished_and_some_running(folder: Path, driver: subprocess.Popen) -> list:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.stdout.read()
        now = statuses(folder)
        finished = [run for run, status in now.items() if status == "FINISHED"]
        if len(finished) >= 2 and "RUNNING" in now.values():
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
            time.sleep(1)
            # What a dead driver leaves behind (its local Ray) is gone with its machine.
            try:
                os.killpg(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return [r for r in trial_runs(folder) if r.info.run_id in finished]
        time.sleep(0.5)
    raise AssertionError("the study never reached a state with finished and running trials")


@pytest.mark.parametrize("tune_state", ["kept", "deleted"])
def test_a_killed_study_relaunched_finishes_with_nothing_lost_or_doubled(tmp_path, tune_state):
    (tmp_path / "grid.yaml").write_text(textwrap.dedent(GRID))
    driver = start(tmp_path)
    finished_before = kill_when_some_finished_and_some_running(tmp_path, driver)
    before = histories(tmp_path, finished_before)
    if tune_state == "deleted":
        shutil.rmtree(tmp_path / "study" / "ray")

    relaunch = start(tmp_path)
    output, _ = relaunch.communicate(timeout=600)

    assert relaunch.returncode == 0, output
    expected = "resuming the interrupted Ray experiment" if tune_state == "kept" else "new Ray experiment"
    assert expected in output
    runs = trial_runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"], "no run is left RUNNING"
    trial_ids = [r.data.tags["wgtune.trial_id"] for r in runs]
    assert len(trial_ids) == len(set(trial_ids)), "no trial has two MLflow runs"
    for cell in ("spurious_digits/resnet-10x0.25/erm/scratch", "spurious_digits/resnet-10x0.25/groupdro/scratch"):
        done = [r for r in runs if r.data.tags["wgtune.cell"] == cell and r.info.status == "FINISHED"]
        assert len(done) == BUDGET, f"{cell}: {len(done)} finished trials"
    status = {r.info.run_id: r.info.status for r in runs}
    assert all(status[run_id] == "FINISHED" for run_id in before), "no finished trial was lost"
    assert histories(tmp_path, [r for r in runs if r.info.run_id in before]) == before, "nor re-run"
    for run in runs:
        if run.info.status == "FINISHED":
            steps = [step for step, _ in histories(tmp_path, [run])[run.info.run_id]]
            assert steps == sorted(set(steps)) and steps[-1] == 4, "each finished trial has its whole history"

"""The MLflow server goes away in the middle of a study: nothing is lost, whether or not it comes back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.wgtune.commands.test_server import free_port

pytestmark = pytest.mark.slow

EPOCHS = 3
BUDGET = 5
GRID = f"""
study: outage
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [10x0.25]}}
objectives: [erm, groupdro]
epochs: {EPOCHS}
final_seeds: 0
search: {{num_samples: {BUDGET}, max_concurrent: 2, n_startup: 2}}
resources: {{cpu: 1}}
train: {{image_size: 16}}
"""


class Server:
    """A real `mlflow server` (through `wgtune server`) that can be stopped and started again on
    the same port and store, as a tracking server restarted by its admin would be."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
        log = (self.folder.parent / "server.log").open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wgtune.cli", "server", "--backend-store-uri",
             f"sqlite:///{self.folder / 'mlflow.db'}", "--artifacts-destination", str(self.folder / "artifacts"),
             "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not self.answers():
            assert self.process.poll() is None, (self.folder.parent / "server.log").read_text()
            assert time.monotonic() < deadline, "the tracking server did not answer within 120 s"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)  # gone at once, as a crashed server is
        self.process.wait()
        self.process = None
        while self.answers():
            time.sleep(0.1)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path / "server")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def study(tmp_path, monkeypatch, server):
    """A grid on disk and a local Ray; the study tracked through `server`, with the HTTP retry
    settings `wgtune` itself sets."""
    import ray

    from wgtune.spec.grid import load_grid

    (tmp_path / "grid.yaml").write_text(textwrap.dedent(GRID))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield load_grid(tmp_path / "grid.yaml")
    ray.shutdown()


def trial_runs(url: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("outage")
    if experiment is None:
        return []
    return list(client.search_runs([experiment.experiment_id], "tags.`wgtune.kind` = 'trial'", max_results=1000))


def stop_after_first_finished_trial(server: Server, then: float | None) -> threading.Thread:
    """In the background: wait for a finished trial, stop the server, and start it again `then` s later."""
    def outage() -> None:
        deadline = time.monotonic() + 300
        while not any(r.info.status == "FINISHED" for r in trial_runs(server.url)):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        server.stop()
        if then is not None:
            time.sleep(then)
            server.start()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    return thread


def assert_complete(url: str) -> None:
    """Every cell has its budget of finished trials, each with its whole metric history, once."""
    from mlflow import MlflowClient

    runs = trial_runs(url)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 2 * BUDGET
    trial_ids = [r.data.tags["wgtune.trial_id"] for r in runs]
    assert len(set(trial_ids)) == len(trial_ids), "no trial has two runs"
    client = MlflowClient(url)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/worst_acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), f"{run.info.run_name}: steps {steps}"
        assert "best/val_worst_acc" in run.data.metrics and run.data.params


def test_a_server_that_stops_and_comes_back_gets_every_write(study, server, caplog):
    from wgtune.run.study import LaunchOptions, launch

    outage = stop_after_first_finished_trial(server, then=4.0)
    lines: list[str] = []

    launch(study, LaunchOptions(progress_every_s=3600, store_wait_s=120), lines.append)

    outage.join(timeout=5)
    assert not outage.is_alive()
    # Writes met the outage: retried inside an attempt (MLflow's HTTP retries), or kept waiting.
    assert "Connection refused" in caplog.text or "the store is not answering" in caplog.text
    assert_complete(server.url)
    assert not list((study.study_dir / "tracking-spool").glob("*.jsonl")), "nothing is left waiting"


def test_a_server_that_stays_away_keeps_the_results_on_disk_for_the_next_launch(study, server):
    from wgtune.run.study import LaunchOptions, launch
    from wgtune.spec.errors import UserError

    outage = stop_after_first_finished_trial(server, then=None)
    lines: list[str] = []

    with pytest.raises(UserError) as failure:
        launch(study, LaunchOptions(progress_every_s=3600, store_wait_s=1), lines.append)

    outage.join(timeout=5)

    journals = list((study.study_dir / "tracking-spool").glob("*.jsonl"))
    assert len(journals) == 1 and str(journals[0]) in str(failure.value)
    assert "run `wgtune launch --grid" in str(failure.value) and "Nothing is lost" in str(failure.value)
    finished = sum(line.startswith("[") and "val worst-group" in line for line in lines)
    assert finished == 2 * BUDGET, "the study kept training without its tracking server"

    server.start()
    lines.clear()
    launch(study, LaunchOptions(progress_every_s=3600), lines.append)

    assert any(line.startswith("uploaded the tracking writes of 1 earlier launch") for line in lines)
    assert "0 search trials and 0 final-seed trials to run" in "\n".join(lines), "nothing is re-run"
    assert_complete(server.url)
    assert not list((study.study_dir / "tracking-spool").glob("*.jsonl"))

"""`wgtune server`: what it refuses, the command it runs, and a real study tracked through it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from wgtune.cli import main

GRID = """
study: shared
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25]}
objectives: [erm, groupdro]
epochs: 1
final_seeds: 1
search: {num_samples: 2, max_concurrent: 2, n_startup: 2}
resources: {cpu: 1}
train: {image_size: 16}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def execv(monkeypatch):
    """Stands in for the exec into `mlflow server`; records the command line it was given."""
    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(list(argv)))
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "unset by the test")  # restored afterwards
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION")
    return calls


def test_server_runs_mlflow_on_loopback_with_an_absolute_store_and_served_artifacts(tmp_path, monkeypatch, execv,
                                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    port = free_port()

    assert main(["server", "--port", str(port)]) == 0

    (command,) = execv
    flag = {a: b for a, b in zip(command, command[1:]) if a.startswith("--") and not b.startswith("--")}
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert flag["--backend-store-uri"] == f"sqlite:///{tmp_path / 'wgtune_server' / 'mlflow.db'}"
    assert flag["--artifacts-destination"] == str(tmp_path / "wgtune_server" / "artifacts")
    assert flag["--host"] == "127.0.0.1" and flag["--port"] == str(port)
    assert "--serve-artifacts" in command and "--app-name" not in command
    assert (tmp_path / "wgtune_server" / "artifacts").is_dir()
    assert os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    out = capsys.readouterr()
    assert f"http://127.0.0.1:{port}" in out.out and "MLFLOW_TRACKING_URI" in out.out and not out.err


def test_binding_beyond_loopback_needs_allow_remote_and_warns(tmp_path, monkeypatch, execv, capsys):
    monkeypatch.chdir(tmp_path)
    port = free_port()

    assert main(["server", "--host", "0.0.0.0", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "--allow-remote" in err and not execv
    assert not (tmp_path / "wgtune_server").exists()

    assert main(["server", "--host", "0.0.0.0", "--port", str(port), "--allow-remote",
                 "--allowed-hosts", "tracking.lab:5000"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "NO authentication" in err
    (command,) = execv
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--allowed-hosts") + 1] == "tracking.lab:5000"


@pytest.mark.parametrize("args, message", [
    (["--backend-store-uri", "mysql://user@db/mlflow"], "sqlite:///PATH or postgresql://"),
    (["--backend-store-uri", "sqlite://"], "in-memory"),
    (["--basic-auth"], None),  # Flask-WTF or the secret key is missing here
])
def test_bad_stores_and_incomplete_basic_auth_are_refused_before_anything_starts(tmp_path, monkeypatch, execv,
                                                                                  capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)

    assert main(["server", "--port", str(free_port()), *args]) == 2

    err = capsys.readouterr().err
    assert err.startswith("wgtune server: error:") and (message is None or message in err)
    assert not execv


def test_a_postgresql_store_is_passed_on_and_its_password_is_never_printed(tmp_path, monkeypatch, execv, capsys):
    import importlib.util

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # as if psycopg2 were installed
    uri = "postgresql://mlflow:s3cret@db.lab:5432/mlflow"

    assert main(["server", "--port", str(free_port()), "--backend-store-uri", uri]) == 0

    out = capsys.readouterr()
    assert "s3cret" not in out.out + out.err and "PGPASSWORD" in out.err
    (command,) = execv
    assert command[command.index("--backend-store-uri") + 1] == uri


def test_a_port_in_use_is_one_message(tmp_path, monkeypatch, execv, capsys):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["server", "--port", str(taken.getsockname()[1])]) == 2
    assert "in use" in capsys.readouterr().err and not execv


@pytest.fixture
def tracking_server(tmp_path):
    """A real `wgtune server` (so a real `mlflow server`) on a free port, with a SQLite store."""
    folder = tmp_path / "server"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "wgtune.cli", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, stopped as one below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the tracking server did not answer within 120 s"
            time.sleep(0.5)
        yield url, folder
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def cli(*args: str, cwd: Path, uri: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([sys.executable, "-m", "wgtune.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.slow
def test_a_study_tracked_through_the_server_is_read_back_by_status_and_report(tmp_path, monkeypatch,
                                                                              tracking_server, ray_local):
    from mlflow import MlflowClient

    from wgtune.run.study import LaunchOptions, launch
    from wgtune.spec.grid import load_grid

    url, server_dir = tracking_server
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    lines: list[str] = []

    launch(load_grid(path), LaunchOptions(progress_every_s=3600), lines.append)

    study_dir = tmp_path / "study"
    assert not (study_dir / "mlflow.db").exists() and not (study_dir / "artifacts").exists(), (
        "the study kept something locally instead of on the server")
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("shared")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served by the server, uploaded through it
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("wgtune.kind") == "trial"]
    assert len([r for r in runs if r.data.tags.get("wgtune.kind") == "cell"]) == 2
    assert sorted(r.data.tags["wgtune.phase"] for r in trials) == ["final"] * 2 + ["search"] * 4
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert [m.step for m in client.get_metric_history(trials[0].info.run_id, "val/worst_acc")] == [1]
    assert sorted(p.name for p in (server_dir / "artifacts").rglob("priors.json")) == ["priors.json"] * 2

    status = cli("status", "--grid", "grid.yaml", cwd=tmp_path, uri=url)
    assert status.returncode == 0, status.stderr
    assert url in status.stdout
    for objective in ("erm", "groupdro"):
        row = next(line for line in status.stdout.splitlines() if f"resnet-10x0.25 · {objective}" in line)
        assert "2/2" in row, status.stdout

    report = cli("report", "--grid", "grid.yaml", "--out", "report", cwd=tmp_path, uri=url)
    assert report.returncode == 0, report.stderr
    # Over HTTP, MLflow prints "🏃 View run ... at: URL" / "🧪 View experiment ..." to stdout when a run
    # ends (unless MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT is set): not ours, skipped.
    written = [tmp_path / line for line in report.stdout.splitlines()
               if line.strip() and not line.startswith(("🏃", "🧪"))]
    assert written and all(p.exists() for p in written)
    table = next(p for p in written if p.suffix == ".md").read_text()
    assert "resnet-10x0.25" in table and "groupdro" in table
    # The report's files went up to the server too: the artifacts live on its side only.
    uploaded = {p.name for p in (server_dir / "artifacts").rglob("*") if p.is_file()}
    assert {p.name for p in written} <= uploaded

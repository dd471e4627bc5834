"""The command line as a user meets it: help, dry runs, and bad input that stops everything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GRID = """
study: cli
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25]}
objectives: [erm]
epochs: 1
final_seeds: 0
"""


def wgtune(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "wgtune.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def write(folder: Path, text: str) -> Path:
    path = folder / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def assert_nothing_started(folder: Path) -> None:
    assert not (folder / "study").exists(), "no study folder, no MLflow store, no Ray results"
    assert not (folder / "wgtune_studies").exists()


def test_help_does_not_pay_for_torch_ray_or_mlflow(tmp_path):
    code = ("import sys\nfrom wgtune.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)

    assert out.stdout.strip().endswith("[]")


def test_train_help_lists_datasets_model_sizes_and_objectives(tmp_path):
    out = wgtune("train", "--help", cwd=tmp_path)

    assert out.returncode == 0
    for name in ("spurious_digits", "waterbirds", "celebA", "resnet-18", "vit-tiny", "irm", "ilc", "groupdro"):
        assert name in out.stdout


def test_dry_run_prints_cells_spaces_budgets_and_starts_nothing(tmp_path):
    write(tmp_path, GRID)

    out = wgtune("launch", "--grid", "grid.yaml", "--dry-run", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    assert "spurious_digits · resnet-10x0.25 · erm" in out.stdout
    assert "lr ~ loguniform" in out.stdout and "budget 10" in out.stdout and "1 CPU" in out.stdout
    assert "mlflow.db" in out.stdout
    assert_nothing_started(tmp_path)


@pytest.mark.parametrize(
    "grid, message",
    [
        (GRID + "serch: {}\n", "grid.yaml: serch: unknown key. Did you mean 'search'?"),
        (GRID.replace("[erm]", "[erm, dro]"), "objectives: unknown objective 'dro'"),
        (GRID.replace("[spurious_digits]", "[waterbirds]") + "data_root: data\n",
         "data_root: dataset 'waterbirds' not found"),
        (GRID + "search_space: {all: {lr: {loguniform: [0.1, 0.01]}}}\n",
         "grid.yaml: search_space: 'lr': loguniform needs low < high"),
    ],
)
def test_bad_input_is_one_message_a_non_zero_exit_and_nothing_started(tmp_path, grid, message):
    write(tmp_path, grid)

    out = wgtune("launch", "--grid", "grid.yaml", cwd=tmp_path)

    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert_nothing_started(tmp_path)


def test_missing_wilds_data_names_the_expected_layout(tmp_path):
    write(tmp_path, GRID.replace("[spurious_digits]", "[waterbirds]") + "data_root: data\n")

    out = wgtune("launch", "--grid", "grid.yaml", cwd=tmp_path)

    assert "waterbirds_v1.0/metadata.csv" in out.stderr and "RELEASE_v1.0.txt" in out.stderr
    assert not (tmp_path / "data").exists()


def test_an_unreachable_tracking_server_is_detected_before_anything_starts(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    write(tmp_path, GRID)

    out = wgtune("launch", "--grid", "grid.yaml", "--tracking-uri", f"http://user:secret@127.0.0.1:{port}",
                 cwd=tmp_path)

    assert out.returncode == 2
    assert "not reachable" in out.stderr and f"127.0.0.1:{port}" in out.stderr
    assert "secret" not in out.stderr
    assert_nothing_started(tmp_path)


def test_status_of_a_study_never_launched_says_so_and_creates_nothing(tmp_path):
    write(tmp_path, GRID)

    out = wgtune("status", "--grid", "grid.yaml", cwd=tmp_path)

    assert out.returncode == 2 and "has not been launched yet" in out.stderr
    assert_nothing_started(tmp_path)


def test_train_rejects_an_unknown_model_with_the_valid_families(tmp_path):
    out = wgtune("train", "--model", "convnext-tiny", cwd=tmp_path)

    assert out.returncode == 2
    assert "unknown model family 'convnext'" in out.stderr and "resnet" in out.stderr

"""Adaptive allocation in a real small launch: real Ray, hyperopt and MLflow; the pool is never passed, every
cell keeps its floor, each cell's run holds its decision, `status` shows it, and a relaunch spends nothing new."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from wgtune.run.study import LaunchOptions, launch, status
from wgtune.search.allocation import ALLOCATION_FILE
from wgtune.spec.grid import load_grid

pytestmark = pytest.mark.slow

GRID = """
study: alloc
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25]}
objectives: [erm, groupdro]
epochs: 1
final_seeds: 1
search: {num_samples: 6, max_concurrent: 2, n_startup: 2, allocation: adaptive, study_trials: 9, min_trials: 3}
resources: {cpu: 1}
train: {image_size: 16}
"""


def test_an_adaptive_study_keeps_floors_and_pool_and_records_its_decisions(tmp_path: Path) -> None:
    import ray
    from mlflow import MlflowClient

    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        launch(load_grid(path), LaunchOptions(progress_every_s=3600), print_line=lambda _: None)
        grid = load_grid(path)
        client = MlflowClient(f"sqlite:///{grid.study_dir / 'mlflow.db'}")
        [study] = [e for e in client.search_experiments() if e.name == "alloc"]
        runs = client.search_runs([study.experiment_id], max_results=1000)
        search = [r for r in runs if r.data.tags.get("wgtune.kind") == "trial"
                  and r.data.tags.get("wgtune.phase") != "final" and r.info.status == "FINISHED"]
        per_cell: dict[str, int] = {}
        for r in search:
            per_cell[r.data.tags["wgtune.cell"]] = per_cell.get(r.data.tags["wgtune.cell"], 0) + 1
        assert len(per_cell) == 2 and min(per_cell.values()) >= 3 and sum(per_cell.values()) <= 9, per_cell
        for parent in (r for r in runs if r.data.tags.get("wgtune.kind") == "cell"):
            recorded = json.loads(Path(client.download_artifacts(parent.info.run_id, ALLOCATION_FILE,
                                                                 str(tmp_path))).read_text())
            assert recorded["trials"] == per_cell[parent.data.tags["wgtune.cell"]] and recorded["reason"]
        assert "adaptive allocation:" in status(grid)
        launch(load_grid(path), LaunchOptions(progress_every_s=3600), print_line=lambda _: None)
        again = client.search_runs([study.experiment_id], max_results=1000)
        assert len([r for r in again if r.data.tags.get("wgtune.kind") == "trial"]) == \
            len([r for r in runs if r.data.tags.get("wgtune.kind") == "trial"]), "a finished allocation runs nothing"
    finally:
        ray.shutdown()

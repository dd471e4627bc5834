"""A real small study end to end: real Ray, real hyperopt TPE, a real SQLite MLflow store."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from wgtune.run.study import LaunchOptions, launch, status
from wgtune.search.priors import parse_params
from wgtune.spec.grid import load_grid

pytestmark = pytest.mark.slow

GRID = """
study: e2e
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [{sizes}]}}
objectives: [erm, groupdro]
epochs: 2
final_seeds: 0
search: {{num_samples: {n}, max_concurrent: 2, n_startup: 2}}
resources: {{cpu: 1}}
train: {{image_size: 16}}
priors: {{transfer: neighbours, narrow: box, top_k: 2}}
"""


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_grid(folder: Path, sizes: str = "10x0.25", n: int = 3) -> Path:
    path = folder / "grid.yaml"
    path.write_text(textwrap.dedent(GRID.format(sizes=sizes, n=n)))
    return path


def runs_of(grid_path: Path):
    from mlflow import MlflowClient

    grid = load_grid(grid_path)
    client = MlflowClient(f"sqlite:///{grid.study_dir / 'mlflow.db'}")
    experiments = client.search_experiments()
    study = [e for e in experiments if e.name == "e2e"]
    assert len(study) == 1
    runs = client.search_runs([study[0].experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("wgtune.kind") == "cell"]
    children = [r for r in runs if r.data.tags.get("wgtune.kind") == "trial"]
    return client, grid, parents, children


def test_a_study_logs_one_parent_per_cell_and_one_child_per_trial(tmp_path, ray_local):
    path = write_grid(tmp_path)
    lines: list[str] = []

    progress = launch(load_grid(path), LaunchOptions(progress_every_s=3600), lines.append)

    client, grid, parents, children = runs_of(path)
    cells = {c.id: c for c in grid.cells()}
    assert {p.data.tags["wgtune.cell"] for p in parents} == set(cells)
    for parent in parents:
        tags = parent.data.tags
        assert tags["wgtune.dataset"] == "spurious_digits" and tags["wgtune.family"] == "resnet"
        assert int(tags["wgtune.n_params"]) > 0 and tags["wgtune.pretrained"] == "false"
        assert parent.info.status == "FINISHED"
    assert len(children) == 2 * 3
    parent_of = {p.info.run_id: p.data.tags["wgtune.cell"] for p in parents}
    for child in children:
        cell_id = child.data.tags["wgtune.cell"]
        assert parent_of[child.data.tags["mlflow.parentRunId"]] == cell_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["wgtune.proposal"] in {"random", "tpe"}
        space = _space_of(grid, cells[cell_id])
        assert space.contains(parse_params(space, child.data.params)) is None
        for key in ("val/worst_acc", "val/acc_g3", "train/loss"):
            history = client.get_metric_history(child.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        # eval_test: best (the default): test is evaluated at the epochs model selection may report.
        val = sorted(client.get_metric_history(child.info.run_id, "val/worst_acc"), key=lambda m: m.step)
        improving = [m.step for i, m in enumerate(val) if all(m.value > e.value for e in val[:i])]
        for key in ("test/worst_acc", "test/weighted_acc"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == improving, key
        assert "best/val_worst_acc" in child.data.metrics
    assert all(row.finished == 3 for row in progress.values())
    assert any(line.startswith("[3/3]") for line in lines)

    table = status(grid)
    assert "spurious_digits · resnet-10x0.25 · erm" in table and "3/3" in table


def test_relaunching_counts_mlflow_history_and_runs_only_what_is_new(tmp_path, ray_local):
    path = write_grid(tmp_path, n=2)
    launch(load_grid(path), LaunchOptions(progress_every_s=3600), lambda _: None)

    # Same grid: nothing left to run.
    launch(load_grid(path), LaunchOptions(progress_every_s=3600), lambda _: None)
    _, _, _, children = runs_of(path)
    assert len(children) == 2 * 2

    # A bigger budget and a new size: only the difference and the new cells run.
    path = write_grid(tmp_path, sizes="10x0.25, 10x0.5", n=3)
    launch(load_grid(path), LaunchOptions(progress_every_s=3600), lambda _: None)
    _, grid, parents, children = runs_of(path)
    per_cell: dict[str, list] = {}
    for child in children:
        per_cell.setdefault(child.data.tags["wgtune.cell"], []).append(child)
    assert {cell: len(runs) for cell, runs in per_cell.items()} == {c.id: 3 for c in grid.cells()}
    assert len(parents) == 4

    # The old cells' third trial came from TPE informed by their two finished trials...
    old = [c for c in grid.cells() if c.model == "resnet-10x0.25"]
    for cell in old:
        third = max(per_cell[cell.id], key=lambda r: r.info.start_time)
        assert third.data.tags["wgtune.proposal"] == "tpe"
    # ...and each new cell first tried its neighbour's best configuration (transfer).
    new = [c for c in grid.cells() if c.model == "resnet-10x0.5"]
    for cell in new:
        proposals = [r.data.tags["wgtune.proposal"] for r in sorted(per_cell[cell.id], key=lambda r: r.info.start_time)]
        assert proposals[0] == "transfer"

    # `wgtune priors` shows what a next launch would start each cell from, without launching.
    from wgtune.run.study import priors_report
    from wgtune.spec.errors import UserError

    shown = json.loads(priors_report(grid, cell_filter="*/resnet-10x0.5/erm/*"))
    assert shown["cell"] == "spurious_digits/resnet-10x0.5/erm/scratch"
    assert shown["observations"] == 3 and len(shown["observed_runs"]) == 3
    assert shown["transfer"]["neighbours"][0]["cell_id"] == "spurious_digits/resnet-10x0.25/erm/scratch"
    assert shown["transfer"]["narrowed"] is True
    with pytest.raises(UserError, match="no cell of .* matches 'nothing'"):
        priors_report(grid, cell_filter="nothing")
    _, _, _, after = runs_of(path)
    assert len(after) == len(children), "priors starts nothing"


def _space_of(grid, cell):
    from wgtune.spec.spaces import load_space

    return load_space(cell.objective, grid.space_overrides(cell))


def test_final_seeds_retrain_the_chosen_config_and_the_report_matches_mlflow(tmp_path, ray_local):
    from statistics import mean, stdev

    import pandas as pd

    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID.format(sizes="10x0.25", n=2)).replace("final_seeds: 0", "final_seeds: 2"))
    grid = load_grid(path)
    launch(grid, LaunchOptions(progress_every_s=3600), lambda _: None)

    from wgtune.run.reporting import report

    files = report(grid)
    client, _, _, children = runs_of(path)
    table = pd.read_csv(next(f for f in files if f.name == "cells.csv"))
    for cell in grid.cells():
        runs = [r for r in children if r.data.tags["wgtune.cell"] == cell.id]
        search = [r for r in runs if r.data.tags["wgtune.phase"] == "search"]
        final = [r for r in runs if r.data.tags["wgtune.phase"] == "final"]
        assert len(search) == 2 and len(final) == 2
        # The selection rule: best validation worst-group accuracy, the earliest trial on ties.
        chosen = max(sorted(search, key=lambda r: r.info.start_time), key=lambda r: r.data.metrics["best/val_worst_acc"])
        for run in final:
            assert run.data.tags["wgtune.proposal"] == "final"
            # Every trial has its own training seed (issue 13, defect 3); the rest is the chosen config.
            assert {k: v for k, v in run.data.params.items() if k != "seed"} == \
                {k: v for k, v in chosen.data.params.items() if k != "seed"}
        assert len({r.data.params["seed"] for r in final}) == 2
        row = table[(table["model"] == cell.model) & (table["objective"] == cell.objective)].iloc[0]
        worst = [r.data.metrics["best/test_worst_acc"] for r in final]
        assert row["n_seeds"] == 2
        assert row["test_worst_mean"] == pytest.approx(mean(worst))
        assert row["test_worst_std"] == pytest.approx(stdev(worst))
    assert {f.suffix for f in files} >= {".csv", ".md", ".png", ".svg"}
    # Compute: every trial run logs its CPU-core-seconds (1 CPU each here); a cell's total is their sum,
    # its search included, in cells.csv and on the cell's parent run.
    _, _, parents, _ = runs_of(path)
    for cell in grid.cells():
        runs = [r for r in children if r.data.tags["wgtune.cell"] == cell.id]
        assert all(r.data.tags["wgtune.device"] == "cpu" for r in runs)
        assert all(r.data.metrics["train/elapsed_s"] > 0 and
                   r.data.metrics["cost/device_s"] == pytest.approx(r.data.metrics["train/elapsed_s"]) for r in runs)
        total_h = sum(r.data.metrics["cost/device_s"] for r in runs) / 3600
        search_h = sum(r.data.metrics["cost/device_s"] for r in runs if r.data.tags["wgtune.phase"] == "search") / 3600
        row = table[(table["model"] == cell.model) & (table["objective"] == cell.objective)].iloc[0]
        assert row["total_device_hours"] == pytest.approx(total_h) and row["search_device_hours"] == pytest.approx(search_h)
        [parent] = [p for p in parents if p.data.tags["wgtune.cell"] == cell.id]
        assert parent.data.metrics["cell/device_hours"] == pytest.approx(total_h)
    assert "error_vs_compute.png" in {f.name for f in files}
    study_runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id],
                                    "tags.`wgtune.kind` = 'study'")
    logged = [a.path for a in client.list_artifacts(study_runs[0].info.run_id, "report")]
    assert "report/cells.md" in logged and "report/accuracy_vs_size.png" in logged


RELAUNCH_GRID = """
study: e2e
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [10x0.25]}}
objectives: [erm]
epochs: 2
final_seeds: 0
search: {{num_samples: {n}, max_concurrent: 2, n_startup: 5}}
resources: {{cpu: 1}}
train: {{image_size: 16}}
"""


def test_a_relaunch_after_deleting_the_tune_state_never_re_runs_a_configuration_in_mlflow(tmp_path, ray_local):
    """Guards issue 13, defects 3 and 1: a new (not restored) experiment restarted each cell's RNG from
    the same seed, so its random draws replayed the last launch's, and every search trial trained on
    the cell's one seed; and trials logged only their searched values. Here Tune's state is deleted
    between launches: every configuration and every training seed of the cell is new, each trial
    logs its whole resolved config, and the cell's priors.json is the one its router started from."""
    import shutil

    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(RELAUNCH_GRID.format(n=2)))
    launch(load_grid(path), LaunchOptions(progress_every_s=3600), lambda _: None)
    shutil.rmtree(tmp_path / "study" / "ray")
    (tmp_path / "study" / "last_launch.json").unlink()
    path.write_text(textwrap.dedent(RELAUNCH_GRID.format(n=4)))
    launch(load_grid(path), LaunchOptions(progress_every_s=3600), lambda _: None)

    client, grid, [parent], children = runs_of(path)
    [cell] = grid.cells()
    space = _space_of(grid, cell)
    configs = [tuple(sorted(parse_params(space, c.data.params).items())) for c in children]
    assert len(children) == 4 and len(set(configs)) == 4, "no configuration ran twice"
    assert len({c.data.params["seed"] for c in children}) == 4, "every search trial trains on its own seed"
    for child in children:
        params = child.data.params
        assert params["config.epochs"] == "2" and params["config.image_size"] == "16"
        assert params["config.momentum"] == "0.9" and params["config.schedule"] == "cosine"
        assert params["config.objective"] == "erm" and params["config.lr"] == params["lr"]
    saved = json.loads(Path(client.download_artifacts(parent.info.run_id, "priors.json", str(tmp_path))).read_text())
    assert saved["observations"] == 2 and saved["skipped"] == [] and saved["unverified_runs"] == []

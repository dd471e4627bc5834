"""GPU trials across a (simulated) multi-node Ray cluster, through `wgtune.run.driver.run_experiment`.

`ray.cluster_utils.Cluster` starts real Ray nodes as processes on this machine: a head that runs
no trials (where the driver connects, as on a real cluster) and two worker nodes declaring
2 GPUs each. The GPUs do not exist: Ray schedules and assigns them (ids, CUDA_VISIBLE_DEVICES)
as it would real ones, and the trial functions here never touch CUDA. What runs is the real
driver: the grid's resources and overrides, the CellRouter, the tracking callback writing to a
real StudyTracker on SQLite; only the trial is replaced (`trial_fn`) by one that records where
it ran, on which GPU ids, and when.

All nodes of this cluster share one filesystem, so the storage test shows Tune's mechanism
(checkpoints under `storage`, found again by a retry on another node), not network storage.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.wgtune.studies import StudyRun, planned_study, run_study

pytestmark = pytest.mark.slow

NODES, GPUS_PER_NODE, CPUS_PER_NODE = 2, 2, 4
GRID = """
study: cluster
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [{models}]}}
objectives: [erm]
epochs: {epochs}
final_seeds: 0
search: {{num_samples: {n}, max_concurrent: {concurrent}, n_startup: 2, max_failures: {retries}}}
resources: {resources}
train: {{image_size: 16}}
{extra}
"""


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # The driver's node runs no trials (as the KubeRay example's head): every trial needs a worker node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
    for _ in range(NODES):
        cluster.add_node(num_cpus=CPUS_PER_NODE, num_gpus=GPUS_PER_NODE)
    # run_experiment's init_ray keeps a Ray that is already connected.
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def study(tmp_path: Path, *, models: str, resources: str, n: int, concurrent: int, epochs: int = 1,
          retries: int = 0, extra: str = "") -> tuple[Any, Any, list]:
    """A grid in `tmp_path`, its StudyTracker on a fresh SQLite store, and its planned cells."""
    from wgtune.spec.grid import load_grid

    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID.format(models=models, resources=resources, n=n, concurrent=concurrent,
                                                epochs=epochs, retries=retries, extra=extra)))
    grid = load_grid(path)
    return (grid, *planned_study(grid))


def run(grid, tracker, cells, trial_fn, *, name: str = "exp") -> StudyRun:
    return run_study(grid, tracker, cells, trial_fn, name=name, scheduler="fifo")


def where_am_i() -> dict[str, Any]:
    """What Ray gave this trial: its node, its GPU ids and what CUDA would see."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "gpus": sorted(str(g) for g in ray.get_gpu_ids()),
            "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
            "mlflow_loaded": "mlflow" in sys.modules}


def report_done(epoch: int = 1, checkpoint_dir: str | None = None) -> None:
    from ray import tune

    metrics = {"epoch": float(epoch), "val/worst_acc": 0.5, "best/val_worst_acc": 0.5}
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def recording_trial(config: dict, cells: dict, *, out: str, hold_s: float, barrier: int = 0,
                    barrier_timeout_s: float = 90.0, probe_device: bool = False) -> None:
    """Record where and when this trial ran. With `barrier`, hold until that many trials have
    started (each in its own process), which proves they ran at the same time."""
    from ray import tune

    folder = Path(out)
    trial_id = tune.get_context().get_trial_id()
    record = {"trial": trial_id, "cell": config["cell"], "gpu_request": cells[config["cell"]].resources.gpu,
              **where_am_i(), "start": time.time()}
    if probe_device:
        from trainables.training import resolve_device

        record["device"] = str(resolve_device("auto"))
    started = folder / "started"
    started.mkdir(exist_ok=True)
    (started / trial_id).touch()
    if barrier:
        deadline = time.monotonic() + barrier_timeout_s
        while len(list(started.iterdir())) < barrier and time.monotonic() < deadline:
            time.sleep(0.05)
        record["together"] = len(list(started.iterdir()))
    time.sleep(hold_s)
    record["end"] = time.time()
    (folder / f"{trial_id}.json").write_text(json.dumps(record))
    report_done()


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def check_capacity(recs: list[dict[str, Any]]) -> float:
    """At every instant, no GPU of any node is given more than all of it; returns the peak GPUs in use."""
    events = sorted({r["start"] for r in recs})
    peak = 0.0
    for t in events:
        live = [r for r in recs if r["start"] <= t < r["end"]]
        per_gpu: dict[tuple[str, str], float] = {}
        for r in live:
            share = r["gpu_request"] if r["gpu_request"] < 1 else 1.0
            for gpu in r["gpus"]:
                per_gpu[r["node"], gpu] = per_gpu.get((r["node"], gpu), 0.0) + share
        assert all(used <= 1.0 + 1e-9 for used in per_gpu.values()), (t, per_gpu)
        per_node: dict[str, float] = {}
        for r in live:
            per_node[r["node"]] = per_node.get(r["node"], 0.0) + r["gpu_request"]
        assert all(used <= GPUS_PER_NODE + 1e-9 for used in per_node.values()), (t, per_node)
        peak = max(peak, sum(r["gpu_request"] for r in live))
    return peak


def test_half_gpu_trials_pack_four_per_two_gpus_on_every_node(cluster, tmp_path):
    total = NODES * GPUS_PER_NODE * 2
    grid, tracker, cells = study(tmp_path, models="10x0.25", resources="{cpu: 1, gpu: 0.5}", n=total,
                                 concurrent=total)
    out = tmp_path / "records"
    out.mkdir()
    result = run(grid, tracker, cells, functools.partial(recording_trial, out=str(out), hold_s=0.5, barrier=total))

    recs = records(out)
    assert len(recs) == total
    assert all(r["together"] == total for r in recs), "not every half-GPU trial ran at the same time"
    by_node: dict[str, list] = {}
    for r in recs:
        by_node.setdefault(r["node"], []).append(r)
    assert len(by_node) == NODES and all(len(rs) == 4 for rs in by_node.values()), {
        n: len(rs) for n, rs in by_node.items()}
    for rs in by_node.values():  # 4 trials at 0.5 GPU on 2 GPUs at once: 2 per GPU
        per_gpu = [g for r in rs for g in r["gpus"]]
        assert sorted(per_gpu) == ["0", "0", "1", "1"]
    for r in recs:
        assert len(r["gpus"]) == 1 and r["cuda_visible"] == r["gpus"][0]
        assert not r["mlflow_loaded"], "a trial process imported MLflow: only the driver may talk to the store"
    check_capacity(recs)
    assert result.progress[cells[0].cell.id].finished == total
    assert len(result.runs) == total and {t.status for t in result.runs} == {"FINISHED"}


def test_whole_and_fractional_gpu_cells_share_the_cluster_within_capacity(cluster, tmp_path):
    # Resources by model id: the big model takes 2 whole GPUs, the middle one 1, the small ones share.
    resources = ("{cpu: 1, gpu: 0.5, overrides: {resnet-12x0.25: {cpu: 1, gpu: 1}, "
                 "resnet-14x0.25: {cpu: 1, gpu: 2}}}")
    grid, tracker, cells = study(tmp_path, models="10x0.25, 12x0.25, 14x0.25", resources=resources, n=4,
                                 concurrent=8)
    assert {c.cell.model: c.resources.gpu for c in cells} == {"resnet-10x0.25": 0.5, "resnet-12x0.25": 1.0,
                                                                "resnet-14x0.25": 2.0}
    out = tmp_path / "records"
    out.mkdir()
    result = run(grid, tracker, cells, functools.partial(recording_trial, out=str(out), hold_s=1.5,
                                                         probe_device=True))

    recs = records(out)
    assert len(recs) == 12
    for r in recs:
        assert len(r["gpus"]) == max(1, int(r["gpu_request"])), r
        assert len(set(r["gpus"])) == len(r["gpus"])
        assert r["cuda_visible"] == ",".join(r["gpus"])
        # The real trial's device choice in a process Ray gave a GPU, on a machine without CUDA.
        assert r["device"] == "cpu"
    peak = check_capacity(recs)
    # Whole GPUs are never shared: whole-GPU trials alive at once on a node hold distinct ids.
    whole = [r for r in recs if r["gpu_request"] >= 1]
    for a in whole:
        for b in whole:
            if a is not b and a["node"] == b["node"] and a["start"] < b["end"] and b["start"] < a["end"]:
                assert not set(a["gpus"]) & set(b["gpus"]), (a, b)
    mixed = any(a["gpu_request"] >= 1 and b["gpu_request"] < 1 and a["start"] < b["end"] and b["start"] < a["end"]
                for a in recs for b in recs)
    assert mixed, "no whole-GPU trial ever ran beside a fractional one"
    assert peak >= 3, f"at most {peak} of {NODES * GPUS_PER_NODE} GPUs were ever in use"
    assert len({r["node"] for r in recs}) == NODES
    assert all(row.finished == 4 for row in result.progress.values())
    assert len(result.runs) == 12 and {t.status for t in result.runs} == {"FINISHED"}


def test_resolve_device_auto_is_cpu_without_cuda_and_cuda_fails_loudly():
    import torch

    from trainables.training import resolve_device

    assert not torch.cuda.is_available()  # the premise: this machine has no CUDA
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


def checkpointing_trial(config: dict, cells: dict, *, out: str, epochs: int) -> None:
    """Report an epoch with a checkpoint (saying where it was written); on the first attempt,
    wait after epoch 2 to be killed with the node; on a retry, continue from the checkpoint."""
    from ray import tune

    folder = Path(out)
    here = where_am_i()
    checkpoint = tune.get_checkpoint()
    attempt = {**here, "start": time.time(), "resumed_from": 0, "checkpoint_node": None}
    if checkpoint is not None:
        attempt["checkpoint_path"] = checkpoint.path
        with checkpoint.as_directory() as loaded:
            state = json.loads((Path(loaded) / "state.json").read_text())
        attempt["resumed_from"], attempt["checkpoint_node"] = state["epoch"], state["node"]
    with (folder / "attempts.jsonl").open("a") as log:
        log.write(json.dumps(attempt) + "\n")
    for epoch in range(attempt["resumed_from"] + 1, epochs + 1):
        with tempfile.TemporaryDirectory() as saved:
            (Path(saved) / "state.json").write_text(json.dumps({"epoch": epoch, "node": here["node"]}))
            report_done(epoch, saved)
        if epoch == 2 and checkpoint is None:
            (folder / "ready").write_text(here["node"])
            time.sleep(120)  # until the node goes away (the test fails if it does not)


def test_a_trial_whose_node_dies_resumes_from_its_checkpoint_on_another_node(cluster, tmp_path):
    from mlflow import MlflowClient

    # gpu: 2 takes a whole node, so the retry cannot land beside the failed attempt.
    grid, tracker, cells = study(tmp_path, models="10x0.25", resources="{cpu: 1, gpu: 2}", n=1, concurrent=1,
                                 epochs=3, retries=1, extra="storage: shared-storage")
    storage = tmp_path / "shared-storage"  # the grid's storage: stands for the folder every node mounts
    assert grid.storage == str(storage)
    out = tmp_path / "records"
    out.mkdir()
    removed: list[str] = []

    def kill_the_trials_node() -> None:
        deadline = time.monotonic() + 120
        while not (out / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        node_id = (out / "ready").read_text()
        time.sleep(3)  # the driver registers epoch 2's checkpoint (an actor call after the report)
        node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)
        removed.append(node_id)

    killer = threading.Thread(target=kill_the_trials_node, daemon=True)
    killer.start()
    try:
        result = run(grid, tracker, cells, functools.partial(checkpointing_trial, out=str(out), epochs=3))
    finally:
        killer.join(timeout=5)
        if removed:  # give the next tests their cluster back
            cluster.add_node(num_cpus=CPUS_PER_NODE, num_gpus=GPUS_PER_NODE)

    attempts = [json.loads(line) for line in (out / "attempts.jsonl").read_text().splitlines()]
    assert removed and len(attempts) == 2, attempts
    first, retry = attempts
    assert first["node"] == removed[0] and retry["node"] != first["node"]
    assert retry["resumed_from"] == 2 and retry["checkpoint_node"] == first["node"]
    assert Path(retry["checkpoint_path"]).is_relative_to(storage)
    (trial_run,) = result.runs  # one MLflow run for the trial, across both nodes
    assert trial_run.status == "FINISHED"
    history = MlflowClient(result.uri).get_metric_history(trial_run.run_id, "val/worst_acc")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert result.progress[cells[0].cell.id].finished == 1

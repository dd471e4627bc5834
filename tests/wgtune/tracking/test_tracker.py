"""StudyTracker against a real SQLite MLflow store; URI resolution, redaction and the store check."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from wgtune.spec.errors import UserError
from wgtune.tracking.records import CellRecord
from wgtune.tracking.store import (
    TrackingUnavailableError,
    artifact_root,
    check_tracking,
    redact,
    resolve_tracking_uri,
)
from wgtune.tracking.tracker import StudyTracker

WATERBIRDS = CellRecord("waterbirds/resnet-18/groupdro/scratch", "waterbirds", "resnet", "18", "resnet-18",
                      11_200_000, "groupdro", False)
CELEBA = CellRecord("celeba/resnet-50/erm/pretrained", "celeba", "resnet", "50", "resnet-50",
                  23_500_000, "erm", True)
EPOCH_KEYS = [f"val/group_{g}_acc" for g in range(4)] + [f"train/group_{g}_loss" for g in range(4)] + [
    "train/loss", "train/acc", "val/loss", "val/acc", "val/worst_acc", "test/loss", "test/acc",
    "test/worst_acc", "lr", "epoch_time_s", "train/worst_loss", "val/avg_acc", "test/avg_acc", "grad_norm"]


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database with its tables made once: creating them costs ~1.5 s per store."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def no_tracking_uri_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def study_dir(tmp_path: Path, migrated_db: Path) -> Path:
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    return tmp_path


def tracker_for(study_dir: Path, **kwargs: object) -> StudyTracker:
    return StudyTracker(resolve_tracking_uri(study_dir, None), "sizes", artifact_root(study_dir),
                        flush_interval_s=0.05, backoff_s=0.01, **kwargs)  # type: ignore[arg-type]


def client_for(study_dir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=resolve_tracking_uri(study_dir, None))


def all_runs(client: MlflowClient, experiment_id: str) -> list:
    return list(client.search_runs([experiment_id], max_results=1000))


# -- experiment and cells ----------------------------------------------------------------------

def test_experiment_and_parent_run_are_made_once_and_reused(study_dir: Path) -> None:
    with tracker_for(study_dir) as first:
        parent = first.cell_run(WATERBIRDS)
        assert first.cell_run(WATERBIRDS) == parent
        pretrained_parent = first.cell_run(CELEBA)
    with tracker_for(study_dir) as second:
        assert second.experiment_id == first.experiment_id
        assert second.cell_run(WATERBIRDS) == parent

    client = client_for(study_dir)
    assert [e.name for e in client.search_experiments()].count("sizes") == 1
    experiment = client.get_experiment(first.experiment_id)
    assert experiment.artifact_location in (artifact_root(study_dir), Path(artifact_root(study_dir)).as_uri())
    assert len(all_runs(client, first.experiment_id)) == 2
    run = client.get_run(parent)
    assert run.info.run_name == "wb/r18/dro"  # short; the cell id is its wgtune.cell tag
    assert run.info.status == "RUNNING"
    assert {k: v for k, v in run.data.tags.items() if k.startswith("wgtune.")} == {
        "wgtune.kind": "cell", "wgtune.cell": "waterbirds/resnet-18/groupdro/scratch",
        "wgtune.dataset": "waterbirds", "wgtune.family": "resnet", "wgtune.size": "18",
        "wgtune.model": "resnet-18", "wgtune.n_params": "11200000", "wgtune.objective": "groupdro",
        "wgtune.pretrained": "false"}
    celeba = client.get_run(pretrained_parent)
    assert celeba.info.run_name == "celeba/r50/erm/pt"
    assert celeba.data.tags["wgtune.pretrained"] == "true"


def test_log_cell_json_writes_an_artifact_of_the_parent_run(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        parent = tracker.cell_run(WATERBIRDS)
        tracker.log_cell_json(WATERBIRDS.cell_id, "priors.json", {"observations": 3, "path": Path("/x")})
    saved = client_for(study_dir).download_artifacts(parent, "priors.json", str(study_dir))
    assert json.loads(Path(saved).read_text()) == {"observations": 3, "path": "/x"}


def test_close_cell_finishes_the_parent_and_a_relaunch_reopens_it(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        parent = tracker.cell_run(WATERBIRDS)
        tracker.close_cell(WATERBIRDS.cell_id)
        tracker.flush()
        assert client_for(study_dir).get_run(parent).info.status == "FINISHED"
        assert tracker.cell_run(WATERBIRDS) == parent
    assert client_for(study_dir).get_run(parent).info.status == "RUNNING"


# -- trials ------------------------------------------------------------------------------------

def test_trials_record_params_full_histories_summary_status_and_parent(study_dir: Path) -> None:
    history = {step: {key: round(0.001 * step + i / 97, 6) for i, key in enumerate(EPOCH_KEYS)}
               for step in range(5)}
    params = {"lr": 0.0123, "batch_size": 64, "objective_options": {"eta": 0.01, "step": {"size": 2}},
              "wandb_api_key": "abc", "hf_token": "x", "max_tokens": 7, "data_url": "http://u:p@host/x",
              "run_note": "ghp_" + "x" * 36}
    long_error = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "RuntimeError: boom"
    with tracker_for(study_dir) as tracker:
        parent = tracker.cell_run(WATERBIRDS)
        good = tracker.start_trial(WATERBIRDS.cell_id, "t_00001", params, "tpe")
        bad = tracker.start_trial(WATERBIRDS.cell_id, "t_00002", {"lr": 1.0}, "random", phase="seed")
        for step, metrics in history.items():
            tracker.log_epoch(good, metrics, step)
            if step < 2:
                tracker.log_epoch(bad, {"train/loss": float("nan"), "note": "not a number"}, step)
        tracker.end_trial(good, "FINISHED", summary={"best/val_worst_acc": 0.71, "best/epoch": 3})
        tracker.end_trial(bad, "FAILED", error=long_error)
        good, bad = tracker.run_id(good), tracker.run_id(bad)

    client = client_for(study_dir)
    run = client.get_run(good)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "wb/r18/dro · t01"
    assert run.data.params == {"lr": "0.0123", "batch_size": "64", "objective_options.eta": "0.01",
                               "objective_options.step.size": "2", "max_tokens": "7",
                               "data_url": "http://***@host/x"}
    tags = run.data.tags
    assert (tags["mlflow.parentRunId"], tags["wgtune.kind"], tags["wgtune.cell"]) == (
        parent, "trial", WATERBIRDS.cell_id)
    assert (tags["wgtune.trial_id"], tags["wgtune.proposal"], tags["wgtune.phase"]) == ("t_00001", "tpe", "search")
    assert "wgtune.error" not in tags
    for key in EPOCH_KEYS:
        points = sorted((m.step, m.value) for m in client.get_metric_history(good, key))
        assert points == [(step, history[step][key]) for step in range(5)]
    assert run.data.metrics["best/val_worst_acc"] == 0.71
    assert run.data.metrics["best/epoch"] == 3

    failed = client.get_run(bad)
    assert failed.info.status == "FAILED"
    assert failed.info.run_name == "wb/r18/dro · t02"
    assert failed.data.tags["wgtune.phase"] == "seed"
    assert failed.data.tags["wgtune.error"].startswith("Traceback")
    assert len(failed.data.tags["wgtune.error"]) <= 5000
    assert "note" not in failed.data.metrics
    assert [m.step for m in client.get_metric_history(bad, "train/loss")] == [0, 1]
    error_file = Path(client.download_artifacts(bad, "error.txt", str(study_dir)))
    assert error_file.read_text() == long_error


def test_a_known_trial_gets_its_run_back_even_after_a_restart(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        handle = tracker.start_trial(WATERBIRDS.cell_id, "t_00001", {"lr": 0.1}, "tpe")
        run_id = tracker.run_id(handle)
        assert tracker.run_id(tracker.start_trial(WATERBIRDS.cell_id, "t_00001", {"lr": 0.1}, "tpe")) == run_id
        tracker.end_trial(handle, "KILLED")
    with tracker_for(study_dir) as relaunched:
        relaunched.cell_run(WATERBIRDS)
        assert relaunched.run_id(relaunched.start_trial(WATERBIRDS.cell_id, "t_00001", {"lr": 0.1}, "tpe")) == run_id
        second = relaunched.run_id(relaunched.start_trial(WATERBIRDS.cell_id, "t_00002", {"lr": 0.2}, "tpe"))
    client = client_for(study_dir)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(second).info.run_name == "wb/r18/dro · t02"
    assert len(all_runs(client, relaunched.experiment_id)) == 3


def test_close_orphans_kills_running_trials_not_kept(study_dir: Path) -> None:
    with tracker_for(study_dir) as crashed:
        crashed.cell_run(WATERBIRDS)
        handles = [crashed.start_trial(WATERBIRDS.cell_id, f"t_{i}", {"lr": i}, "tpe") for i in range(4)]
        crashed.end_trial(handles[3], "FINISHED")
        ids = [crashed.run_id(h) for h in handles]
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        live_handle = tracker.start_trial(WATERBIRDS.cell_id, "t_new", {"lr": 9}, "tpe")
        killed = tracker.close_orphans(keep={ids[0]})
        live = tracker.run_id(live_handle)
    assert sorted(killed) == sorted(ids[1:3])
    status = {run_id: client_for(study_dir).get_run(run_id).info.status for run_id in [*ids, live]}
    assert status == {ids[0]: "RUNNING", ids[1]: "KILLED", ids[2]: "KILLED", ids[3]: "FINISHED",
                      live: "RUNNING"}


def test_threads_may_log_while_the_writer_writes(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        run_ids: dict[int, str] = {}

        def trial(i: int) -> None:
            run_ids[i] = tracker.start_trial(WATERBIRDS.cell_id, f"t{i}", {"lr": i}, "tpe")
            for step in range(5):
                tracker.log_epoch(run_ids[i], {"val/worst_acc": i + step / 10}, step)
            tracker.end_trial(run_ids[i], "FINISHED")
            run_ids[i] = tracker.run_id(run_ids[i])

        threads = [threading.Thread(target=trial, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        records = tracker.trial_runs(status="FINISHED")
    assert sorted(r.trial_id for r in records) == [f"t{i}" for i in range(6)]
    assert sorted(r.run_name[-1] for r in records) == ["1", "2", "3", "4", "5", "6"]
    client = client_for(study_dir)
    for i, run_id in run_ids.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/worst_acc"))
        assert history == [(step, i + step / 10) for step in range(5)]


def test_a_deleted_experiment_is_a_user_error_not_a_new_one(study_dir: Path) -> None:
    client = client_for(study_dir)
    client.delete_experiment(client.create_experiment("sizes"))
    with pytest.raises(UserError, match="is deleted: restore it"):
        tracker_for(study_dir)


def test_end_trial_rejects_an_unknown_status(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
            tracker.end_trial("abc", "DONE")


# -- reading -----------------------------------------------------------------------------------

def test_cell_summaries_and_trial_runs_match_what_was_logged(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        tracker.cell_run(CELEBA)
        outcomes = [("FINISHED", 0.5), ("FINISHED", 0.8), ("FINISHED", None), ("FAILED", None),
                    ("KILLED", None), ("RUNNING", None)]
        ids = {}
        for i, (status, value) in enumerate(outcomes):
            handle = tracker.start_trial(WATERBIRDS.cell_id, f"w{i}", {"lr": i / 10}, "tpe")
            ids[f"w{i}"] = tracker.run_id(handle)
            if status != "RUNNING":
                tracker.end_trial(handle, status, summary={"best/val_worst_acc": value} if value else None,
                                  error="boom" if status == "FAILED" else None)
        celeba = tracker.start_trial(CELEBA.cell_id, "c0", {"lr": 0.3}, "transfer")
        tracker.end_trial(celeba, "FINISHED", summary={"best/val_worst_acc": 0.4})

        summaries = tracker.cell_summaries()
        waterbirds = summaries[WATERBIRDS.cell_id]
        assert (waterbirds.finished, waterbirds.failed, waterbirds.killed, waterbirds.running) == (3, 1, 1, 1)
        assert (waterbirds.best_value, waterbirds.best_run_id) == (0.8, ids["w1"])
        assert waterbirds.parent_run_id == tracker.cell_run(WATERBIRDS)
        # The errored w3 is a failed observation, as its launch's router recorded it (issue 13, defect 7).
        assert sorted((o.trial_id, o.params["lr"], o.value, o.failed) for o in waterbirds.observations) == [
            ("w0", "0.0", 0.5, False), ("w1", "0.1", 0.8, False), ("w2", "0.2", None, False), ("w3", "0.3", None, True)]
        assert (summaries[CELEBA.cell_id].finished, summaries[CELEBA.cell_id].best_value) == (1, 0.4)
        assert tracker.cell_summaries(mode="min")[WATERBIRDS.cell_id].best_value == 0.5

        records = tracker.trial_runs(WATERBIRDS.cell_id)
        assert [r.trial_id for r in records] == [f"w{i}" for i in range(6)]
        failed = tracker.trial_runs(status="FAILED")
        assert [(r.trial_id, r.error, r.proposal) for r in failed] == [("w3", "boom", "tpe")]
        assert [r.trial_id for r in tracker.trial_runs(status="FINISHED")] == ["w0", "w1", "w2", "c0"]
        assert tracker.trial_runs(CELEBA.cell_id)[0].metrics == {"best/val_worst_acc": 0.4}


def test_diverged_and_errored_trials_are_failed_observations_final_seeds_are_not(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        diverged = tracker.start_trial(WATERBIRDS.cell_id, "d", {"lr": 10.0}, "tpe")
        tracker.end_trial(diverged, "FAILED", error="loss nan", tags={"wgtune.diverged": "true"})
        crashed = tracker.start_trial(WATERBIRDS.cell_id, "c", {"lr": 0.1}, "tpe")
        tracker.end_trial(crashed, "FAILED", error="worker died")

        final = tracker.start_trial(WATERBIRDS.cell_id, "f", {"lr": 0.05, "seed": 3}, "final", phase="final")
        tracker.end_trial(final, "FAILED", error="loss nan", tags={"wgtune.diverged": "true"})

        summary = tracker.cell_summaries()[WATERBIRDS.cell_id]
        by_trial = {o.trial_id: o for o in summary.observations}
        assert set(by_trial) == {"d", "c"}, "a final seed informs no TPE"
        assert (by_trial["d"].value, by_trial["d"].diverged, by_trial["d"].errored) == (None, True, False)
        # Errored after Tune's retries: failed in its launch's router, and so after it (issue 13, defect 7).
        assert (by_trial["c"].value, by_trial["c"].diverged, by_trial["c"].errored) == (None, False, True)
        assert (summary.failed, summary.final_done) == (2, 1), "a final seed the config diverged on is done"
        assert {r.trial_id: r.diverged for r in tracker.trial_runs(WATERBIRDS.cell_id)} == {
            "d": True, "c": False, "f": True}


def test_a_cell_marked_failing_carries_a_tag_until_cleared(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        tracker.cell_run(CELEBA)
        tracker.mark_failing(WATERBIRDS.cell_id, 3)
        assert tracker.cell_tags()[WATERBIRDS.cell_id]["wgtune.failing"] == "gave up after 3 failed trials"
        assert tracker.failing_cells() == {WATERBIRDS.cell_id}

        tracker.clear_failing([WATERBIRDS.cell_id, CELEBA.cell_id])  # CELEBA has none: nothing to clear
        assert tracker.failing_cells() == set()
        assert "wgtune.failing" not in tracker.cell_tags()[WATERBIRDS.cell_id]


def test_reading_pages_through_more_runs_than_one_page(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens: list[str | None] = []
    search = MlflowClient.search_runs

    def counting(self: MlflowClient, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        tokens.append(kwargs.get("page_token"))  # type: ignore[arg-type]
        return search(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MlflowClient, "search_runs", counting)
    with tracker_for(study_dir, page_size=20) as tracker:  # 45 runs: three pages
        tracker.cell_run(WATERBIRDS)
        for i in range(45):
            run_id = tracker.start_trial(WATERBIRDS.cell_id, f"t{i:03d}", {"lr": i}, "random")
            tracker.end_trial(run_id, "FINISHED", summary={"best/val_worst_acc": i / 200})
        tokens.clear()
        records = tracker.trial_runs(WATERBIRDS.cell_id)
        assert len(tokens) == 3 and tokens[0] is None and all(tokens[1:])
        assert len({r.run_id for r in records}) == 45
        summary = tracker.cell_summaries()[WATERBIRDS.cell_id]
        assert (summary.finished, summary.best_value, len(summary.observations)) == (45, 44 / 200, 45)
    with tracker_for(study_dir, page_size=20) as relaunched:  # the resume index pages too
        relaunched.cell_run(WATERBIRDS)
        run_id = relaunched.run_id(relaunched.start_trial(WATERBIRDS.cell_id, "t045", {}, "tpe"))
    assert client_for(study_dir).get_run(run_id).info.run_name == "wb/r18/dro · t46"


# -- the writer --------------------------------------------------------------------------------

def test_every_mlflow_call_runs_on_the_writer_thread(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()
    for name in ("create_experiment", "get_experiment_by_name", "create_run", "log_batch", "set_terminated",
                 "search_runs", "set_tag", "log_text", "update_run"):
        original = getattr(MlflowClient, name)

        def spy(self: MlflowClient, *args: object, _original=original, **kwargs: object):  # type: ignore[no-untyped-def]
            threads.add(threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, spy)
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        run_id = tracker.start_trial(WATERBIRDS.cell_id, "t1", {"lr": 1}, "tpe")
        tracker.log_epoch(run_id, {"val/worst_acc": 0.5}, 0)
        tracker.end_trial(run_id, "FAILED", error="x")
        tracker.close_orphans()
        tracker.cell_summaries()
    assert threads == {"wgtune-tracking-writer"}


def test_log_epoch_does_not_wait_for_a_slow_store(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        run_id = tracker.start_trial(WATERBIRDS.cell_id, "t1", {}, "tpe")
        original = MlflowClient.log_batch

        def slow(self: MlflowClient, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            time.sleep(0.3)
            return original(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(MlflowClient, "log_batch", slow)
        started = time.perf_counter()
        for step in range(20):
            tracker.log_epoch(run_id, {key: step for key in EPOCH_KEYS}, step)
        tracker.end_trial(run_id, "FINISHED")
        assert time.perf_counter() - started < 0.1
        run_id = tracker.run_id(run_id)
    assert len(client_for(study_dir).get_metric_history(run_id, "lr")) == 20


def test_store_errors_are_retried_then_wait_in_order_until_the_store_is_back(
        study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A locked or unreachable store cannot be caused on demand inside one call: this double fails
    # the client's writes while `down` is set.
    down = {"left": 2}
    for name in ("log_batch", "set_terminated", "create_run", "update_run"):
        original = getattr(MlflowClient, name)

        def flaky(self: MlflowClient, *args: object, _original=original, **kwargs: object):  # type: ignore[no-untyped-def]
            if down["left"] > 0:
                down["left"] -= 1
                raise MlflowException("connection refused", error_code="TEMPORARILY_UNAVAILABLE")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, flaky)
    with tracker_for(study_dir, max_backoff_s=0.2) as tracker:
        tracker.cell_run(WATERBIRDS)
        handle = tracker.start_trial(WATERBIRDS.cell_id, "t1", {}, "tpe")
        tracker.log_epoch(handle, {"val/worst_acc": 0.5}, 0)
        assert tracker.flush(timeout=10)
        assert tracker.pending() == [] and down["left"] == 0  # two failures, the third attempt wrote

        down["left"] = 10**6  # the store goes away: the study goes on, nothing raises
        tracker.log_epoch(handle, {"val/worst_acc": 0.6}, 1)
        tracker.end_trial(handle, "FINISHED")
        late = tracker.start_trial(WATERBIRDS.cell_id, "t2", {"lr": 0.1}, "tpe")
        tracker.log_epoch(late, {"val/worst_acc": 0.7}, 0)
        tracker.end_trial(late, "FINISHED")
        assert tracker.flush(timeout=10)
        waiting = tracker.pending()
        kinds = {h: [p.write.kind for p in waiting if p.write.run_id == h] for h in (handle, late)}
        assert kinds == {handle: ["metrics", "terminate"], late: ["create", "metrics", "params", "terminate"]}
        assert all("connection refused" in p.error for p in waiting)
        json.dumps([dataclasses.asdict(p) for p in waiting])  # plain data, as the journal keeps it

        down["left"] = 0  # back: the waiting writes go through by themselves, in order
        deadline = time.monotonic() + 10
        while tracker.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tracker.pending() == [] and tracker.rejected() == []
        run_id, late_id = tracker.run_id(handle), tracker.run_id(late)
    client = client_for(study_dir)
    assert [m.value for m in client.get_metric_history(run_id, "val/worst_acc")] == [0.5, 0.6]
    assert client.get_run(run_id).info.status == "FINISHED"
    late_run = client.get_run(late_id)
    assert (late_run.info.status, late_run.data.params, late_run.data.tags["wgtune.trial_id"]) == (
        "FINISHED", {"lr": "0.1"}, "t2")


def test_starting_a_trial_does_not_wait_for_the_store(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        original = MlflowClient.create_run

        def slow(self: MlflowClient, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            time.sleep(0.3)
            return original(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(MlflowClient, "create_run", slow)
        started = time.perf_counter()
        handles = [tracker.start_trial(WATERBIRDS.cell_id, f"t{i}", {"lr": i}, "tpe") for i in range(5)]
        assert time.perf_counter() - started < 0.1
        assert len({tracker.run_id(h) for h in handles}) == 5


KILLED_DRIVER = """
import os, sys
from pathlib import Path
from wgtune.tracking.records import CellRecord
from wgtune.tracking.tracker import StudyTracker
cell = CellRecord(*{cell!r})
tracker = StudyTracker({uri!r}, "sizes", spool_dir=Path({spool!r}), flush_interval_s=3600)
tracker.cell_run(cell)
done = tracker.start_trial(cell.cell_id, "done", {{"lr": 0.1}}, "tpe")
for step in range(3):
    tracker.log_epoch(done, {{"val/worst_acc": step / 10}}, step)
tracker.end_trial(done, "FINISHED", summary={{"best/val_worst_acc": 0.2}})
tracker.flush()  # this trial reached the store
running = tracker.start_trial(cell.cell_id, "running", {{"lr": 0.2}}, "tpe")
for step in range(4):
    tracker.log_epoch(running, {{"val/worst_acc": step / 10}}, step)
finished = tracker.start_trial(cell.cell_id, "unwritten", {{"lr": 0.3}}, "random")
for step in range(3):
    tracker.log_epoch(finished, {{"val/worst_acc": 0.5 + step / 10}}, step)
tracker.end_trial(finished, "FINISHED", summary={{"best/val_worst_acc": 0.7}})
sys.stdout.flush()
os._exit(9)  # killed: no atexit, no flush; the writer thread had not written since the flush
"""


def test_a_killed_driver_loses_no_write_the_next_launch_uploads_them(study_dir: Path) -> None:
    spool = study_dir / "tracking-spool"
    uri = resolve_tracking_uri(study_dir, None)
    script = KILLED_DRIVER.format(cell=dataclasses.astuple(WATERBIRDS), uri=uri, spool=str(spool))
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 9, child.stderr
    journals = list(spool.glob("*.jsonl"))
    assert len(journals) == 1
    client = client_for(study_dir)
    experiment = client.get_experiment_by_name("sizes")
    assert [r.data.tags["wgtune.trial_id"] for r in all_runs(client, experiment.experiment_id)
            if r.data.tags.get("wgtune.kind") == "trial"] == ["done"]  # the rest died with the driver

    with tracker_for(study_dir, spool_dir=spool) as relaunched:
        assert relaunched.recover() == journals
        relaunched.cell_run(WATERBIRDS)
        assert relaunched.close_orphans() == [relaunched.run_id("trial:running")]
        records = {r.trial_id: r for r in relaunched.trial_runs(WATERBIRDS.cell_id)}
    assert {t: r.status for t, r in records.items()} == {"done": "FINISHED", "running": "KILLED",
                                                          "unwritten": "FINISHED"}
    assert records["unwritten"].metrics["best/val_worst_acc"] == 0.7
    assert records["unwritten"].params == {"lr": "0.3"}
    histories = {t: [(m.step, m.value) for m in client.get_metric_history(r.run_id, "val/worst_acc")]
                 for t, r in records.items()}
    assert histories == {"done": [(0, 0.0), (1, 0.1), (2, 0.2)],
                         "running": [(s, s / 10) for s in range(4)],
                         "unwritten": [(0, 0.5), (1, 0.6), (2, 0.7)]}
    assert list(spool.glob("*.jsonl")) == [], "a clean close leaves no journal behind"


def test_replaying_a_journal_twice_makes_nothing_twice(study_dir: Path) -> None:
    spool = study_dir / "tracking-spool"
    with tracker_for(study_dir, spool_dir=spool) as tracker:
        tracker.cell_run(WATERBIRDS)
        handle = tracker.start_trial(WATERBIRDS.cell_id, "t1", {"lr": 0.1}, "tpe")
        for step in range(3):
            tracker.log_epoch(handle, {"val/worst_acc": step / 10}, step)
        tracker.end_trial(handle, "FINISHED")
        journal = tracker.spool_path
        tracker.flush()
        copy = journal.read_text()
    # The same lines again, as if the driver had died after writing but before acknowledging.
    unacknowledged = "\n".join(line for line in copy.splitlines() if '"ack"' not in line and '"run"' not in line)
    (spool / "replay.jsonl").write_text(unacknowledged + "\n")
    with tracker_for(study_dir, spool_dir=spool) as relaunched:
        assert len(relaunched.recover()) == 1
        records = relaunched.trial_runs()
    assert [(r.trial_id, r.status) for r in records] == [("t1", "FINISHED")]
    client = client_for(study_dir)
    assert [m.step for m in client.get_metric_history(records[0].run_id, "val/worst_acc")] == [0, 1, 2]


# -- URIs and the store check ------------------------------------------------------------------

def test_resolve_tracking_uri_defaults_honours_env_and_makes_paths_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(Path("study"), None) == f"sqlite:///{tmp_path}/study/mlflow.db"
    assert resolve_tracking_uri(Path("s"), "sqlite:///rel/m.db?timeout=5") == f"sqlite:///{tmp_path}/rel/m.db?timeout=5"
    assert resolve_tracking_uri(Path("s"), "sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri(Path("s"), "sqlite:///:memory:") == "sqlite:///:memory:"
    assert resolve_tracking_uri(Path("s"), "file:./mlruns") == f"file://{tmp_path}/mlruns"
    assert resolve_tracking_uri(Path("s"), "mlruns") == f"file://{tmp_path}/mlruns"
    assert resolve_tracking_uri(Path("s"), "http://host:5000") == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(Path("s"), None) == f"sqlite:///{tmp_path}/env.db"
    assert resolve_tracking_uri(Path("s"), "http://flag:1") == "http://flag:1"
    assert artifact_root(Path("s")) == f"{tmp_path}/s/artifacts"


def test_redact_hides_credentials() -> None:
    assert redact("http://user:pass@host:5000/x") == "http://***@host:5000/x"
    assert redact("https://token@host") == "https://***@host"
    assert redact("postgresql://u:p@db/mlflow?password=x&sslmode=on") == "postgresql://***@db/mlflow?password=***&sslmode=on"
    assert redact("sqlite:////a/b@c/mlflow.db") == "sqlite:////a/b@c/mlflow.db"
    assert redact("http://host:5000") == "http://host:5000"


def free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_check_tracking_fails_fast_and_clearly_for_a_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    uri = f"http://alice:s3cret@127.0.0.1:{free_closed_port()}"
    started = time.perf_counter()
    with pytest.raises(TrackingUnavailableError) as err:
        check_tracking(uri, timeout_s=3)
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert "s3cret" not in message and "alice" not in message
    assert redact(uri) in message and "not reachable" in message
    assert "mlflow server" in message and "MLFLOW_TRACKING_URI" in message
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"  # restored
    assert isinstance(err.value, ValueError)


def test_check_tracking_fails_for_a_folder_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(TrackingUnavailableError, match="is not a folder"):
        check_tracking(f"sqlite:///{tmp_path}/a_file/study/mlflow.db")
    check_tracking(f"sqlite:///{tmp_path}/new/study/mlflow.db")  # creatable: fine
    if os.geteuid() == 0:  # root writes into a chmod 500 folder; /sys refuses even root
        locked = Path("/sys")
        if not locked.is_dir():
            pytest.skip("needs a non-root user or Linux's /sys")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    with pytest.raises(TrackingUnavailableError, match="not writable") as err:
        check_tracking(f"sqlite:///{locked}/wgtune-study/mlflow.db")
    assert "fix the folder's permissions" in str(err.value)


def test_importing_tracking_pulls_in_neither_ray_nor_torch_nor_mlflow() -> None:
    code = "import sys, wgtune.tracking.tracker; print(sorted({'ray', 'torch', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_resumed_trial_that_re_runs_logged_epochs_keeps_one_copy_of_each(study_dir: Path) -> None:
    # A driver died after logging epoch 2, but Tune's state knew only the epoch-1 checkpoint:
    # the restored trial runs epoch 2 again.
    with tracker_for(study_dir) as first:
        first.cell_run(WATERBIRDS)
        handle = first.start_trial(WATERBIRDS.cell_id, "t1", {"lr": 0.1}, "tpe")
        for step in (1, 2):
            first.log_epoch(handle, {"val/worst_acc": step / 10, "best/val_worst_acc": step / 10}, step)
    with tracker_for(study_dir) as relaunched:
        relaunched.cell_run(WATERBIRDS)
        handle = relaunched.start_trial(WATERBIRDS.cell_id, "t1", {"lr": 0.1}, "tpe")
        for step in (2, 3):
            relaunched.log_epoch(handle, {"val/worst_acc": step / 10 + 0.001, "best/val_worst_acc": step / 10}, step)
        relaunched.end_trial(handle, "FINISHED", summary={"best/val_worst_acc": 0.3})
        run_id = relaunched.run_id(handle)
    history = [(m.step, m.value) for m in client_for(study_dir).get_metric_history(run_id, "val/worst_acc")]
    assert sorted(history) == [(1, 0.1), (2, 0.2), (3, 0.301)]


def test_run_names_number_search_trials_and_each_rules_final_seeds_apart_across_launches(study_dir: Path) -> None:
    with tracker_for(study_dir) as tracker:
        tracker.cell_run(WATERBIRDS)
        first = [tracker.start_trial(WATERBIRDS.cell_id, "s1", {"lr": 1}, "tpe"),
                 tracker.start_trial(WATERBIRDS.cell_id, "f1", {"lr": 1, "seed": 5}, "final", phase="final"),
                 tracker.start_trial(WATERBIRDS.cell_id, "a1", {"lr": 2, "seed": 5}, "final", phase="final",
                                     rule="val_avg")]
        first = [tracker.run_id(h) for h in first]
    with tracker_for(study_dir) as relaunched:
        relaunched.cell_run(WATERBIRDS)
        second = [relaunched.start_trial(WATERBIRDS.cell_id, "s2", {"lr": 3}, "tpe"),
                  relaunched.start_trial(WATERBIRDS.cell_id, "f2", {"lr": 1, "seed": 6}, "final", phase="final"),
                  relaunched.start_trial(WATERBIRDS.cell_id, "a2", {"lr": 2, "seed": 6}, "final", phase="final",
                                         rule="val_avg")]
        second = [relaunched.run_id(h) for h in second]
    client = client_for(study_dir)
    names = [client.get_run(r).info.run_name for r in first + second]
    assert names == ["wb/r18/dro · t01", "wb/r18/dro · seed 1", "wb/r18/dro · seed 1 · val_avg",
                     "wb/r18/dro · t02", "wb/r18/dro · seed 2", "wb/r18/dro · seed 2 · val_avg"]
    tags = [client.get_run(r).data.tags for r in first + second]
    assert [t.get("wgtune.select") for t in tags] == [None, None, "val_avg"] * 2
    assert {t["wgtune.cell"] for t in tags} == {WATERBIRDS.cell_id}  # the full id stays in the tags

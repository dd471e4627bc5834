"""Micro-benchmark of the tracking logger alone: per trial (start a run, E epochs x M metrics, end),
synchronous MlflowClient calls against StudyTracker's background writer, both on a SQLite store.

    .venv/bin/python bench/tracking_overhead.py [--trials 40] [--epochs 5] [--metrics 22]

"driver ms/trial" is the time the caller (the Ray driver's event loop) spends in tracking calls;
"written ms/trial" is the wall time until everything is in the store, divided by the trials.
Prints a markdown table headed by the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.version import VERSION as MLFLOW_VERSION

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file by `python -m bench`

from bench.machine import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tracking_overhead.md"
from trainables.metrics import SELECTION_METRIC  # noqa: E402
from wgtune.tracking.records import KIND_TAG, KIND_TRIAL, CellRecord  # noqa: E402
from wgtune.tracking.store import artifact_root  # noqa: E402
from wgtune.tracking.tracker import StudyTracker  # noqa: E402

CELL = CellRecord("waterbirds/resnet-18/groupdro/scratch", "waterbirds", "resnet", "18", "resnet-18",
                11_200_000, "groupdro", False)
PARAMS = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "objective_options": {"eta": 0.01}}


def metrics_for(n_metrics: int, epoch: int) -> dict[str, float]:
    return {f"m/{i:02d}": epoch + i / 100 for i in range(n_metrics)}


def sync_per_metric(uri: str, args: argparse.Namespace) -> tuple[float, float, str]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench")
    started = time.perf_counter()
    for trial in range(args.trials):
        run_id = client.create_run(experiment, tags={KIND_TAG: KIND_TRIAL}, run_name=f"t{trial}").info.run_id
        for key, value in PARAMS.items():
            client.log_param(run_id, key, value)
        for epoch in range(args.epochs):
            for key, value in metrics_for(args.metrics, epoch).items():
                client.log_metric(run_id, key, value, step=epoch, synchronous=True)
        client.set_terminated(run_id, "FINISHED")
    per_trial = (time.perf_counter() - started) * 1000 / args.trials
    return per_trial, per_trial, "one call per value (MlflowClient.log_metric)"


def sync_batched(uri: str, args: argparse.Namespace) -> tuple[float, float, str]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench")
    started = time.perf_counter()
    for trial in range(args.trials):
        run_id = client.create_run(experiment, tags={KIND_TAG: KIND_TRIAL}, run_name=f"t{trial}").info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in PARAMS.items()], synchronous=True)
        for epoch in range(args.epochs):
            stamp = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, stamp, epoch)
                                              for k, v in metrics_for(args.metrics, epoch).items()],
                             synchronous=True)
        client.set_terminated(run_id, "FINISHED")
    per_trial = (time.perf_counter() - started) * 1000 / args.trials
    return per_trial, per_trial, "one log_batch per epoch"


def writer(concurrent: int) -> Callable[[str, argparse.Namespace], tuple[float, float, str]]:
    """StudyTracker with `concurrent` trials running side by side, as Tune interleaves them."""

    def run(uri: str, args: argparse.Namespace) -> tuple[float, float, str]:
        tracker = StudyTracker(uri, "bench", artifact_root(Path(uri[len("sqlite:///"):]).parent))
        tracker.cell_run(CELL)
        driver = 0.0
        starts: list[float] = []
        epochs: list[float] = []
        started = time.perf_counter()
        for first in range(0, args.trials, concurrent):
            batch = range(first, min(first + concurrent, args.trials))
            run_ids = []
            for trial in batch:
                t0 = time.perf_counter()
                run_ids.append(tracker.start_trial(CELL.cell_id, f"t{trial}", PARAMS, "tpe"))
                starts.append(time.perf_counter() - t0)
                driver += starts[-1]
            for epoch in range(args.epochs):
                for run_id in run_ids:
                    metrics = metrics_for(args.metrics, epoch)
                    t0 = time.perf_counter()
                    tracker.log_epoch(run_id, metrics, epoch)
                    epochs.append(time.perf_counter() - t0)
                    driver += epochs[-1]
            for run_id in run_ids:
                t0 = time.perf_counter()
                tracker.end_trial(run_id, "FINISHED", summary={SELECTION_METRIC: 0.5})
                driver += time.perf_counter() - t0
        tracker.close()
        written = (time.perf_counter() - started) * 1000 / args.trials
        starts_ms = sorted(s * 1000 for s in starts)
        note = (f"{concurrent} trial(s) at a time; start_trial p50 {statistics.median(starts_ms):.1f} ms, "
                f"max {starts_ms[-1]:.1f} ms; log_epoch mean {statistics.mean(epochs) * 1e6:.0f} µs")
        return driver * 1000 / args.trials, written, note

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--metrics", type=int, default=22)
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    modes = {
        "synchronous, per value": sync_per_metric,
        "synchronous, batched": sync_batched,
        "StudyTracker writer, sequential": writer(1),
        "StudyTracker writer, 8 concurrent": writer(8),
    }
    with tempfile.TemporaryDirectory(prefix="wgtune-bench-") as tmp:
        template = Path(tmp) / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()  # tables, once
        rows = []
        for i, (name, bench) in enumerate(modes.items()):
            db = Path(tmp) / f"mode{i}" / "mlflow.db"
            db.parent.mkdir()
            shutil.copy(template, db)
            driver, written, note = bench(f"sqlite:///{db}", args)
            rows.append(f"| {name} | {driver:.1f} | {written:.1f} | {note} |")

    where = machine(f"MLflow {MLFLOW_VERSION}")
    text = "\n".join([
        f"The MLflow logger alone: {args.trials} trials x {args.epochs} epochs x {args.metrics} metrics, SQLite "
        "store. 'driver' is the time spent inside tracking calls (what the Ray driver waits for), 'written' "
        "the time until everything is stored.",
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {where}.",
        "",
        "| mode | driver ms/trial | written ms/trial | notes |",
        "|---|---:|---:|---|",
        *rows,
    ])
    print(text)
    if args.trials >= 40:  # a smoke run (fewer trials) does not replace the recorded result
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Per-trial overhead of the full wgtune stack against bare Ray Tune, on no-op trials.

    .venv/bin/python bench/orchestration_overhead.py [--reps 6] [--trials-per-cell 10] [--no-profile]

Every variant runs 40 no-op trials, each 5 `tune.report` calls of 23 metrics named like the real
ones (`train/loss`, `val|test/{avg,worst,weighted}_acc`, `val|test/acc_g0..3`, `best/*`, ...),
2 at a time, 1 CPU each, `reuse_actors`, `verbose=0`, on one Ray instance started once:
- bare: `tune.Tuner`, function trainable, random search (`tune.loguniform`/`choice`),
  `max_concurrent_trials=2`, no callbacks of ours (Tune's default CSV/JSON/TensorBoard result
  loggers stay on, as they do under wgtune);
- wgtune: `wgtune.run.driver.run_experiment(trial_fn=<the no-op>)` on 4 cells x 10 trials planned by
  `wgtune.run.study.prepare` from a grid file, with the real `CellRouter` (a TPE per cell) and a real
  `StudyTracker` on a fresh SQLite store (parent run per cell, child run per trial, params, metrics);
- context: bare with Tune's default loggers off, and bare plus Tune's stock `MLflowLoggerCallback`
  to SQLite (once: it is slow).
The clock runs from building the Tuner (wgtune: calling `run_experiment`) until everything is
stored (wgtune: cells closed, tracker flushed); stores are created before it starts. Driver CPU
time (process, main thread, MLflow writer thread) is taken alike. After an untimed warm-up fit the
first three variants are interleaved, rotating their order; ratios are taken within a repetition.
MLflow's runs are counted afterwards to prove the logging happened. Then one more wgtune run under
cProfile shows where the driver's main thread spends time. Writes bench/results/orchestration_overhead.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import logging
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# What wgtune's driver sets for itself, set for every variant so that all run Tune alike.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from ray import tune  # noqa: E402

from trainables.metrics import (  # noqa: E402
    AVG_ACC,
    BEST_EPOCH,
    BEST_TEST_WEIGHTED,
    EPOCH,
    LR,
    STEP_METRIC,
    TEST,
    TRAIN,
    VAL,
    WEIGHTED_ACC,
    WORST_ACC,
    best_key,
    metric_key,
)
from wgtune.tracking.records import KIND_CELL, KIND_TAG, KIND_TRIAL  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "orchestration_overhead.md"
EPOCHS = 5
MODELS = ("10x0.25", "10x0.5")
OBJECTIVES = ("erm", "groupdro")


def fake_metrics(epoch: int, lr: float) -> dict[str, float]:
    """One epoch's report, with a value that depends on lr so that TPE has something to model."""
    acc = 0.5 + 0.4 * math.exp(-(math.log10(lr) + 2.0) ** 2) * epoch / EPOCHS
    metrics = {metric_key(TRAIN, "loss"): 1.0 / epoch, LR: lr, EPOCH: float(epoch), BEST_EPOCH: float(epoch)}
    for split in (VAL, TEST):
        metrics.update({metric_key(split, AVG_ACC): acc, metric_key(split, WORST_ACC): acc - 0.15,
                        metric_key(split, WEIGHTED_ACC): acc})
        metrics.update({metric_key(split, f"acc_g{g}"): acc - 0.05 * g for g in range(4)})
        metrics.update({best_key(split, WORST_ACC): acc - 0.15, best_key(split, AVG_ACC): acc})
    return {**metrics, BEST_TEST_WEIGHTED: acc}


def bare_trial(config: dict) -> None:
    from ray import tune

    for epoch in range(1, EPOCHS + 1):
        tune.report(fake_metrics(epoch, config["lr"]))


def wgtune_trial(config: dict, cells: dict) -> None:
    bare_trial(config["params"])


class Clock:
    """Wall seconds; CPU seconds of the driver process (all threads) and of its main thread
    (Tune's event loop, callbacks, searcher); with `writer`, also of wgtune's MLflow writer thread."""

    writer_cpu = 0.0

    def __init__(self, writer: bool = False) -> None:
        self.writer = _writer_thread() if writer else None

    def __enter__(self) -> Clock:
        self.wall, self.cpu, self.main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        self.writer_cpu = _thread_cpu(self.writer)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.main_cpu = time.thread_time() - self.main_cpu
        self.writer_cpu = _thread_cpu(self.writer) - self.writer_cpu


def _writer_thread() -> int | None:
    alive = [t.native_id for t in threading.enumerate() if t.name == "wgtune-tracking-writer" and t.is_alive()]
    return alive[-1] if alive else None


def _thread_cpu(native_id: int | None) -> float:
    """User + system CPU seconds of one thread of this process, from /proc (0 where unavailable)."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_bare(folder: Path, trials: int, callbacks: list | None = None, tune_loggers: bool = True) -> Clock:
    space = {"lr": tune.loguniform(1e-4, 0.3), "weight_decay": tune.loguniform(1e-6, 0.1),
             "batch_size": tune.choice([32, 64, 128]), "optimizer": tune.choice(["sgd", "adamw"])}
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0" if tune_loggers else "1"
    # Without result files, Tune's ResultGrid warns once per trial that it has no metrics to read.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.WARNING if tune_loggers else logging.ERROR)
    try:
        with Clock() as clock:
            tuner = tune.Tuner(
                bare_trial, param_space=space,
                tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=True, max_concurrent_trials=2),
                run_config=tune.RunConfig(name="bare", storage_path=str(folder), callbacks=callbacks, verbose=0),
            )
            results = tuner.fit()
    finally:
        os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    assert len(results) == trials and not results.errors, results.errors
    return clock


def run_callback(folder: Path, trials: int) -> tuple[Clock, str]:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the schema before the clock starts
    clock = run_bare(folder, trials, [MLflowLoggerCallback(tracking_uri=uri, experiment_name="bench")])
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id], max_results=10_000)
    steps = len(client.get_metric_history(runs[0].info.run_id, STEP_METRIC))
    assert len(runs) == trials and steps == EPOCHS
    return clock, f"{len(runs)} runs, {steps} epochs of val/worst_acc in one"


def run_wgtune(folder: Path, trials_per_cell: int, profiler: cProfile.Profile | None = None) -> tuple[Clock, float, str]:
    from wgtune.run.driver import RunSettings, run_experiment
    from wgtune.run.study import prepare
    from wgtune.spec.grid import load_grid
    from wgtune.tracking.store import artifact_root
    from wgtune.tracking.tracker import StudyTracker

    folder.mkdir(parents=True, exist_ok=True)
    grid_file = folder / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "study": "overhead", "study_dir": str(folder / "study"), "datasets": ["spurious_digits"],
        "models": {"resnet": list(MODELS)}, "objectives": list(OBJECTIVES), "epochs": EPOCHS, "resources": {"cpu": 1},
        "final_seeds": 0,  # search trials only, as many as the bare variants run
        "search": {"num_samples": trials_per_cell, "max_concurrent": 2, "n_startup": 5, "scheduler": "fifo",
                   "max_failures": 0}}))
    grid = load_grid(grid_file)
    uri = f"sqlite:///{grid.study_dir / 'mlflow.db'}"
    tracker = StudyTracker(uri, grid.spec.study, artifact_root(grid.study_dir))
    try:
        started = time.perf_counter()
        cells = prepare(grid, tracker)
        tracker.flush()
        prepared = time.perf_counter() - started
        settings = RunSettings.for_grid(grid, "wgtune", storage=str(grid.study_dir / "ray"), progress_every_s=3600.0)
        with Clock(writer=True) as clock, profiler or contextlib.nullcontext():
            run_experiment(cells, tracker, settings, lambda line: None, trial_fn=wgtune_trial)
            for planned in cells:
                tracker.close_cell(planned.cell.id)
            tracker.flush()
    finally:
        tracker.close()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("overhead").experiment_id], max_results=10_000)
    children = [r for r in runs if r.data.tags.get(KIND_TAG) == KIND_TRIAL]
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == KIND_CELL]
    finished = sum(r.info.status == "FINISHED" for r in children)
    steps = len(client.get_metric_history(children[0].info.run_id, STEP_METRIC))
    expected = len(MODELS) * len(OBJECTIVES) * trials_per_cell
    assert finished == len(children) == expected and len(parents) == len(cells) and steps == EPOCHS, (
        finished, len(children), len(parents), steps)
    return clock, prepared, (f"{len(parents)} parent runs, {len(children)} FINISHED child runs with "
                             f"{len(children[0].data.params)} params and {len(children[0].data.metrics)} metrics "
                             f"each, {steps} epochs of val/worst_acc in one")


SKIP = ("run_experiment", "_call", "call", "_start", "propose")  # wrappers of a row already shown


def profile_digest(profiler: cProfile.Profile, trials: int, wall: float) -> list[str]:
    """Where the driver's main thread spends time: wgtune's functions, and Tune's own loggers for scale."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_, calls, _, cumulative, _) in stats.items():
        where = filename.replace(os.sep, "/")
        if "/wgtune/" in where and name not in SKIP and not where.endswith("tracking_writer.py"):
            rows.append((cumulative, f"`{where.split('/wgtune/')[-1]}:{line} {name}`", calls))
        elif where.endswith(("tensorboardX/record_writer.py", "tune/callback.py")) and name in ("flush", "on_trial_result"):
            what = "every callback: Tune's loggers, ours" if name == "on_trial_result" else "Tune's TensorBoard logger"
            rows.append((cumulative, f"Ray: `{where.split('site-packages/')[-1]}:{line} {name}` ({what})", calls))
    rows.sort(reverse=True)
    lines = [f"cProfile of one more wgtune run ({wall:.1f} s wall), driver main thread, cumulative time:", "",
             "| function | calls | total s | ms per trial |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {calls} | {cum:.3f} | {cum * 1000 / trials:.1f} |" for cum, label, calls in rows[:12]]
    drain = sum(cum for cum, label, _ in rows if "on_experiment_end" in label and "driver.py" in label)
    lines += ["", f"Of the profiled run's {wall:.1f} s, {drain:.2f} s ({drain * 1000 / trials:.1f} ms per trial) is "
              "`on_experiment_end` waiting for the writer to store what the last trials queued: MLflow's SQLite "
              "store costs tens of ms per trial (create, params, 115 metric rows, tags, end; see tracking overhead), "
              "about what a no-op trial lasts, so the writer ends behind. Trials that train for seconds or more "
              "leave it idle between writes."]
    return lines


VARIANTS = {  # key: label; the first three are interleaved, the last runs once (it is slow)
    # The baseline as the issue defines it: same no-op trials, reuse_actors, no logging.
    "bare": "bare Ray Tune (reuse_actors, no logging: Tune's default loggers off)",
    "wgtune": "wgtune (driver + CellRouter/TPE + StudyTracker to SQLite)",
    "bare-loggers": "context: bare Ray Tune with Tune's default CSV/JSON/TensorBoard loggers on",
    "mlflow-callback": "context: bare + stock MLflowLoggerCallback (one run)",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--trials-per-cell", type=int, default=10)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="add one cProfile'd wgtune run (default: on)")
    args = parser.parse_args(argv)
    trials = len(MODELS) * len(OBJECTIVES) * args.trials_per_cell
    begun = time.perf_counter()
    # address="local": without it, ray.init joins any Ray instance already running on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    clocks: dict[str, list[Clock]] = {name: [] for name in VARIANTS}
    proofs, prepared, digest = {}, [], []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        run_bare(Path(tmp) / "warmup", 4)
        interleaved = list(VARIANTS)[:3]
        for rep in range(args.reps):
            for name in interleaved[rep % 3:] + interleaved[:rep % 3]:
                folder = Path(tmp) / f"{name}-{rep}"
                if name == "wgtune":
                    clock, prep, proofs[name] = run_wgtune(folder, args.trials_per_cell)
                    prepared.append(prep)
                else:
                    clock = run_bare(folder, trials, tune_loggers=name == "bare-loggers")
                clocks[name].append(clock)
                print(f"rep {rep + 1} {name}: {clock.wall / trials:.3f} s/trial, "
                      f"{clock.cpu * 1000 / trials:.0f} driver CPU-ms/trial", file=sys.stderr, flush=True)
        clock, proofs["mlflow-callback"] = run_callback(Path(tmp) / "mlflow-callback", trials)
        clocks["mlflow-callback"].append(clock)
        if args.profile:
            profiler = cProfile.Profile()
            clock, _, _ = run_wgtune(Path(tmp) / "profiled", args.trials_per_cell, profiler)
            digest = profile_digest(profiler, trials, clock.wall)
    ray.shutdown()

    med = statistics.median
    lines = [
        f"Per-trial wall time of {trials} no-op trials ({EPOCHS} reports of 23 metrics each), 2 at a time, "
        f"1 CPU each, reuse_actors, one Ray instance; {args.reps} interleaved repetitions of the first three "
        f"variants, ratios within each repetition; the MLflow callback once, against the median bare run.",
        f"Measured {datetime.date.today().isoformat()} on {platform.platform()}, {os.cpu_count()} CPUs "
        f"shared with other work; Ray {ray.__version__}; total run {time.perf_counter() - begun:.0f} s.",
        "",
        "| variant | s/trial (median) | range | ratio to bare (median) | ratio range "
        "| driver CPU ms/trial: all threads | main thread | MLflow writer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {}
    for name, label in VARIANTS.items():
        walls = [c.wall / trials for c in clocks[name]]
        paired = len(clocks[name]) == len(clocks["bare"])
        bare = [b.wall for b in clocks["bare"]] if paired else [med(b.wall for b in clocks["bare"])]
        ratios[name] = [c.wall / b for c, b in zip(clocks[name], bare)]
        ratio = "1 | –" if name == "bare" else f"**{med(ratios[name]):.2f}** | {min(ratios[name]):.2f}–{max(ratios[name]):.2f}"
        lines.append(f"| {label} | {med(walls):.3f} | {min(walls):.3f}–{max(walls):.3f} | {ratio} | "
                     + " | ".join(f"{med(getattr(c, k) * 1000 / trials for c in clocks[name]):.0f}"
                                  for k in ("cpu", "main_cpu", "writer_cpu")) + " |")
    goal = "met" if med(ratios["wgtune"]) <= 1.1 else "MISSED"
    extra = {k: (med(getattr(c, k) for c in clocks["wgtune"]) - med(getattr(c, k) for c in clocks["bare"])) * 1000 / trials
             for k in ("cpu", "main_cpu", "writer_cpu")}
    lines += [
        "",
        f"wgtune / bare: **{med(ratios['wgtune']):.2f}** (goal <= 1.1: {goal}). Driver CPU: CPU time of the "
        f"driver process over the run, per trial: all its threads, its main thread (Tune's event loop, callbacks, "
        f"searcher), and wgtune's MLflow writer thread (0 elsewhere). Once per launch, "
        f"before the trials: `prepare` (plan 4 cells, query MLflow, create parent runs) took "
        f"{med(prepared):.2f} s (median).",
        f"CPU, less hurt by other load than wall time: wgtune's driver spends {extra['cpu']:.0f} ms more per trial "
        f"than bare Tune's ({extra['writer_cpu']:.0f} in the MLflow writer thread, {extra['main_cpu']:.0f} in the "
        f"main thread); on a 2-core machine running 2 trials, that CPU is taken from the trials.",
        f"Logged (last repetition): wgtune: {proofs.get('wgtune')}; callback: {proofs.get('mlflow-callback')}.",
    ]
    if digest:
        lines += ["", *digest]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()

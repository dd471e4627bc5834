"""Soak: a real study of many short trials with trial faults injected at random and the driver
killed twice; at the end nothing is lost, doubled or left running.

    .venv/bin/python bench/soak.py                    # 4 cells x 52 trials (+2 final seeds each)
    .venv/bin/python bench/soak.py --trials-per-cell 6 --cells 2 --out /tmp/x.md   # a short one

The study is the real product: `wgtune launch` in a driver process of its own (local Ray, SQLite
MLflow, spurious_digits, resnet ladder, real training of a few epochs at 16x16 pixels). Each
attempt of each trial, with probability `--fault-rate`, meets one fault at a random epoch:
an exception, CUDA out of memory (raised: no GPU here), a NaN loss (DivergedError), or its worker
process killed with SIGKILL. Faults go in through `launch`'s `trial_fn` seam and are logged to
`faults.jsonl` before they strike. The driver is SIGKILLed (with its process group: its local
Ray) when a third and two thirds of the work has finished, and launched again each time, as a
person would after a crash; the last launch runs to the end.

Checked from MLflow at the end: every cell has exactly its budget of FINISHED search trials and
final seeds; no trial has two runs and no seed is finished twice; no run is RUNNING; every
FINISHED run has each epoch's metrics exactly once; every trial a driver reported finished is
FINISHED in MLflow (results lost = 0). Writes `bench/results/soak.md`.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from trainables.metrics import STEP_METRIC  # noqa: E402
from wgtune.tracking.records import (  # noqa: E402
    ATTEMPTS_TAG,
    CELL_TAG,
    DIVERGED_TAG,
    KIND_TAG,
    KIND_TRIAL,
    PHASE_FINAL,
    PHASE_TAG,
    SEED_PARAM,
    TRIAL_ID_TAG,
)

RESULTS = ROOT / "bench" / "results" / "soak.md"
MODELS = ["10x0.25", "10x0.5", "12x0.25", "14x0.25"]
OBJECTIVES = ["erm", "groupdro"]
FAULTS = ("exception", "oom", "nan", "kill")
GRID = """
study: soak
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [{models}]}}
objectives: [{objectives}]
epochs: {epochs}
final_seeds: {final_seeds}
search: {{num_samples: {trials}, max_concurrent: 2, n_startup: 4, max_failures: 1}}
resources: {{cpu: 1}}
train: {{image_size: 16}}
"""


# -- inside the driver process -------------------------------------------------------------------

def faulty_trial(config: dict[str, Any], cells: Any, root: str, rate: float, seed: int) -> None:
    """The real trial; with probability `rate` per attempt, one fault at a random epoch."""
    from ray import tune

    from wgtune.run.driver import run_trial

    trial_id = tune.get_context().get_trial_id()
    with open(Path(root) / "attempts.log", "a") as log:  # one short line per attempt: O_APPEND is atomic
        log.write(trial_id + "\n")
    attempts = (Path(root) / "attempts.log").read_text().splitlines()
    attempt = attempts.count(trial_id)
    # Keyed by the attempt's place in the whole soak, not by Tune's random trial ids: a seed
    # gives the same schedule of faults every time.
    rng = random.Random(f"{seed}/{len(attempts)}")
    fault = rng.choice(FAULTS) if rng.random() < rate else None
    at_epoch = rng.randint(1, int(cells[config["cell"]].base_config["epochs"]))
    if fault is None:
        run_trial(config, cells)
        return

    def strike(metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == at_epoch:
            with open(Path(root) / "faults.jsonl", "a") as faults:
                faults.write(json.dumps({"trial": trial_id, "attempt": attempt, "fault": fault, "epoch": at_epoch}) + "\n")
            inject(fault)

    run_trial_watching(config, cells, strike)


def run_trial_watching(config: dict[str, Any], cells: Any, on_epoch: Callable[[dict[str, Any]], None]) -> None:
    """The real trial (`wgtune.run.driver.run_trial`), calling `on_epoch(metrics)` before each epoch is
    reported to Tune: where the soak and the fault tests cause their faults."""
    from wgtune.run.driver import run_trial

    run_trial(config, cells, on_epoch=on_epoch)


def inject(fault: str) -> None:
    """Cause `fault` in this trial process: one of FAULTS (the fault tests use it too)."""
    import torch

    from trainables.training import DivergedError

    if fault == "exception":
        raise RuntimeError("injected fault: the trainable raised")
    if fault == "oom":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected fault)")
    if fault == "nan":
        raise DivergedError("training loss became nan (injected fault)")
    os.kill(os.getpid(), signal.SIGKILL)


def drive(workdir: Path, rate: float, seed: int) -> int:
    """One launch of the soak's study, with faults injected (the driver process)."""
    from wgtune.cli import main
    from wgtune.commands.launch import LaunchCommand

    trial_fn = functools.partial(faulty_trial, root=str(workdir), rate=rate, seed=seed)
    # The CLI's launch command with the trial seam set: its messages and exit codes are the product's.
    return main(["launch", "--grid", str(workdir / "grid.yaml")], commands=[LaunchCommand(trial_fn=trial_fn)])


# -- the controller ------------------------------------------------------------------------------

def finished_runs(db: Path) -> int:
    """FINISHED trial runs, read straight from SQLite while a driver writes it."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            (count,) = connection.execute(
                "SELECT COUNT(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid WHERE tags.key = "
                f"'{KIND_TAG}' AND tags.value = '{KIND_TRIAL}' AND runs.status = 'FINISHED'").fetchone()
            return int(count)
    except sqlite3.Error:  # tables not made yet, or locked for a moment
        return 0


def start_driver(workdir: Path, rate: float, seed: int, number: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log = open(workdir / f"launch-{number}.log", "w")  # noqa: SIM115 - the child writes it
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--drive", str(workdir), "--fault-rate", str(rate),
         "--seed", str(seed)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: its local Ray dies with it


def kill(driver: subprocess.Popen) -> None:
    """SIGKILL the driver and what it started, as a machine that dies would."""
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    driver.wait()


def soak(workdir: Path, cells: int, trials: int, epochs: int, final_seeds: int, rate: float, kills: int,
         seed: int, timeout_s: float = 3600) -> dict[str, Any]:
    """Run the soak in `workdir`; returns its figures and the problems found (none, when it passes)."""
    pairs = [(m, o) for m in MODELS for o in OBJECTIVES][:cells]
    models = sorted({m for m, _ in pairs}, key=MODELS.index)
    objectives = sorted({o for _, o in pairs}, key=OBJECTIVES.index)
    grid = GRID.format(models=", ".join(models), objectives=", ".join(objectives), epochs=epochs,
                       final_seeds=final_seeds, trials=trials)
    exclude = [f"{{model: resnet-{m}, objective: {o}}}" for m in models for o in objectives if (m, o) not in pairs]
    if exclude:
        grid += f"exclude: [{', '.join(exclude)}]\n"
    (workdir / "grid.yaml").write_text(textwrap.dedent(grid))
    db = workdir / "study" / "mlflow.db"
    work = len(pairs) * (trials + final_seeds)
    started = time.monotonic()
    deadline = started + timeout_s
    launches, exits = 0, []
    for k in range(kills):
        threshold = work * (k + 1) // (kills + 1)
        launches += 1
        driver = start_driver(workdir, rate, seed, launches)
        while finished_runs(db) < threshold:
            if driver.poll() is not None or time.monotonic() > deadline:
                kill(driver)
                raise RuntimeError(f"launch {launches} ended (exit {driver.returncode}) before {threshold} "
                                   f"finished trials: see {workdir}/launch-{launches}.log")
            time.sleep(0.5)
        kill(driver)
        exits.append("killed")
    launches += 1
    driver = start_driver(workdir, rate, seed, launches)
    try:
        driver.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill(driver)
    exits.append(str(driver.returncode))
    figures = check(workdir, [c for c in _cell_ids(pairs)], trials, final_seeds, epochs)
    figures.update(launches=launches, kills=kills, exits=exits, wall_s=time.monotonic() - started,
                   cells=len(pairs), budget=trials, final_seeds=final_seeds, epochs=epochs, fault_rate=rate)
    if driver.returncode != 0:
        figures["problems"].insert(0, f"the last launch exited {driver.returncode}: see {workdir}/launch-{launches}.log")
    return figures


def _cell_ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"spurious_digits/resnet-{m}/{o}/scratch" for m, o in pairs]


def check(workdir: Path, cells: list[str], trials: int, final_seeds: int, epochs: int) -> dict[str, Any]:
    """Figures of the soak from MLflow, the fault log and the drivers' output, and the problems."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'study' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("soak")
    runs = list(client.search_runs([experiment.experiment_id], f"tags.`{KIND_TAG}` = '{KIND_TRIAL}'", max_results=50000))
    problems: list[str] = []
    trial_ids = collections.Counter(r.data.tags[TRIAL_ID_TAG] for r in runs)
    problems += [f"trial {t} has {n} runs" for t, n in trial_ids.items() if n > 1]
    problems += [f"run {r.info.run_name} is RUNNING" for r in runs if r.info.status == "RUNNING"]
    diverged_finals = 0
    for cell in cells:
        mine = [r for r in runs if r.data.tags[CELL_TAG] == cell and r.info.status == "FINISHED"]
        search = [r for r in mine if r.data.tags[PHASE_TAG] != PHASE_FINAL]
        final = [r for r in mine if r.data.tags[PHASE_TAG] == PHASE_FINAL]
        # A seed the chosen config diverged on is done: that seed's result, never re-trained.
        diverged = [r for r in runs if r.data.tags[CELL_TAG] == cell and r.data.tags[PHASE_TAG] == PHASE_FINAL
                    and r.info.status == "FAILED" and r.data.tags.get(DIVERGED_TAG) == "true"]
        if len(search) != trials:
            problems.append(f"{cell}: {len(search)} finished search trials, budget {trials}")
        if len(final) + len(diverged) != final_seeds:
            problems.append(f"{cell}: {len(final)} finished and {len(diverged)} diverged final seeds, "
                            f"expected {final_seeds}")
        seeds = collections.Counter(r.data.params.get(SEED_PARAM) for r in final + diverged)
        problems += [f"{cell}: seed {s} done {n} times" for s, n in seeds.items() if n > 1]
        diverged_finals += len(diverged)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    for run in finished:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, STEP_METRIC)]
        if sorted(steps) != list(range(1, epochs + 1)):
            problems.append(f"{run.info.run_name}: epochs logged {sorted(steps)}")
    reported = set()
    for log in sorted(workdir.glob("launch-*.log")):
        for line in log.read_text().splitlines():
            if line.startswith("[") and ": trial " in line and " val worst-group " in line:
                reported.add(line.split(": trial ", 1)[1].split()[0])
    finished_ids = {r.data.tags[TRIAL_ID_TAG] for r in finished}
    lost = sorted(reported - finished_ids)
    problems += [f"trial {t} was reported finished but is not FINISHED in MLflow" for t in lost]
    faults_file = workdir / "faults.jsonl"
    faults = [json.loads(line) for line in faults_file.read_text().splitlines()] if faults_file.exists() else []
    statuses = collections.Counter(r.info.status for r in runs)
    return {
        "runs": len(runs), "statuses": dict(statuses), "faults": len(faults),
        "faults_by_kind": dict(collections.Counter(f["fault"] for f in faults)),
        "diverged_finals": diverged_finals,
        "retried_and_finished": sum(int(r.data.tags.get(ATTEMPTS_TAG, "1")) > 1 for r in finished),
        "reported_finished": len(reported), "lost": len(lost), "problems": problems,
    }


def render(figures: dict[str, Any]) -> str:
    """The results section for BENCHMARKS.md."""
    date = datetime.date.today().isoformat()
    verdict = "PASSED: nothing lost, doubled or left running" if not figures["problems"] else "FAILED"
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(figures["faults_by_kind"].items())) or "none"
    statuses = ", ".join(f"{k} {n}" for k, n in sorted(figures["statuses"].items()))
    lines = [
        f"A study of {figures['cells']} cells x {figures['budget']} search trials + {figures['final_seeds']} final "
        f"seeds ({figures['epochs']} epochs each, real training), a fault on {figures['fault_rate']:.0%} of trial "
        f"attempts at a random epoch, the driver SIGKILLed {figures['kills']} times and launched again "
        f"(`python bench/soak.py`).",
        f"Measured {date} on {machine()}; {figures['wall_s'] / 60:.1f} min in all.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| launches (driver kills) | {figures['launches']} ({figures['kills']}) |",
        f"| launch exits, in order | {' '.join(figures['exits'])} |",
        f"| trial runs in MLflow | {figures['runs']} ({statuses}) |",
        f"| faults injected | {figures['faults']} ({kinds}) |",
        f"| final seeds the chosen config diverged on (done, not re-trained) | {figures['diverged_finals']} |",
        f"| trials that finished after a failed attempt (retried from their checkpoint) | "
        f"{figures['retried_and_finished']} |",
        f"| search trials the drivers reported finished | {figures['reported_finished']} |",
        f"| results lost (reported finished, not FINISHED in MLflow) | **{figures['lost']}** |",
        f"| problems (budget, duplicates, RUNNING runs, incomplete histories) | **{len(figures['problems'])}** |",
        "",
        f"**{verdict}.** KILLED runs are those the driver kills cut short: a relaunch closes them and the "
        "cell runs a new trial in their place; FAILED runs are trials whose every attempt failed, or whose "
        "loss diverged (not retried), replaced by a new trial.",
    ]
    lines += [f"- {p}" for p in figures["problems"][:20]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=4, help="cells (model x objective), at most 8")
    parser.add_argument("--trials-per-cell", type=int, default=52)
    parser.add_argument("--final-seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--drive", type=Path, help=argparse.SUPPRESS)  # the driver process
    args = parser.parse_args(argv)
    if args.drive:
        return drive(args.drive, args.fault_rate, args.seed)
    with tempfile.TemporaryDirectory(prefix="wgtune-soak-") as folder:
        figures = soak(Path(folder), args.cells, args.trials_per_cell, args.epochs, args.final_seeds,
                       args.fault_rate, args.kills, args.seed)
    text = render(figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if not figures["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())

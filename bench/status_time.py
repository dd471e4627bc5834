"""Wall time of `wgtune status` on a study of many cells, read from a real MLflow store.

    .venv/bin/python bench/status_time.py [--cells 120] [--reps 5] [--old /path/to/other/checkout]

Builds, once, a study of `--cells` cells (waterbirds and celebA × 12 model sizes × 5 objectives, from
scratch, trimmed to `--cells`) in a fresh SQLite store through the tracker's API, no training: every
cell gets its parent run as a launch registers it, and a seeded number of search trials (0 to the
budget; a few failed, one RUNNING in every tenth cell) with the params a launch logs and the best-of-run
metrics it ends them with, then its final seeds once its search is done. Then it times, in a fresh
process each (what the user waits for), `python -m wgtune.cli status --grid <grid>`, `--reps` times,
and records which of torch / ray were imported. With `--old`, the same command on the same store from
another checkout (e.g. main before the change) runs side by side, interleaved, and the ratio is taken.
Prints a markdown block headed by the machine and the date, and writes bench/results/status_time.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "status_time.md"
MODELS = {"resnet": ["10x0.25", "10x0.5", "18x0.5", "18", "34", "50"],
          "vit": ["d6w128", "tiny", "small", "base", "large", "base-p32"]}
OBJECTIVES = "{erm: {}, erm_balanced: {objective: erm, sampler: group_balanced}, irm: {}, ilc: {}, groupdro: {}}"
SEARCH, FINAL = 20, 5
PROBE = ("import runpy, sys, time\n"
         "sys.argv = ['wgtune'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('wgtune.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('HEAVY', sorted(m for m in ('torch', 'ray') if m in sys.modules), file=sys.stderr)\n")


def grid_text(n_cells: int, study_dir: Path) -> str:
    """A grid of `n_cells` cells (the first ones of 2 × 12 × 5), like grids/sizes.yaml without pretrained."""
    models = "{" + ", ".join(f"{family}: [{', '.join(sizes)}]" for family, sizes in MODELS.items()) + "}"
    return textwrap.dedent(f"""\
        study: status-bench
        study_dir: {study_dir}
        data_root: {study_dir / 'data'}
        datasets: [waterbirds, celebA]
        models: {models}
        objectives: {OBJECTIVES}
        epochs: {{waterbirds: 100, celebA: 30}}
        search: {{num_samples: {SEARCH}, max_concurrent: 8, n_startup: 5}}
        final_seeds: {FINAL}
        """)


def build(folder: Path, n_cells: int, seed: int = 0) -> tuple[Path, int]:
    """Write the grid and fill its MLflow store; returns (grid path, number of trial runs)."""
    from trainables.datasets import DATASETS
    from trainables.metrics import SELECTION_METRIC, TEST, WORST_ACC, best_key
    from trainables.models import count_parameters
    from wgtune.run.plan import cell_setting, plan_cells, trial_config
    from wgtune.spec.grid import load_grid
    from wgtune.tracking.records import PHASE_FINAL, PHASE_SEARCH, SEED_PARAM, CellRecord, config_params
    from wgtune.tracking.store import artifact_root
    from wgtune.tracking.tracker import StudyTracker

    study_dir = folder / "study"
    path = folder / "grid.yaml"
    path.write_text(grid_text(n_cells, study_dir))
    grid = load_grid(path)
    keep = [c.id for c in grid.cells()][:n_cells]
    if len(keep) < n_cells:
        raise SystemExit(f"--cells {n_cells}: the grid has only {len(keep)}")
    path.write_text(grid_text(n_cells, study_dir) + "include:\n" + "".join(
        f"  - {{dataset: {d}, model: {m}, objective: {o}}}\n" for d, m, o, _ in (k.split("/") for k in keep)))
    grid = load_grid(path)
    rng = random.Random(seed)
    tracker = StudyTracker(f"sqlite:///{study_dir / 'mlflow.db'}", grid.spec.study, artifact_root(study_dir))
    n_params: dict[tuple[str, str], int] = {}
    runs = 0
    try:
        for planned in plan_cells(grid):
            cell = planned.cell
            key = (cell.model, cell.dataset)
            if key not in n_params:
                n_params[key] = count_parameters(cell.model, DATASETS.get(cell.dataset).n_classes, 224)
            setting = cell_setting(planned)
            tracker.cell_run(CellRecord.of(cell, n_params[key], registered_objective=setting["objective"],
                                           environments=setting["environments"], sampler=setting["sampler"]))
            done = rng.randint(0, SEARCH)
            params = {d.name: d.args[0] for d in planned.space.searched()}
            for i in range(done + rng.choice([0, 0, 0, 1])):  # some cells had a trial fail and be replaced
                logged = {**params, **config_params(trial_config(planned, params))}
                handle = tracker.start_trial(cell.id, f"{cell.seed(0):x}_{i:05d}", logged, "tpe")
                value = rng.uniform(0.3, 0.9)
                if i == done:
                    tracker.end_trial(handle, "FAILED", error="RuntimeError: CUDA out of memory")
                else:
                    tracker.end_trial(handle, "FINISHED", summary={SELECTION_METRIC: value,
                                                                   best_key(TEST, WORST_ACC): value - 0.05})
                runs += 1
            if done == SEARCH:
                for s in range(FINAL):
                    logged = {**params, SEED_PARAM: s, **config_params(trial_config(planned, params, s))}
                    handle = tracker.start_trial(cell.id, f"{cell.seed(0):x}_f{s}", logged, "final", phase=PHASE_FINAL)
                    tracker.end_trial(handle, "FINISHED", summary={best_key(TEST, WORST_ACC): rng.uniform(0.3, 0.9)})
                    runs += 1
            elif rng.random() < 0.1:
                tracker.start_trial(cell.id, f"{cell.seed(0):x}_run", {**params}, "tpe", phase=PHASE_SEARCH)
                runs += 1  # left RUNNING: a launch is under way
        tracker.flush()
    finally:
        tracker.close()
    return path, runs


FLOOR = ("import sys, time\n"
         "started = time.perf_counter()\n"
         "from mlflow import MlflowClient\n"
         "from mlflow.store.tracking import sqlalchemy_store\n"
         "imported = time.perf_counter()\n"
         "client = MlflowClient(sys.argv[1])\n"
         "experiment = client.get_experiment_by_name('status-bench').experiment_id\n"
         "runs = client.search_runs([experiment], \"tags.`wgtune.kind` = 'trial'\", max_results=50000)\n"
         "print(imported - started, time.perf_counter() - imported, len(runs))\n")


def mlflow_floor(grid: Path) -> tuple[float, float]:
    """(seconds importing MLflow and its SQL store, seconds reading the study's trial runs in one search), in a
    fresh process: what any reader of the study through MLflow's client pays, whatever it does next."""
    db = grid.parent / "study" / "mlflow.db"
    out = subprocess.run([sys.executable, "-c", FLOOR, f"sqlite:///{db}"], capture_output=True, text=True, check=True)
    imported, searched, _ = out.stdout.split()
    return float(imported), float(searched)


def time_status(checkout: Path, grid: Path) -> tuple[float, list[str], str]:
    """(wall seconds, heavy modules imported, stdout) of `wgtune status` run from `checkout`, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(checkout)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, "status", "--grid", str(grid)], env=env, cwd=checkout,
                         capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    heavy = next((line.split(" ", 1)[1] for line in out.stderr.splitlines() if line.startswith("HEAVY ")), "?")
    if "study status-bench" not in out.stdout:
        raise SystemExit(f"status from {checkout} failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    return wall, [heavy], out.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=120)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--old", type=Path, help="another checkout to time side by side (e.g. main)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    parser.add_argument("--study", type=Path, help="build the study in (or reuse it from) this folder, kept")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wgtune-status-bench-") as tmp:
        folder = args.study or Path(tmp)
        started = time.perf_counter()
        if args.study and (folder / "built.txt").exists():
            grid, runs = folder / "grid.yaml", int((folder / "built.txt").read_text())
        else:
            folder.mkdir(parents=True, exist_ok=True)
            grid, runs = build(folder, args.cells)
            (folder / "built.txt").write_text(str(runs))
        built_s = time.perf_counter() - started
        variants = {"this checkout": ROOT, **({f"old ({args.old})": args.old} if args.old else {})}
        times: dict[str, list[float]] = {name: [] for name in variants}
        heavy: dict[str, list[str]] = {}
        lines: dict[str, int] = {}
        for rep in range(args.reps):
            for name, checkout in (list(variants.items()) if rep % 2 == 0 else list(variants.items())[::-1]):
                wall, imported, out = time_status(checkout, grid)
                times[name].append(wall)
                heavy[name], lines[name] = imported, len(out.splitlines())
        floors = [mlflow_floor(grid) for _ in range(args.reps)]
    rows = [f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} | {lines[name]} | "
            f"{heavy[name][0]} |" for name, t in times.items()]
    text = "\n".join([
        f"Measured {dt.date.today().isoformat()} on {machine()}.",
        f"Study: {args.cells} cells in a SQLite MLflow store, {runs} trial runs "
        f"({'reused from ' + str(args.study) if built_s < 1 else f'built in {built_s:.0f} s'}); "
        f"`wgtune status --grid`, a fresh process each, {args.reps} reps" + (", interleaved" if args.old else ""),
        "",
        "| checkout | median s | min s | max s | lines printed | heavy modules imported |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"MLflow alone, fresh process (medians): importing mlflow and its SQL store "
        f"{statistics.median(f[0] for f in floors):.2f} s, one search of the {runs} trial runs "
        f"{statistics.median(f[1] for f in floors):.2f} s: any reader of the study through MLflow's client pays both.",
    ])
    if args.old:
        old = statistics.median(times[f"old ({args.old})"])
        text += f"\n\nold / this checkout (medians): {old / statistics.median(times['this checkout']):.1f}×"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()

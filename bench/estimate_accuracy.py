"""Estimate accuracy: a dry run's expected device-hours per cell against what the study then spent (issue 16).

    .venv/bin/python bench/estimate_accuracy.py [--output bench/results/estimate_accuracy.md]

Two real studies, each in a fresh folder, trained for real on the built-in spurious_digits (CPU, a few minutes):

- the quickstart (`grids/quickstart.yaml`: 4 cells, 4 search trials and 3 final seeds each, 8 epochs);
- a 4-size study: ERM on resnet-10x0.25, 10x0.5, 18x0.5 and 18 (3 search trials and 1 final seed, 4 epochs).

For each, every cell is first calibrated on this machine (`wgtune.run.calibrate.calibrate`, what
`wgtune launch --dry-run --calibrate` runs) and estimated (`wgtune.run.estimate.estimate_cells`) before anything
was launched; then the study is launched (`wgtune.run.study.launch`) and each cell's measured cost is the sum of its
trial runs' `cost/device_s` (`wgtune.report.compute.cell_cost`). Goal: every cell within ±30%. For the 4-size study
the neighbour source is also shown: each cell estimated from the others' measured trials only (leave one out),
scaled by parameters × epochs, as a dry run does for a cell that has not run yet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.machine import machine  # noqa: E402

GOAL = 0.30
FOUR_SIZES = {
    "study": "four_sizes",
    "study_dir": "four_sizes",
    "datasets": {"spurious_digits": {"spurious_fraction": 0.95}},
    "models": {"resnet": ["10x0.25", "10x0.5", "18x0.5", "18"]},
    "objectives": ["erm"],
    "epochs": 4,
    "search": {"num_samples": 3, "max_concurrent": 2, "n_startup": 2},
    "resources": {"cpu": 1},
    "search_space": {"all": {"optimizer": "sgd", "lr": {"loguniform": [1.0e-2, 2.0e-1]}}},
    "final_seeds": 1,
}


def run_study(grid_path: Path) -> dict:
    """Calibrate and estimate every cell, launch the study for real, and read what each cell spent."""
    from wgtune.report.compute import cell_cost
    from wgtune.run.calibrate import calibrate
    from wgtune.run.estimate import estimate_cells
    from wgtune.run.plan import plan_cells
    from wgtune.run.study import LaunchOptions, cell_record, launch
    from wgtune.spec.grid import load_grid
    from wgtune.tracking.store import resolve_tracking_uri
    from wgtune.tracking.tracker import StudyTracker

    grid = load_grid(grid_path)
    plans = plan_cells(grid)
    n_params = {p.cell.id: cell_record(p).n_params for p in plans}
    started = time.perf_counter()
    timed = calibrate(plans)
    calibration_s = time.perf_counter() - started
    estimates = {e.cell_id: e for e in estimate_cells(plans, [], n_params, timed)}
    started = time.perf_counter()
    load = os.getloadavg()[0]
    launch(grid, LaunchOptions(progress_every_s=3600.0), print_line=lambda _: None)
    launch_s = time.perf_counter() - started
    load = max(load, os.getloadavg()[0])
    with StudyTracker(resolve_tracking_uri(grid.study_dir), grid.spec.study) as tracker:
        trials = tracker.trial_runs()
    measured = {p.cell.id: cell_cost([t for t in trials if t.cell_id == p.cell.id]).total_s for p in plans}
    neighbour = {}
    for p in plans:  # leave one out: the cell's own trials hidden, its neighbours' measured ones known
        others = [t for t in trials if t.cell_id != p.cell.id]
        [estimate] = [e for e in estimate_cells(plans, others, n_params) if e.cell_id == p.cell.id]
        neighbour[p.cell.id] = estimate
    return {"plans": plans, "estimates": estimates, "measured": measured, "neighbour": neighbour,
            "n_params": n_params, "calibration_s": calibration_s, "launch_s": launch_s, "load": load,
            "standalone": standalone(plans, timed, trials)}


def standalone(plans, timed, trials) -> dict[str, tuple[float, float, float]]:
    """Per cell: the calibrated prediction of one trial, the same trial trained alone here (outside Ray, at the
    calibration's searched values), and the mean of the study's finished search trials: the first gap is the
    calibration's own error, the second what running inside the study (concurrent trials, the driver) adds."""
    import torch

    from trainables.metrics import DEVICE_SECONDS, ELAPSED_SECONDS
    from trainables.training import train
    from wgtune.run.calibrate import calibration_params
    from wgtune.run.plan import trial_config
    from wgtune.tracking.records import device_use

    threads = torch.get_num_threads()
    out = {}
    for plan in plans:
        timing, devices = timed[plan.cell.id], device_use(plan.resources)[1]
        torch.set_num_threads(max(int(devices), 1))
        clock: list[float] = []
        with tempfile.TemporaryDirectory() as workdir:
            train(trial_config(plan, calibration_params(plan)), lambda m, _: clock.append(m[ELAPSED_SECONDS]),
                  workdir=workdir)
        mine = [t.metrics[DEVICE_SECONDS] for t in trials
                if t.cell_id == plan.cell.id and t.phase == "search" and t.status == "FINISHED"]
        out[plan.cell.id] = ((timing.setup_s + timing.epochs * timing.epoch_s) * devices, clock[-1] * devices,
                             sum(mine) / len(mine))
    torch.set_num_threads(threads)
    return out


def _ratio(estimate: float | None, measured: float) -> str:
    return "—" if estimate is None or not measured else f"{estimate / measured:.2f}"


def _within(estimate: float | None, measured: float) -> bool:
    return estimate is not None and measured > 0 and abs(estimate / measured - 1) <= GOAL


def table(name: str, result: dict, with_neighbour: bool) -> list[str]:
    head = "| cell | parameters | estimated (calibrate) | measured | ratio | within ±30% |"
    rule = "|---|---:|---:|---:|---:|---|"
    if with_neighbour:
        head += " neighbour estimate | ratio | source |"
        rule += "---:|---:|---|"
    lines = [f"### {name}", "", f"Calibration {result['calibration_s']:.0f} s, launch {result['launch_s']:.0f} s "
             f"(1-minute load average up to {result['load']:.1f} on the 2 cores). CPU-core-hours.", "", head, rule]
    for p in result["plans"]:
        e, m = result["estimates"][p.cell.id], result["measured"][p.cell.id]
        hours = None if e.total_s is None else e.total_s / 3600
        row = (f"| {p.cell.label} | {result['n_params'][p.cell.id]:,} | {'—' if hours is None else f'{hours:.4f}'} "
               f"| {m / 3600:.4f} | {_ratio(e.total_s, m)} | {'met' if _within(e.total_s, m) else 'missed'} |")
        if with_neighbour:
            n = result["neighbour"][p.cell.id]
            source = n.per_trial.source if n.per_trial else n.why
            row += (f" {'—' if n.total_s is None else f'{n.total_s / 3600:.4f}'} | {_ratio(n.total_s, m)} "
                    f"| {source} |")
        lines.append(row)
    lines += ["", "One trial, CPU-core-seconds: calibrated prediction, the same trial trained alone here, and the mean "
              "of the study's finished search trials:", "",
              "| cell | calibrated | alone | in the study | alone / calibrated | study / alone |",
              "|---|---:|---:|---:|---:|---:|"]
    for p in result["plans"]:
        predicted, alone, study = result["standalone"][p.cell.id]
        lines.append(f"| {p.cell.label} | {predicted:.1f} | {alone:.1f} | {study:.1f} | {alone / predicted:.2f} "
                     f"| {study / alone:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "estimate_accuracy.md")
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="wgtune-estimate-") as folder:
        root = Path(folder)
        quick = root / "quickstart.yaml"
        # Each study in the temporary folder (a grid's default study_dir is ./wgtune_studies/<study>): fresh.
        quick.write_text((HERE.parent / "grids" / "quickstart.yaml").read_text() + "study_dir: quickstart\n")
        sizes = root / "four_sizes.yaml"
        sizes.write_text(yaml.safe_dump(FOUR_SIZES, sort_keys=False))
        results = {"quickstart (grids/quickstart.yaml)": (run_study(quick), False),
                   "4-size CPU study (ERM, resnet-10x0.25 … resnet-18)": (run_study(sizes), True)}
    cells = [(r["estimates"][p.cell.id].total_s, r["measured"][p.cell.id])
             for r, _ in results.values() for p in r["plans"]]
    met = sum(_within(e, m) for e, m in cells)
    lines = [
        "Estimated vs measured device-hours per cell (issue 16): each cell calibrated on this machine (two real "
        "training epochs, `wgtune launch --dry-run --calibrate`) before launch, then the study launched for real "
        "and each cell's `cost/device_s` summed over its trial runs. Goal: every cell within ±30% of its measured "
        f"cost. **{met} of {len(cells)} cells within ±30%: goal {'met' if met == len(cells) else 'missed'}.**",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {machine()}.",
        "",
    ]
    for name, (result, neighbour) in results.items():
        lines += table(name, result, neighbour) + [""]
    lines += [
        "Calibration times each cell alone; the study runs two trials at once on two cores beside its driver (Ray, "
        "MLflow's writer) and, on this shared machine, other sessions' work (the load average above), so a trial's "
        "wall clock, and with it its device-seconds, grows. The second table of each study separates the two: the "
        "calibration's own error (alone / calibrated) and what running inside the study adds (study / alone), which "
        "varies with the machine's load. Contention is not modelled by the estimate. "
        "The neighbour column scales another cell's measured trials by parameters × epochs (Kaplan et al. 2020, "
        "C ≈ 6ND); on a CPU, small models are bound by per-step overheads that do not scale with parameters, "
        "which is where it errs.",
    ]
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

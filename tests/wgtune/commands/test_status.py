"""`wgtune status` on a study in MLflow: the launch's view, read without Ray or torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

GRID = """
study: status
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25, 10x0.5]}
objectives: [erm, groupdro]
epochs: 1
final_seeds: 0
search: {num_samples: 3}
"""

PROBE = textwrap.dedent("""
    import sys
    from wgtune.cli import main
    code = main(sys.argv[1:])
    print("HEAVY", sorted(m for m in ("torch", "torchvision", "timm", "ray", "hyperopt") if m in sys.modules))
    sys.exit(code)
""")


def study_in_mlflow(folder: Path) -> Path:
    """A launched-looking study: its cells' parent runs and some finished and failed trials, written with
    the tracker as a launch writes them (no training), one cell given up on."""
    from trainables.metrics import SELECTION_METRIC
    from wgtune.run.plan import trial_config
    from wgtune.run.study import prepare
    from wgtune.spec.grid import load_grid
    from wgtune.tracking.records import config_params
    from wgtune.tracking.store import artifact_root
    from wgtune.tracking.tracker import StudyTracker

    path = folder / "grid.yaml"
    path.write_text(GRID)
    grid = load_grid(path)
    tracker = StudyTracker(f"sqlite:///{grid.study_dir / 'mlflow.db'}", grid.spec.study, artifact_root(grid.study_dir))
    try:
        cells = prepare(grid, tracker)
        for n, planned in enumerate(cells):
            params = {d.name: d.args[0] for d in planned.space.searched()}
            for i in range(n):
                run = tracker.start_trial(planned.cell.id, f"t{n}_{i}", {**params, **config_params(trial_config(planned, params))}, "tpe")
                tracker.end_trial(run, "FINISHED", summary={SELECTION_METRIC: 0.5 + 0.1 * i})
        failed = tracker.start_trial(cells[1].cell.id, "bad", {}, "tpe")
        tracker.end_trial(failed, "FAILED", error="RuntimeError: injected")
        tracker.mark_failing(cells[1].cell.id, 1)
        tracker.flush()
    finally:
        tracker.close()
    return path


def test_status_shows_the_view_from_mlflow_without_importing_torch_or_ray(tmp_path):
    study_in_mlflow(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}

    out = subprocess.run([sys.executable, "-c", PROBE, "status", "--grid", "grid.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("HEAVY []"), out.stdout[-300:]
    text = out.stdout
    assert "4 cells: 1 failing, 2 waiting, 1 done · search 6/12 · final 0/0 · 1 failed trials" in text
    [failing] = [line for line in text.splitlines() if "FAILING" in line]
    assert failing.startswith("spurious_digits · resnet-10x0.25 · groupdro ")
    lines = text.splitlines()
    cells = lines[lines.index(next(line for line in lines if line.startswith("cell "))) + 1:][:4]
    assert [line.split("  ")[0] for line in cells] == [  # failing, then waiting, then done
        "spurious_digits · resnet-10x0.25 · groupdro", "spurious_digits · resnet-10x0.25 · erm",
        "spurious_digits · resnet-10x0.5 · erm", "spurious_digits · resnet-10x0.5 · groupdro"]
    assert " 3/3 " in cells[3]


def test_status_all_lists_every_cell(tmp_path):
    study_in_mlflow(tmp_path)

    from wgtune.run.study import status
    from wgtune.spec.grid import load_grid

    text = status(load_grid(tmp_path / "grid.yaml"), max_lines=None)

    rows = [line for line in text.splitlines() if line.startswith("spurious_digits · ")]
    assert len(rows) == 4 and text.splitlines()[-2].startswith("total") and " 6/12 " in text.splitlines()[-2]

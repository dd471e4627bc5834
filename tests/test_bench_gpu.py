"""The GPU check runs end to end on the CPU with tiny sizes, so it works the first time a GPU is there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # two real Ray + MLflow launches: minutes on a shared 2-core machine


def test_the_gpu_check_runs_on_the_cpu_and_reports_every_figure(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # `python -m bench gpu ...` runs this same module, then rebuilds BENCHMARKS.md: not from a test.
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", "cpu", "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]

    table = out.read_text()
    assert table.startswith("SMOKE RUN")
    for model in ("resnet-10x0.25", "resnet-10x0.5", "vit-d2w64"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {model} |"))
        train, hand, ratio, wait = (cell.strip(" *%") for cell in row.split("|")[2:6])
        assert float(train) > 0 and float(hand) > 0
        assert float(ratio) == pytest.approx(float(train) / float(hand), rel=0.02)
        assert 0 <= float(wait) <= 100
    for label in ("2 × 1 CPU", "1 × 2 CPUs"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        aggregate, per_trial, overlap = (cell.strip(" %") for cell in row.split("|")[2:5])
        assert float(aggregate) > 0 and float(per_trial) > 0 and 0 <= float(overlap) <= 100
    assert re.search(r"2 × 1 CPU vs 1 × 2 CPUs: \*\*[\d.]+×\*\* aggregate", table)

"""The data-path benchmark runs end to end with tiny sizes and reports every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # spawns trial processes that import torch: about a minute


def test_the_data_path_benchmark_reports_every_path(tmp_path):
    out = tmp_path / "data_path.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "bench.data_path", "--images", "16", "--reps", "1",
                           "--warm-epochs", "1", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 8
    for row in rows:
        rate = float(row.split("|")[3])
        assert rate > 0
    assert "(goal ≥ 20×:" in out.read_text()

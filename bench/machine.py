"""The machine a benchmark ran on, in one line, for every results file."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine(*versions: str) -> str:
    """CPU model, core count, OS and Python, then `versions` (e.g. "MLflow 3.17.2")."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores (shared)", f"{platform.system()} {platform.release()}",
             f"Python {platform.python_version()}", *versions]
    return ", ".join(parts)

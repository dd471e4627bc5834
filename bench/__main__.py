"""Run benchmarks and assemble BENCHMARKS.md from their results.

    python -m bench                  # run every benchmark, then assemble
    python -m bench throughput ...   # run these only, then assemble
    python -m bench gpu --device cpu --smoke   # options after one name go to that benchmark
    python -m bench --assemble       # assemble what bench/results/ holds, run nothing

Each benchmark runs in its own process (they measure memory and time; they must not share one)
and writes `bench/results/<name>.md` stamped with its machine and date.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUTPUT = HERE.parent / "BENCHMARKS.md"
# In the order BENCHMARKS.md shows them.
BENCHMARKS = (
    "throughput",
    "data_path",
    "gpu",
    "ilc_memory",
    "worst_group_table",
    "orchestration_overhead",
    "tracking_overhead",
    "warm_start",
    "allocation",
    "prior_coverage",
    "occupancy",
    "status_time",
    "estimate_accuracy",
    "soak",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--assemble", action="store_true", help="only rebuild BENCHMARKS.md")
    args, options = parser.parse_known_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    if options and len(args.names) != 1:
        parser.error(f"options {' '.join(options)} go to one benchmark: name exactly one")
    failed = []
    if not args.assemble:
        for name in args.names or BENCHMARKS:
            print(f"== bench/{name}.py", flush=True)
            if subprocess.call([sys.executable, str(HERE / f"{name}.py"), *options]) != 0:
                failed.append(name)
    OUTPUT.write_text(assemble())
    print(f"wrote {OUTPUT}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def assemble() -> str:
    """BENCHMARKS.md: every result file in the declared order; missing ones are named as such."""
    parts = [
        "# Benchmarks\n",
        "Measured with `make bench` (`python -m bench`); each section names its machine and date. "
        "Machines here are shared and noisy, so every speed figure is a ratio against a baseline "
        "run side by side in the same script.\n",
    ]
    for name in BENCHMARKS:
        path = RESULTS / f"{name}.md"
        body = path.read_text().strip() if path.exists() else "_not measured yet: run `python -m bench " + name + "`_"
        # A benchmark run again with other options writes `<name>_<variant>.md` beside its main result.
        body += "".join(f"\n\n### {name.replace('_', ' ')}: {extra.stem[len(name) + 1:].replace('_', ' ')}\n\n"
                        f"{extra.read_text().strip()}" for extra in sorted(RESULTS.glob(f"{name}_*.md")))
        parts.append(f"## {name.replace('_', ' ')}\n\n{body}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())

"""`wgtune launch --grid FILE`: start a study, or resume it where it stopped."""

from __future__ import annotations

import argparse
from pathlib import Path

from wgtune.cli import Command


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every study command takes: the grid and where its runs are tracked."""
    parser.add_argument("--grid", type=Path, required=True, help="the study's grid file (YAML)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <study dir>/mlflow.db)")


class LaunchCommand(Command):
    name = "launch"
    help = "Run a study: every cell's search on Ray Tune, every trial in MLflow. Re-run to resume."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_arguments(parser)
        parser.add_argument("--address", default=None,
                            help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the cells, their spaces, budgets and resources; start nothing")
        parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                            help="how often to print the per-cell table while running")

    def run(self, args: argparse.Namespace) -> int:
        from wgtune.spec.grid import load_grid
        from wgtune.run.study import LaunchOptions, describe, launch

        grid = load_grid(args.grid)
        if args.dry_run:
            print(describe(grid, args.tracking_uri))
            return 0
        launch(grid, LaunchOptions(args.tracking_uri, args.address, args.progress_every))
        return 0

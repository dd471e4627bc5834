"""`wgtune launch --grid FILE`: start a study, or resume it where it stopped."""

from __future__ import annotations

import argparse
from typing import Callable

from wgtune.commands.base import Command, add_study_arguments
from wgtune.run.display import LOG_SUMMARY_EVERY_S, PROGRESS_MODES


class LaunchCommand(Command):
    """`trial_fn(config, cells)`, if given, replaces the training trial (the soak injects faults through it)."""

    name = "launch"
    help = "Run a study: every cell's search on Ray Tune, every trial in MLflow. Re-run to resume."

    def __init__(self, trial_fn: Callable[..., None] | None = None) -> None:
        self.trial_fn = trial_fn

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_arguments(parser)
        parser.add_argument("--address", default=None,
                            help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the cells, their spaces, budgets and resources; start nothing")
        parser.add_argument("--calibrate", action="store_true",
                            help="with --dry-run: time two real training epochs of each cell without trials of its "
                                 "own on this machine, for the expected device-hours (a minute or two)")
        parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                            help="live: a view redrawn in place (the default on a terminal); log: one line per "
                                 "trial and a compact summary now and then (the default otherwise)")
        parser.add_argument("--progress-every", type=float, default=LOG_SUMMARY_EVERY_S, metavar="SECONDS",
                            help="in log mode, the least time between two progress summaries (totals, plus the "
                                 "cells that changed or fail); default %(default)g")
        from wgtune.tracking.selection import DEFAULT_RULE, SELECTION_RULES

        parser.add_argument("--select", default=DEFAULT_RULE, choices=tuple(SELECTION_RULES),
                            help="re-train final seeds of the config another selection rule chooses, in the cells "
                                 "where it differs from what the study re-trained (no search; the runs carry the "
                                 "rule, `wgtune report --select RULE` shows them); default: the study itself")

    def run(self, args: argparse.Namespace) -> int:
        from wgtune.run.dry_run import describe
        from wgtune.run.study import LaunchOptions, launch
        from wgtune.spec.grid import load_grid

        grid = load_grid(args.grid)
        if args.dry_run:
            print(describe(grid, args.tracking_uri, calibrate=args.calibrate))
            return 0
        options = LaunchOptions(args.tracking_uri, args.address, args.progress_every, args.progress,
                                select=args.select)
        launch(grid, options, trial_fn=self.trial_fn)
        return 0

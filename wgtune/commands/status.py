"""`wgtune status --grid FILE`: the launch's progress view of a study, from MLflow alone."""

from __future__ import annotations

import argparse
import shutil
import sys

from wgtune.commands.base import Command, add_study_arguments

NOT_A_TERMINAL_LINES = 60
"""The view's height when output is not a terminal (a pipe, a file): `--all` lists every cell."""


class StatusCommand(Command):
    name = "status"
    help = ("Show the study's progress (cells grouped, failing and running ones first) and best results, read "
            "from MLflow (does not start Ray or import torch).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_arguments(parser)
        parser.add_argument("--all", action="store_true", help="list every cell, one line each")

    def run(self, args: argparse.Namespace) -> int:
        from wgtune.run.study import status
        from wgtune.spec.grid import load_grid

        height = shutil.get_terminal_size((100, NOT_A_TERMINAL_LINES)).lines - 3 if sys.stdout.isatty() \
            else NOT_A_TERMINAL_LINES
        print(status(load_grid(args.grid), args.tracking_uri, max_lines=None if args.all else height))
        return 0

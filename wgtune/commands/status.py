"""`wgtune status --grid FILE`: per cell, trials done / budget and the best so far, from MLflow."""

from __future__ import annotations

import argparse

from wgtune.commands.base import Command, add_study_arguments


class StatusCommand(Command):
    name = "status"
    help = "Show each cell's progress and best result, read from MLflow (does not start Ray)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from wgtune.run.study import status
        from wgtune.spec.grid import load_grid

        print(status(load_grid(args.grid), args.tracking_uri))
        return 0

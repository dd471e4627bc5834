"""`wgtune priors --grid FILE [--cell PATTERN]`: what each cell's search would start from."""

from __future__ import annotations

import argparse

from wgtune.commands.base import Command, add_study_arguments


class PriorsCommand(Command):
    name = "priors"
    help = "Print each cell's priors (own history, neighbours, narrowed space) without launching."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_arguments(parser)
        parser.add_argument("--cell", default=None, metavar="PATTERN",
                            help="only cells whose id matches this shell pattern, e.g. '*/resnet-18/*'")

    def run(self, args: argparse.Namespace) -> int:
        from wgtune.run.study import priors_report
        from wgtune.spec.grid import load_grid

        print(priors_report(load_grid(args.grid), args.tracking_uri, args.cell))
        return 0

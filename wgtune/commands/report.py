"""`wgtune report --grid FILE [--out DIR]`: the study as tables and curves over model size."""

from __future__ import annotations

import argparse
from pathlib import Path

from wgtune.commands.base import Command, add_study_arguments


class ReportCommand(Command):
    name = "report"
    help = "Write per-cell tables (CSV, Markdown) and worst-group-vs-size figures from MLflow."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_arguments(parser)
        parser.add_argument("--out", type=Path, default=None,
                            help="folder for the report (default: <study_dir>/report, report-<rule> for --select)")
        from wgtune.report.build import DEFAULT_RULE, SELECTION_RULES

        parser.add_argument("--select", default=DEFAULT_RULE, choices=tuple(SELECTION_RULES),
                            help="how each cell's config is chosen among its search trials: the study's rule "
                                 "(val_worst, needs group labels on validation), val_avg (needs none), or "
                                 "oracle_test_worst (a ceiling, not a result); recomputed from MLflow")

    def run(self, args: argparse.Namespace) -> int:
        from wgtune.run.reporting import report
        from wgtune.spec.grid import load_grid

        files = report(load_grid(args.grid), args.out, args.tracking_uri, args.select)
        print("\n".join(str(path) for path in files))
        return 0

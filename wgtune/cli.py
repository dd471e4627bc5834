"""The `wgtune` command line: a table of subcommands, each one small class.

Heavy libraries (torch, ray, mlflow) are imported inside `run`, never at module import, so
`wgtune --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from wgtune.spec.errors import user_errors

if TYPE_CHECKING:
    from wgtune.commands.base import Command


class _LazyEpilogParser(argparse.ArgumentParser):
    """Asks its command for the epilog only when help is printed."""

    epilog_source: Callable[[], str | None] | None = None

    def format_help(self) -> str:
        if self.epilog_source is not None:
            self.epilog = self.epilog_source()
        return super().format_help()


def _commands() -> dict[str, Command]:
    from wgtune.commands.launch import LaunchCommand
    from wgtune.commands.priors import PriorsCommand
    from wgtune.commands.report import ReportCommand
    from wgtune.commands.server import ServerCommand
    from wgtune.commands.status import StatusCommand
    from wgtune.commands.train import TrainCommand
    from wgtune.commands.ui import UICommand

    commands = (LaunchCommand(), StatusCommand(), ReportCommand(), PriorsCommand(), UICommand(), ServerCommand(),
                TrainCommand())
    return {command.name: command for command in commands}


def build_parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="wgtune",
        description="Hyperparameter search for scaling studies of worst-group accuracy.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_LazyEpilogParser)
    for command in commands.values():
        child = sub.add_parser(command.name, help=command.help, description=command.help,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        child.epilog_source = command.epilog
        command.add_arguments(child)
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = ()) -> int:
    """Entry point of the `wgtune` console script; `commands` replace the built-in ones of the same name
    (how a benchmark runs `launch` with its own trial function through the real command line)."""
    commands = {**_commands(), **{command.name: command for command in commands}}
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    # MLflow announces every schema migration of a new store at INFO (it configures its logger
    # on import, from this variable); users need warnings only.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Over HTTP MLflow prints "View run ..." / "View experiment ..." on stdout for every run it
    # ends: two lines per trial in launch's progress view, and noise in report's file list.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Over HTTP, MLflow's own retries (7, back-off factor 2) would hold the tracking writer for
    # minutes per write while a server is away; the writer retries in order by itself.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return commands[args.command].run(args)
    except user_errors() as err:
        print(f"wgtune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wgtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

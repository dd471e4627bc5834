"""What every subcommand shares: the `Command` base class, the study flags, and network binding.

The CLI (`wgtune/cli.py`) imports the commands; the commands import this module, never the CLI,
so the command line has no import circle.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import ClassVar

LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Interfaces that reach this machine only: `wgtune ui` and `wgtune server` bind nothing else unless told."""


class Command:
    """One subcommand: its arguments and what it does."""

    name: ClassVar[str]
    help: ClassVar[str]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's flags."""

    def epilog(self) -> str | None:
        """Extra help text, computed only when help is shown (it may import heavy modules)."""
        return None

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code."""
        raise NotImplementedError


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every study command takes: the grid and where its runs are tracked."""
    parser.add_argument("--grid", type=Path, required=True, help="the study's grid file (YAML)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <study dir>/mlflow.db)")


def url_host(host: str) -> str:
    """The host to print in a URL for a server bound to `host` (a wildcard bind is reached on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host

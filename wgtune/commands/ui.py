"""`wgtune ui --grid FILE`: the MLflow UI over the study's runs, on this machine only by default."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from wgtune.commands.base import LOOPBACK, Command, add_study_arguments, url_host

if TYPE_CHECKING:
    from wgtune.spec.grid import Grid


class UICommand(Command):
    name = "ui"
    help = "Start the MLflow UI on the study's tracking store and print its address."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_arguments(parser)
        from wgtune.tracking.store import UI_HOST, UI_PORT

        parser.add_argument("--port", type=int, default=UI_PORT)
        parser.add_argument("--host", default=UI_HOST,
                            help="interface to bind (default 127.0.0.1: this machine only)")
        parser.add_argument("--allow-remote", action="store_true",
                            help="required to bind anything but loopback; the UI has no authentication")

    def run(self, args: argparse.Namespace) -> int:
        from wgtune.spec.errors import UserError
        from wgtune.spec.grid import load_grid
        from wgtune.tracking.store import is_local_store, redact, resolve_tracking_uri

        grid = load_grid(args.grid)
        uri = resolve_tracking_uri(grid.study_dir, args.tracking_uri)
        if not is_local_store(uri):
            raise UserError(f"the study is tracked on a server ({redact(uri)}): open that server's address instead")
        if args.host not in LOOPBACK:
            if not args.allow_remote:
                raise UserError(f"--host {args.host} exposes every run to the network without authentication; "
                                "add --allow-remote if that is what you want")
            print(f"warning: the MLflow UI is reachable from the network on {args.host}:{args.port}, "
                  "with no authentication", file=sys.stderr)
        command = ui_command(uri, args.host, args.port)
        print(f"MLflow UI for study {grid.spec.study}: {study_address(grid, uri, url_host(args.host), args.port)}  "
              "(Ctrl-C stops it)", flush=True)
        # MLflow's UI fetches a telemetry config from the internet at start; studies often run where
        # there is none, and nobody asked for it. A user who wants it sets the variable to false.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
        return subprocess.call(command, env=env)


def study_address(grid: Grid, uri: str, host: str, port: int) -> str:
    """The address of the study's runs view on this UI, or the UI's own address before the study is launched."""
    from wgtune.tracking.records import STUDY_VIEW_KEY
    from wgtune.tracking.store import runs_view_url, sqlite_path, ui_address

    address = ui_address(uri, host, port) or f"http://{host}:{port}"
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # looking must not create the store
        return address
    from mlflow import MlflowClient

    experiment = MlflowClient(uri).get_experiment_by_name(grid.spec.study)
    return address if experiment is None else runs_view_url(address, experiment.experiment_id, STUDY_VIEW_KEY)


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for a local store (artifacts are found through each experiment)."""
    # One worker: the UI serves one person, and each worker costs seconds to start and ~150 MB.
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1"]

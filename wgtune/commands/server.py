"""`wgtune server`: a shared MLflow tracking server for studies run by several drivers or people.

It runs `mlflow server` on a SQLite or PostgreSQL store, serving artifacts itself (clients upload
and download through it, so they need no access to its artifact folder). Drivers and users point
at it with MLFLOW_TRACKING_URI=http://HOST:PORT. Like `wgtune ui`, it listens on 127.0.0.1 unless
told otherwise, and binding any other interface needs --allow-remote. Once its checks pass, the
command replaces itself with `mlflow server`, so a supervisor's signals reach the server directly.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from wgtune.commands.base import LOOPBACK, Command, url_host
from wgtune.tracking.store import sqlite_path

DEFAULT_DIR = "wgtune_server"
"""Where the default SQLite store and artifact folder live, in the working directory (as `wgtune_studies/`)."""
_DRIVERS = {  # URI scheme -> the Python module its SQLAlchemy dialect needs
    "sqlite": None, "postgresql": "psycopg2", "postgresql+psycopg2": "psycopg2", "postgresql+psycopg": "psycopg",
    "postgresql+pg8000": "pg8000",
}


class ServerCommand(Command):
    name = "server"
    help = "Start a shared MLflow tracking server (SQLite or PostgreSQL store, artifacts served by it)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--backend-store-uri", default=None, metavar="URI",
                            help=f"sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default: sqlite:///{DEFAULT_DIR}/"
                                 "mlflow.db); put no password in it: libpq reads PGPASSWORD or ~/.pgpass")
        parser.add_argument("--artifacts-destination", default=None, metavar="DIR",
                            help=f"folder (or s3://, gs://, ... URI) the server keeps artifacts in "
                                 f"(default: {DEFAULT_DIR}/artifacts)")
        parser.add_argument("--host", default="127.0.0.1",
                            help="interface to bind (default 127.0.0.1: this machine only)")
        parser.add_argument("--port", type=int, default=5000)
        parser.add_argument("--allow-remote", action="store_true",
                            help="required to bind anything but loopback")
        parser.add_argument("--allowed-hosts", default=None, metavar="HOSTS",
                            help="host names clients use to reach the server, e.g. tracking.lab:5000 (MLflow "
                                 "answers only localhost and private IPs by default)")
        parser.add_argument("--basic-auth", action="store_true",
                            help="MLflow's basic-auth app: needs Flask-WTF, MLFLOW_FLASK_SERVER_SECRET_KEY and, on "
                                 "first start, MLFLOW_AUTH_ADMIN_PASSWORD; users are kept in basic_auth.db in the "
                                 "working directory")
        parser.add_argument("--workers", type=int, default=1,
                            help="server processes (default 1; each costs ~150 MB and seconds to start)")

    def run(self, args: argparse.Namespace) -> int:
        from wgtune.spec.errors import UserError

        store = backend_store_uri(args.backend_store_uri)
        artifacts = artifacts_destination(args.artifacts_destination)
        if args.host not in LOOPBACK and not args.allow_remote:
            raise UserError(f"--host {args.host} exposes the tracking server to the network; add --allow-remote "
                            "if that is what you want (and --basic-auth, or a private network)")
        check_backend(store)
        if args.basic_auth:
            check_basic_auth()
        check_port_free(args.host, args.port)
        if args.host not in LOOPBACK:
            auth = ("with basic auth" if args.basic_auth else
                    "with NO authentication: anyone who reaches it can read, change and delete runs")
            print(f"warning: the MLflow tracking server is reachable from the network on {args.host}:{args.port}, "
                  f"{auth}", file=sys.stderr)
        db = sqlite_path(store)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        if "://" not in artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
        command = server_command(store, artifacts, args.host, args.port, args.workers,
                                 allowed_hosts=args.allowed_hosts, basic_auth=args.basic_auth)
        print(server_banner(store, artifacts, args.host, args.port), flush=True)
        sys.stderr.flush()
        # MLflow's server-side job runner (GenAI evaluation) starts 8 more processes that wgtune never
        # uses, and some of them outlive a SIGTERM.
        os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        # Become the server: a supervisor's signals (Ctrl-C, SIGTERM from systemd or Docker) reach it directly.
        os.execv(command[0], command)
        return 0  # not reached


def backend_store_uri(given: str | None) -> str:
    """The store's URI with a relative SQLite path made absolute (the server may run elsewhere later)."""
    from wgtune.tracking.store import absolute_uri

    if not given:
        return f"sqlite:///{(Path(DEFAULT_DIR) / 'mlflow.db').resolve()}"
    return absolute_uri(given.strip())


def artifacts_destination(given: str | None) -> str:
    """An absolute folder, or a URI (s3://, gs://, ...) passed on as it is."""
    if not given:
        return str((Path(DEFAULT_DIR) / "artifacts").resolve())
    if "://" in given:
        return given
    return str(Path(given).expanduser().resolve())


def check_backend(uri: str) -> None:
    """A SQLite file we can create, or a PostgreSQL URI whose driver is installed; anything else is refused."""
    from wgtune.spec.errors import UserError
    from wgtune.tracking.store import check_tracking, redact

    scheme = urlsplit(uri).scheme.lower()
    if scheme not in _DRIVERS:
        raise UserError(f"--backend-store-uri {redact(uri)}: wgtune server runs on sqlite:///PATH or "
                        "postgresql://USER@HOST:PORT/DB; for another store run `mlflow server` yourself")
    if scheme == "sqlite":
        if sqlite_path(uri) is None:
            raise UserError(f"--backend-store-uri {uri}: an in-memory database would lose every run; give a file")
        check_tracking(uri)  # the folder exists or can be made, and is writable
        return
    module = _DRIVERS[scheme]
    if module and importlib.util.find_spec(module) is None:
        package = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]"}.get(module, module)
        raise UserError(f"--backend-store-uri {redact(uri)}: PostgreSQL needs the {module} driver: "
                        f"pip install {package}")
    if urlsplit(uri).password:
        print("warning: the database password is in --backend-store-uri, so in this machine's process list; "
              "set PGPASSWORD or use ~/.pgpass instead", file=sys.stderr)


def check_basic_auth() -> None:
    from wgtune.spec.errors import UserError

    if importlib.util.find_spec("flask_wtf") is None:
        raise UserError("--basic-auth: MLflow's basic-auth app needs Flask-WTF: pip install Flask-WTF")
    if not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        raise UserError("--basic-auth: set MLFLOW_FLASK_SERVER_SECRET_KEY (a random string, the same for every "
                        "server process), and MLFLOW_AUTH_ADMIN_PASSWORD for the first start")


def check_port_free(host: str, port: int) -> None:
    """Fail with one message, before MLflow starts, if something already listens there."""
    from wgtune.spec.errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use (another MLflow server?): choose --port") from None
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def server_command(store: str, artifacts: str, host: str, port: int, workers: int = 1, *,
                   allowed_hosts: str | None = None, basic_auth: bool = False) -> list[str]:
    """The `mlflow server` command line: the store, artifacts served through the server, the binding."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--serve-artifacts", "--artifacts-destination", artifacts,
               "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    if basic_auth:
        command += ["--app-name", "basic-auth"]
    return command


def server_banner(store: str, artifacts: str, host: str, port: int) -> str:
    from wgtune.tracking.store import redact

    where = url_host(host)
    where = f"[{where}]" if ":" in where else where
    reach = "this machine" if host in LOOPBACK else f"the network ({host})"
    return (f"MLflow tracking server on http://{where}:{port}, for {reach}  (Ctrl-C stops it)\n"
            f"  store: {redact(store)}\n  artifacts: {artifacts}\n"
            f"  drivers and users: export MLFLOW_TRACKING_URI=http://<this host>:{port}")

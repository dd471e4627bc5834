"""Where a study's MLflow store lives, how to print its address, and whether it can be used.

No MLflow import at module level: `wgtune --help` and URI handling stay instant.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from wgtune.spec.errors import UserError

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "artifacts"

# Bare words MLflow accepts as tracking URIs; anything else without a scheme is a path.
_NAMED_STORES = frozenset({"databricks", "databricks-uc", "uc"})
_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://)([^/@?#]*)@")
_SECRET_QUERY = re.compile(
    r"([?&](?:password|passwd|pwd|token|access_token|secret|api_key|apikey|key|sig|signature)=)[^&#]*",
    re.IGNORECASE,
)


class TrackingUnavailableError(UserError, ValueError):
    """The tracking store cannot be used (server down, folder not writable); the message says how to fix it."""


def resolve_tracking_uri(study_dir: Path, given: str | None = None) -> str:
    """The study's tracking URI: `given` (the CLI flag), else $MLFLOW_TRACKING_URI, else the study's SQLite file.

    Local paths are made absolute: Ray Tune runs trials in other working directories.
    """
    uri = (given or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{Path(study_dir).expanduser().resolve() / DB_NAME}"
    return absolute_uri(uri)


def absolute_uri(uri: str) -> str:
    """`uri` with a relative sqlite/file path (or a bare path) made absolute against the working directory."""
    scheme = urlsplit(uri).scheme.lower()
    if not scheme and uri not in _NAMED_STORES:
        return Path(uri).expanduser().resolve().as_uri()
    if scheme == "sqlite":
        head = "sqlite:///"
        if not uri.lower().startswith(head):
            return uri  # sqlite:// is an in-memory database
        path, question, query = uri[len(head):].partition("?")
        if path in ("", ":memory:") or path.startswith("/"):
            return uri
        return f"{head}{Path(path).expanduser().resolve()}{question}{query}"
    if scheme == "file":
        rest = uri[len("file:"):]
        if rest.startswith("//"):
            return uri  # file:///abs (or file://host/...): already absolute
        return Path(rest).expanduser().resolve().as_uri()
    return uri


def is_local_store(uri: str) -> bool:
    """Whether the store is a file on this machine (then the study keeps its artifacts next to it)."""
    scheme = urlsplit(uri).scheme.lower()
    return scheme in ("sqlite", "file") or (not scheme and uri not in _NAMED_STORES)


def artifact_root(study_dir: Path) -> str:
    """The absolute artifact folder of a study whose store is local: `<study_dir>/artifacts`."""
    return str(Path(study_dir).expanduser().resolve() / ARTIFACTS_DIR)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI; None for other stores and in-memory databases."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


UI_HOST, UI_PORT = "127.0.0.1", 5000
"""Where `wgtune ui` serves the MLflow UI of a local store unless told otherwise."""
RUNS_VIEW = "/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={view}"
"""The runs table of an experiment in MLflow 3's UI (hash routes `/experiments/:experimentId/runs`), on its
model-training views (`workflowType=machine_learning`; without it the UI opens on GenAI views), with a view
saved on the experiment applied (`viewStateShareKey`, `records.STUDY_VIEW_KEY`)."""


def ui_address(uri: str, host: str = UI_HOST, port: int = UI_PORT) -> str | None:
    """The MLflow UI that shows the store `uri`: `wgtune ui`'s for a local store, the server itself for an
    http(s) one (credentials removed); None for stores with a UI elsewhere (Databricks)."""
    scheme = urlsplit(uri).scheme.lower()
    if is_local_store(uri):
        return f"http://{host}:{port}"
    if scheme in ("http", "https"):
        parts = urlsplit(_USERINFO.sub(r"\1", uri))
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return None


def runs_view_url(address: str, experiment_id: str, view: str) -> str:
    """The address of the study's runs view on the UI at `address` (`RUNS_VIEW`)."""
    return address.rstrip("/") + RUNS_VIEW.format(experiment_id=experiment_id, view=view)


def redact(uri: str) -> str:
    """`uri` fit to print: user and password (`http://user:pass@host` -> `http://***@host`) and secret query values hidden."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", uri))


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingUnavailableError, in about `timeout_s` at most, if the store at `uri` cannot be used.

    Call it before anything starts: it briefly sets MLflow's HTTP retry variables process-wide.
    """
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            _check_writable(uri, path)
        return
    if scheme in ("http", "https"):
        # MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) turn a typo into minutes.
        overrides = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s)))}
        with _environ(overrides):
            error = _probe(uri, timeout_s)
        if error:
            raise TrackingUnavailableError(
                f"MLflow tracking server {redact(uri)} is not reachable: {_sentence(_scrub(error, uri))}\n"
                "Start one (e.g. `mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri "
                "sqlite:///mlflow.db`), or fix --tracking-uri / MLFLOW_TRACKING_URI (unset both to use "
                "the study's own SQLite file); for a server that asks for credentials set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN).")
        return
    if scheme in ("file", "") and uri not in _NAMED_STORES:
        _check_writable(uri, Path(urlsplit(absolute_uri(uri)).path) / "x")
    error = _probe(uri, timeout_s)
    if error:
        raise TrackingUnavailableError(
            f"MLflow tracking store {redact(uri)} cannot be used: {_sentence(_scrub(error, uri))}\n"
            "Fix --tracking-uri / MLFLOW_TRACKING_URI, or unset both to use the study's own SQLite file.")


def _check_writable(uri: str, file: Path) -> None:
    """SQLite needs to create the file and its journal next to it: test by writing in the folder."""
    folder = file.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = ("Choose a writable study folder or --tracking-uri / MLFLOW_TRACKING_URI, "
           "or fix the folder's permissions.")
    if not existing.is_dir():
        raise TrackingUnavailableError(
            f"cannot create the MLflow store {redact(uri)}: {existing} is not a folder. {fix}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise TrackingUnavailableError(
            f"cannot write the MLflow store {redact(uri)}: folder {existing} is not writable "
            f"({err.strerror or err}). {fix}") from err
    if file.exists() and not os.access(file, os.W_OK):
        raise TrackingUnavailableError(f"the MLflow store {redact(uri)} is read-only. {fix}")


def _probe(uri: str, timeout_s: float) -> str | None:
    """Ask the store for one experiment on a side thread; an error text, or None when it answered."""
    outcome: list[str | None] = []

    def ask() -> None:
        try:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            outcome.append(None)
        except Exception as err:  # any failure means "unusable"; its text goes in the message
            outcome.append(_short(err))

    # A daemon thread bounds the wait even where a driver (a database, a DNS lookup) ignores timeouts.
    thread = threading.Thread(target=ask, name="wgtune-tracking-check", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    if not outcome:
        return f"no answer within {timeout_s:g} s"
    return outcome[0]


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _short(error: BaseException) -> str:
    """What went wrong in a few words: MLflow's texts run to a page of urllib3 internals."""
    text = " ".join(str(error).split())
    for needles, meaning in _KNOWN_FAILURES:
        if any(needle in text for needle in needles):
            return meaning
    text = text or type(error).__name__
    if len(text) > 300:
        cut = text.rfind(". ", 0, 300)
        text = text[:cut + 1] if cut > 0 else text[:300] + "…"
    return text


_KNOWN_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("Connection refused", "NewConnectionError"), "connection refused (nothing listens at that address)"),
    (("Name or service not known", "nodename nor servname", "getaddrinfo failed"), "unknown host name"),
    (("timed out", "ConnectTimeout", "ReadTimeout"), "no answer in time"),
    (("error code 401", "error code 403"), "the server refused the credentials (HTTP 401/403)"),
    (("error code 404",), "something answered, but not an MLflow tracking server (HTTP 404): wrong port or path?"),
)


def _sentence(text: str) -> str:
    return text if text.endswith((".", "?", "!")) else text + "."


def _scrub(text: str, uri: str) -> str:
    """Error texts may quote the URI, credentials included."""
    match = _USERINFO.match(uri)
    if match and match.group(2):
        text = text.replace(match.group(2), "***")
    return redact(text)


"""Joining the Ray cluster a study runs on: a new local instance by default, else --address /
$RAY_ADDRESS, checked before anything of the study is created.

With driver.py and searcher.py, the only modules that import Ray.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import ray

from wgtune.spec.errors import UserError

RAY_CLIENT_PORT = 10001
"""The port of a `ray://host` address that names none (Ray Client's default)."""

# One GCS handshake, as ray.init starts it. Run in a child process: Ray's C++ client logs its
# retries to stderr and keeps retrying past its own timeout (12 s for 2 s asked, measured).
_GCS_HANDSHAKE = """
import sys
from ray._raylet import InnerGcsClient
from ray.exceptions import AuthenticationError, RayError
try:
    InnerGcsClient.standalone(sys.argv[1], None, int(sys.argv[2]))
except RayError as err:
    print(" ".join(str(err).split()))
    sys.exit(4 if isinstance(err, AuthenticationError) else 3)
"""
_NOT_A_HEAD, _REFUSED = 3, 4  # the handshake's exit codes


def check_ray(address: str | None, timeout_s: float = 3.0) -> None:
    """Raise UserError, within seconds, if the Ray cluster a launch would join does not answer."""
    if ray.is_initialized():
        return  # _init_ray joins nothing then: the running instance is used as it is
    source = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "local":
        return  # a new local instance is started: nothing to reach
    local = f"{'unset RAY_ADDRESS' if source == '$RAY_ADDRESS' else 'drop --address'} to run on a local Ray instance"
    fix = f"Start the cluster's head there (`ray start --head --port=6379`) and give its address, or {local}."
    try:
        endpoint = _ray_endpoint(address)
    except (ValueError, ConnectionError) as err:
        raise UserError(f"Ray address {address!r} ({source}) cannot be used: {str(err).rstrip('.')}.\n"
                        f"Give the address of a running head (`ray start --head` prints it), or {local}.") from None
    if endpoint is None:
        return  # a client plug-in scheme (not ray://): only Ray knows how to reach it
    host, port = endpoint
    # ray.init retries an unreachable GCS for minutes (over 2 min for a closed port, measured);
    # a TCP connect answers in at most `timeout_s`, and a handshake tells a GCS from anything else.
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        reason = "no answer in time" if isinstance(err, TimeoutError) else (err.strerror or str(err)).lower()
        raise UserError(f"Ray cluster {address} ({source}) is not reachable: nothing answers at {host}:{port} "
                        f"({reason}).\n{fix}") from None
    code, problem = (0, "") if address.startswith("ray://") else _gcs_handshake(f"{host}:{port}", timeout_s)
    if code == _REFUSED:
        raise UserError(f"Ray cluster {address} ({source}) refused this driver: {problem}")
    if code == _NOT_A_HEAD:
        raise UserError(f"Ray cluster {address} ({source}) is not reachable: something answers at {host}:{port}, "
                        f"but not a Ray head ({problem}).\n{fix}")


def _ray_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port `ray.init(address=...)` would connect to; None for client plug-in schemes."""
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme != "ray":
            return None
        if not parts.hostname:
            raise ValueError("expected ray://HOST[:PORT]")
        if importlib.util.find_spec("grpc") is None:  # what ray.init checks, after the study folder exists
            raise ValueError("ray:// goes through Ray Client, which needs `pip install 'ray[client]'`; "
                             "or give the head's GCS address, HOST:6379")
        return parts.hostname, parts.port or RAY_CLIENT_PORT
    # Ray's own reading of the address: "auto" finds the last `ray start`, and localhost becomes
    # the node's IP (a GCS need not listen on the loopback), so the probe goes where ray.init would.
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a private helper that may move: read HOST:PORT as given
        canonical: str | None = address
    else:
        try:
            canonical = canonicalize_bootstrap_address(address)
        except ValueError:
            canonical = ""
    if canonical is None:
        return None
    host, _, port = canonical.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("expected HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST[:PORT], auto or local")
    return host.strip("[]"), int(port)


def _gcs_handshake(address: str, timeout_s: float) -> tuple[int, str]:
    """(0, "") when the GCS at `address` answered (or Ray's internals moved: ray.init will tell), else
    (_NOT_A_HEAD or _REFUSED, why)."""
    command = [sys.executable, "-c", _GCS_HANDSHAKE, address, str(int(timeout_s * 1000))]
    try:
        # Importing ray._raylet in the child takes about a second on top of the handshake.
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 2)
    except subprocess.TimeoutExpired:
        return _NOT_A_HEAD, f"no answer within {timeout_s:g} s"
    if done.returncode in (_NOT_A_HEAD, _REFUSED):
        return done.returncode, done.stdout.strip() or "handshake failed"
    return 0, ""


def init_ray(address: str | None) -> None:
    """Join `address` (or $RAY_ADDRESS), else start a local instance with the dashboard off."""
    # Our progress view replaces Tune's: the legacy reporter honours verbose=0 (the new one
    # still prints boxes), and per-epoch checkpoints of short trials make Tune warn on every one.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow is the study's record; Tune's own CSV/JSON/TensorBoard files per trial cost the
    # driver ~19 ms of CPU per trial (measured, bench/orchestration_overhead.py) and nobody
    # reads them. Restore uses Tune's experiment state and checkpoints, which stay.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local" starts a new instance: a bare ray.init() would silently join whatever cluster
        # /tmp/ray/ray_current_cluster names (a leftover `ray start`, another user's).
        ray.init(address="local", include_dashboard=False, **kwargs)

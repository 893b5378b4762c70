"""`blocksweep ui`: the MLflow UI (a real `mlflow server`) on the project's store, and
optionally optuna-dashboard beside it on the study storage, until Ctrl-C or SIGTERM.

Why a wrapper rather than `mlflow server` by hand:

* the defaults match the embedded store (`mlruns/mlflow.db`, artifacts under
  `mlruns/artifacts/`, where search/tracking/ puts them; `mlruns/optuna.db`);
* loopback only unless told otherwise: neither server authenticates anyone;
* ONE uvicorn worker: MLflow's default four take about 3 GB here for one reader; and
  MLflow's background job runner (huey consumers for LLM-judge jobs, six more Python
  processes, which outlive a SIGTERM to `mlflow server`) is switched off;
* Ctrl-C stops every process it started (each server runs in its own process group).

This module starts the servers as commands (`python -m mlflow server`,
`optuna-dashboard`): it imports neither library.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from search.services import procs
from search.tracking import store
from search.tracking import urls
from search.errors import UsageError

START_SECONDS = 180.0  # how long a server may take to answer (MLflow migrating a new database: ~20 s here)
# MLflow 3.17's UI opens an experiment in the workflow of its "GenAI | Model training" switch,
# GenAI by default (a traces overview, empty for our runs), whatever the experiment's
# `mlflow.experimentKind` tag says; this query parameter of a link chooses Model training.
MODEL_TRAINING = "workflowType=machine_learning"
LINKS_SHOWN = 10  # sweeps listed with their link when the UI starts (most recently updated first)
STOP_SECONDS = 10.0  # grace before what is left of a server is killed


@dataclass(frozen=True)
class Server:
    """A server to start: its command, where it answers, and the URL to give the user."""

    name: str
    argv: list[str]
    url: str  # what the user opens
    probe: str  # what we poll until it answers
    env: dict


def default_backend_store() -> str:
    """$MLFLOW_TRACKING_URI when it names a database, else sqlite:///<abs>/mlruns/mlflow.db."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and urls.kind(env) not in ("http", "https", "databricks"):
        return env
    return store.mlflow_url()


def default_storage() -> str:
    return store.optuna_url()


def default_artifacts() -> Path:
    return store.artifacts_dir()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe_host(host: str) -> str:
    """Where to reach a server bound to `host` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _check_port_free(host: str, port: int, flag: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UsageError(f"{flag} {port}: cannot listen on {host}:{port} ({err.strerror}); "
                             f"is another server running there? pick another {flag}") from None


def _check_database(uri: str, flag: str) -> None:
    urls.check_driver(uri, flag)
    scheme = urls.kind(uri)
    if scheme in ("http", "https", "databricks"):
        raise UsageError(f"{flag} {urls.redact(uri)}: that is a server already; open it in a browser "
                         f"(blocksweep ui serves a database)")
    # A database that does not answer (or does not exist) is refused in seconds; the MLflow
    # server would retry for minutes before exiting (measured: over 90 s, with no line).
    urls.check_reachable(uri, flag, "MLflow store" if flag == "--backend-store-uri" else "study storage")
    if scheme == "sqlite":
        path = urls.sqlite_path(uri)
        if path is None:
            raise UsageError(f"{flag} {uri}: an in-memory database cannot be shared with a server")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"{flag} {uri}: cannot create {path.parent} ({err.strerror})") from None


def mlflow_server(backend_store_uri: str, artifacts_destination: Path, host: str, port: int,
                  workers: int) -> Server:
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            # Runs logged through the server send their artifacts to it (no shared disk needed).
            "--serve-artifacts", "--artifacts-destination", str(artifacts_destination),
            "--host", host, "--port", str(port),
            "--workers", str(workers),
            # One line per HTTP request (the UI polls) would drown the useful output.
            "--uvicorn-opts", "--no-access-log"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get(
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    base = f"http://{_probe_host(host)}:{port}"
    return Server("mlflow", argv, url=base, probe=f"{base}/health", env=env)


def optuna_dashboard(storage: str, host: str, port: int) -> Server:
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        raise UsageError("--dashboard needs optuna-dashboard: pip install 'blocksweep[dashboard]'")
    base = f"http://{_probe_host(host)}:{port}"
    return Server("dashboard", [exe, storage, "--host", host, "--port", str(port)], url=base,
                  probe=f"{base}/api/studies", env=dict(os.environ))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500
    except (urllib.error.URLError, OSError):
        return False


def training_links(base: str) -> list[str]:
    """'  <experiment>: <link>' lines for the store's training experiments (those tagged
    `mlflow.experimentKind = custom_model_development`, as every experiment Blocksweep
    makes is), most recently updated first: each link opens the experiment on its runs
    under Model training. Read from the running server's REST API; [] if it cannot be."""
    import json
    from urllib.parse import urlencode

    query = urlencode({"max_results": 1000, "order_by": "last_update_time DESC",
                       "filter": "tags.`mlflow.experimentKind` = 'custom_model_development'"})
    try:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/search?{query}", timeout=10) as response:
            experiments = json.load(response).get("experiments", [])
    except (OSError, ValueError):  # an old server, a slow one: the UI still works
        return []
    lines = [f"  {e['name']}: {base}/#/experiments/{e['experiment_id']}?{MODEL_TRAINING}"
             for e in experiments[:LINKS_SHOWN]]
    if len(experiments) > LINKS_SHOWN:
        lines.append(f"  ... and {len(experiments) - LINKS_SHOWN} more (the switch at the top left: Model training)")
    return lines


def wait_until_up(server: Server, child: procs.Child, seconds: float = START_SECONDS) -> None:
    """Poll the server until it answers; fail if it exits or takes longer than `seconds`."""
    deadline = time.monotonic() + seconds
    while not _answers(server.probe):
        if child.poll() is not None:
            raise ServiceFailed(f"the {server.name} server exited with code {child.poll()} before answering",
                                child.last_lines)
        if time.monotonic() > deadline:
            raise ServiceFailed(f"the {server.name} server did not answer {server.probe} within {seconds:.0f} s",
                                child.last_lines)
        time.sleep(0.25)


class ServiceFailed(Exception):
    """A server that would not start or stopped by itself (exit code 1)."""

    def __init__(self, message: str, last_lines: list[str]):
        super().__init__(message)
        self.last_lines = last_lines


@contextmanager
def _stop_signals_as_interrupt():
    """SIGTERM (systemd, docker stop, kill) stops the servers like Ctrl-C does; and so does
    SIGINT even where it was inherited ignored (a shell's background job)."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def ui(*, host: str = "127.0.0.1", port: int = 5000, backend_store_uri: Optional[str] = None,
       artifacts_destination: Optional[str] = None, workers: int = 1, dashboard: bool = False,
       dashboard_port: int = 8080, storage: Optional[str] = None,
       say: Callable[[str], None] = print, warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
       start_seconds: float = START_SECONDS) -> int:
    """Serve the MLflow UI (and optuna-dashboard) until interrupted. Returns the exit code:
    0 after Ctrl-C/SIGTERM; raises ServiceFailed if a server fails to start or stops."""
    uri = backend_store_uri or default_backend_store()
    artifacts = Path(artifacts_destination).resolve() if artifacts_destination else default_artifacts()
    _check_database(uri, "--backend-store-uri")
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    servers = [mlflow_server(uri, artifacts, host, port, workers)]
    ports = [(port, "--port")] + ([(dashboard_port, "--dashboard-port")] if dashboard else [])
    if dashboard and dashboard_port == port:
        raise UsageError(f"--dashboard-port {dashboard_port}: the MLflow UI already uses port {port}")
    for number, flag in ports:  # checked before anything is created
        _check_port_free(host, number, flag)
    if dashboard:
        study_storage = storage or default_storage()
        _check_database(study_storage, "--storage")
        from search.engines.optuna_storage import prepare

        prepare(study_storage)
        servers.append(optuna_dashboard(study_storage, host, dashboard_port))
    if not is_loopback(host):
        warn(f"blocksweep ui: warning: --host {host} serves the UI, unauthenticated, to every machine "
             f"that can reach this one")
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--artifacts-destination {artifacts}: cannot create it ({err.strerror})") from None

    children: list[procs.Child] = []
    with _stop_signals_as_interrupt():
        try:
            for server in servers:
                children.append(procs.Child(server.name, server.argv, env=server.env, prefix=f"[{server.name}] "))
            for server, child in zip(servers, children):
                wait_until_up(server, child, start_seconds)
            say(f"MLflow UI: {servers[0].url} (store {urls.redact(uri)}; artifacts {artifacts})")
            for line in training_links(servers[0].url):
                say(line)
            if dashboard:
                say(f"Optuna dashboard: {servers[1].url} (storage {urls.redact(servers[1].argv[1])})")
            say("Ctrl-C stops.")
            gone = procs.wait_any(children)
            raise ServiceFailed(f"the {gone.name} server stopped by itself (exit code {gone.poll()})",
                                gone.last_lines)
        except KeyboardInterrupt:
            pass
        finally:
            # A second Ctrl-C or SIGTERM must not cut the clean-up short (each stop ends
            # in SIGKILL).
            previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                for child in children:
                    child.stop(STOP_SECONDS)
            finally:
                for s, old in previous.items():
                    signal.signal(s, old)
    say("stopped.")
    return 0

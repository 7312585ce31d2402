"""`orchestrator tracking serve`: an MLflow tracking server with a database backend and
proxied artifacts (clients upload and download artifacts through the server, so trials need
no access to its disk or bucket). No MLflow import: it runs MLflow's own command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orchestrator import config as config_mod
from orchestrator.config import ConfigError

BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"  # `mlflow server --backend-store-uri`'s envvar
JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"  # set it to true to have them back
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def command(
    backend: str | None, artifacts: str, host: str, port: int, workers: int, extra: list[str]
) -> tuple[list[str], dict[str, str], str]:
    """(argv, environment, the backend as shown) of the `mlflow server` to run. The backend
    goes in the environment (the option's variable), never in argv: a command line is
    readable by every user of the machine (ps, /proc/PID/cmdline)."""
    backend = backend or os.environ.get(BACKEND_ENV) or "sqlite:///mlflow.db"
    if backend.startswith("sqlite:///") and not backend.startswith("sqlite:////"):
        backend = "sqlite:///" + str(Path(backend[len("sqlite:///") :]).absolute())
    shown = config_mod.redact_uri(backend)  # a database URI carries its password
    if not (backend.startswith(("sqlite:", "postgresql", "mysql", "mssql"))):
        raise ConfigError(
            "--backend",
            f"{shown!r} is not a database URI",
            "use sqlite:///mlflow.db or postgresql://USER:PASS@HOST:5432/mlflow",
        )
    artifacts = artifacts if "://" in artifacts else str(Path(artifacts).absolute())
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *extra,
    ]
    # MLflow's job runner (huey consumers for GenAI evaluation jobs and trace roll-ups) is
    # four more processes on the tracking host that the orchestrator never gives work to
    jobs = os.environ.get(JOBS_ENV, "false")
    return argv, {**os.environ, BACKEND_ENV: backend, JOBS_ENV: jobs}, shown


def run(
    backend: str | None, artifacts: str, host: str, port: int, workers: int, extra: list[str]
) -> None:
    """Become the MLflow server (``execve``: stopping this process stops the server)."""
    argv, env, shown = command(backend, artifacts, host, port, workers, extra)
    if host not in LOOPBACK:
        print(
            f"orchestrator: MLflow will listen on {host}: anyone who reaches port "
            f"{port} can read and write runs; see docs/security.md (basic auth)",
            file=sys.stderr,
        )
    print(
        f"MLflow tracking server on http://{host}:{port} (backend {shown}, "
        f"artifacts {argv[3]}); point tracking.uri or MLFLOW_TRACKING_URI at it",
        flush=True,
    )
    os.execve(argv[0], argv, env)

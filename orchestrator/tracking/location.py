"""Where the tracking store is: the URI a config names (or the environment, or a SQLite file
in the working directory), made absolute, with its credentials moved to MLflow's variables.
No MLflow import: the server, the CLI and the launcher resolve a URI without it."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator import config as config_mod
from orchestrator.config import Config


def resolve_uri(cfg: Config | None) -> str:
    """The URI to give MLflow: ``configured_uri`` with its credentials moved to MLflow's
    variables (``bare_uri``). ``None``: no config (the model server), the environment's."""
    return bare_uri(configured_uri(cfg))


def configured_uri(cfg: Config | None) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then ``sqlite:///<cwd>/mlflow.db``, made absolute:
    MLflow's own default is relative to the current directory, which Ray trials change. It
    may hold ``user:password@``: only for deciding what to send redacted, never for MLflow."""
    configured = cfg.tracking.uri if cfg is not None else None
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).absolute())
    elif "://" not in uri:  # a bare folder: MLflow's (deprecated) file store
        uri = str(Path(uri).absolute())
    return uri


def bare_uri(uri: str) -> str:
    """``uri`` without ``user:password@``, which go to ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` (MLflow's client reads them for every request). Given to
    MLflow with its credentials, the URI would be copied into ``$MLFLOW_TRACKING_URI`` (and
    so into every process Ray starts from here) and quoted in MLflow's error messages. A
    redacted part (``***``) is not exported: the variables already set stand."""
    bare, user, password = config_mod.split_credentials(uri)
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is not None and value != config_mod.REDACTED:
            os.environ[name] = value
    return bare

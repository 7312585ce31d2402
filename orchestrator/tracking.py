"""MLflow edge: the one writer. Only the sweep driver calls these (never a DDP worker), so
there is exactly one run per trial and no "database is locked" from many SQLite writers."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator import config as config_mod
from orchestrator.config import Config

ROLE = "orchestrator.role"
METRIC_KEYS = ("train_loss", "train_accuracy", "train_f1", "val_loss", "val_accuracy", "val_f1",
               "gap", "objective")


def resolve_uri(cfg: Config) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then ``sqlite:///<cwd>/mlflow.db``, made absolute:
    MLflow's own default is relative to the current directory, which Ray trials change."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).absolute())
    elif "://" not in uri:  # a bare folder: MLflow's (deprecated) file store
        uri = str(Path(uri).absolute())
    return uri


def connect(cfg: Config) -> tuple[MlflowClient, str]:
    uri = resolve_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
    mlflow.set_experiment(experiment_id=exp_id)
    return client, exp_id


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def common_tags(cfg: Config, fingerprint: str) -> dict[str, str]:
    import ray

    return {
        "orchestrator.git_commit": _git_commit(),
        "orchestrator.config_hash": config_mod.config_hash(cfg),
        "orchestrator.dataset_fingerprint": fingerprint,
        "orchestrator.versions": f"ray={ray.__version__} torch={torch.__version__} "
                                 f"mlflow={mlflow.__version__} python={platform.python_version()}",
        "orchestrator.host": socket.gethostname(),
    }


def log_params(client: MlflowClient, run_id: str, cfg: Config) -> None:
    flat = {k: ("" if v is None else str(v)[:6000]) for k, v in config_mod.flatten(cfg).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i:i + 100]])
    client.log_text(run_id, config_mod.to_yaml(cfg), "config.yaml")


def start_sweep_run(client: MlflowClient, exp_id: str, cfg: Config, fingerprint: str,
                    sizes: dict[str, int]) -> str:
    tags = {ROLE: "sweep", **common_tags(cfg, fingerprint),
            **{f"orchestrator.rows.{k}": str(v) for k, v in sizes.items()}}
    run = client.create_run(exp_id, run_name=f"sweep-{cfg.experiment}", tags=tags)
    log_params(client, run.info.run_id, cfg)
    return run.info.run_id


def start_trial_run(client: MlflowClient, exp_id: str, parent_id: str | None, trial_id: str,
                    cfg: Config, fingerprint: str, role: str = "trial") -> str:
    """A trial's run under the sweep's (``role`` trial, or confirm for a seed rerun); without a
    parent, the run of `orchestrator train`."""
    role = role if parent_id else "train"
    tags = {ROLE: role, "orchestrator.trial_id": trial_id, **common_tags(cfg, fingerprint)}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    name = f"{role}-{trial_id}" if parent_id else f"train-{cfg.experiment}"
    run = client.create_run(exp_id, run_name=name, tags=tags)
    log_params(client, run.info.run_id, cfg)
    return run.info.run_id


def find_trial_run(client: MlflowClient, exp_id: str, parent_id: str, trial_id: str,
                   ) -> tuple[str, int] | None:
    """A resumed sweep's existing run for a trial, and the last epoch it logged."""
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and "
                                f"tags.`orchestrator.trial_id` = '{trial_id}'")
    if not runs:
        return None
    run_id = runs[0].info.run_id
    return run_id, last_step(client, run_id)


def epochs_since(client: MlflowClient, run_id: str, after: int) -> list[dict[str, float]]:
    """The per-epoch metrics a run holds beyond epoch ``after``, oldest first."""
    rows: dict[int, dict[str, float]] = {}
    for key in METRIC_KEYS:
        for m in client.get_metric_history(run_id, key):
            if m.step > after:
                rows.setdefault(m.step, {"epoch": float(m.step)})[key] = m.value
    return [rows[k] for k in sorted(rows)]


def last_step(client: MlflowClient, run_id: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, "val_loss")), default=0)


def child_runs(client: MlflowClient, exp_id: str, parent_id: str) -> list[Any]:
    return list(client.search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000))


def log_epoch(client: MlflowClient, run_id: str, values: dict[str, Any]) -> None:
    step, ms = int(values["epoch"]), int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(values[k]), ms, step)
                                      for k in METRIC_KEYS if k in values])


def end_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status=status)


def register_champion(cfg: Config, parent_id: str, net: torch.nn.Module, x_example: np.ndarray,
                      classes: list, test_metrics: dict[str, float], trial_run_id: str) -> str:
    """Log the served form of the model on the sweep run, register it, move ``champion``.

    Runs only after the sweep succeeded and the test split was scored, so a failed sweep
    never moves the alias. Returns the new model version.
    """
    from mlflow.models import infer_signature

    net = net.cpu().eval()
    with torch.no_grad():
        example_out = net(torch.from_numpy(x_example)).numpy()
    signature = infer_signature(x_example, example_out)
    client = MlflowClient()
    with mlflow.start_run(run_id=parent_id):
        info = mlflow.pytorch.log_model(
            net, name="model", signature=signature, input_example=x_example[:2],
            # torch.export's pt2 format: the graph and weights, no pickled Python classes,
            # so the model loads where this package is not installed.
            serialization_format="pt2",
            metadata={"classes": classes, "num_features": int(x_example.shape[1])},
            # Stated, not inferred: inference reloads the model in a subprocess (~7 s).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"mlflow=={mlflow.__version__}", "numpy"],
        )
        mlflow.log_metrics(test_metrics)
    version = mlflow.register_model(info.model_uri, cfg.tracking.register_as,
                                    tags={"trial_run_id": trial_run_id,
                                          **{k: f"{v:.4f}" for k, v in test_metrics.items()}})
    client.set_registered_model_alias(cfg.tracking.register_as, "champion", version.version)
    client.set_tag(parent_id, "orchestrator.champion_version", version.version)
    client.set_tag(trial_run_id, "orchestrator.champion", "true")
    return str(version.version)

"""MLflow edge: the one writer. Only the sweep driver calls these (never a DDP worker), so
there is exactly one run per trial and no "database is locked" from many SQLite writers."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.tracking import MlflowClient

from orchestrator import config as config_mod
from orchestrator.config import Config, ConfigError
from orchestrator.tracking import outbox, schema
from orchestrator.tracking.location import resolve_uri


def connect(cfg: Config, out: Callable[[str], None] = print) -> tuple[outbox.Outbox, str]:
    """The driver's MLflow client (writes through an outbox: a tracking server that goes
    away mid-sweep does not stop training) and the experiment's id. The server must answer
    now: a wrong URI fails here, before any training."""

    uri = resolve_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
        if exp is None or schema.EXPERIMENT_KIND not in exp.tags:  # a user's own stays
            # MLflow's UI opens an experiment by its kind: model training, not GenAI traces
            client.set_experiment_tag(exp_id, schema.EXPERIMENT_KIND, schema.MODEL_TRAINING)
    except Exception as e:
        if not outbox.unreachable(e):
            raise
        raise ConfigError(
            "tracking.uri",
            config_mod.redact_uri(f"MLflow at {uri} does not answer ({outbox._short(e)})"),
            "start it (orchestrator tracking serve), or point tracking.uri / "
            "$MLFLOW_TRACKING_URI at a running one",
        ) from None
    mlflow.set_experiment(experiment_id=exp_id)
    # MLflow's errors quote the request's URL, credentials and all: shown redacted
    return outbox.Outbox(client, lambda m: out(config_mod.redact_uri(m)), background=True), exp_id


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def common_tags(cfg: Config, fingerprint: str) -> dict[str, str]:
    """The tags every run carries: code commit, config hash, data fingerprint, versions, host."""
    import ray

    return {
        schema.GIT_COMMIT: _git_commit(),
        schema.CONFIG_HASH: config_mod.config_hash(cfg),
        schema.DATASET_FINGERPRINT: fingerprint,
        schema.VERSIONS: f"ray={ray.__version__} torch={torch.__version__} "
        f"mlflow={mlflow.__version__} python={platform.python_version()}",
        schema.HOST: socket.gethostname(),
    }


def log_params(client: outbox.Outbox, run_id: str, cfg: Config) -> None:
    """The config as the run's params and as ``config.yaml``, secrets redacted."""
    cfg = config_mod.redact(cfg)  # flatten and to_yaml redact too; this says so here
    flat = {k: ("" if v is None else str(v)[:6000]) for k, v in config_mod.flatten(cfg).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(
            run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i : i + 100]]
        )
    client.log_text(run_id, config_mod.to_yaml(cfg), "config.yaml")


def dataset_inputs(
    cfg: Config,
    fingerprint: str,
    sizes: dict[str, int] | None,
) -> list[DatasetInput]:
    """Dataset lineage (``mlflow.log_input``'s entities): the Parquet source, its content
    digest, and one input per split with its row count, tagged with the split as context."""
    path = cfg.data.path
    kind = path.split("://", 1)[0] if "://" in path else "local"
    stem = Path(path.rstrip("/")).stem or "data"
    out = []
    for split, rows in (sizes or {}).items():
        context = {"train": "training", "val": "validation", "test": "test"}.get(split, split)
        ds = Dataset(
            name=f"{stem}.{split}",
            digest=fingerprint[:36],
            source_type=kind,
            source=json.dumps({"uri": path}),
            schema=json.dumps({"label": cfg.data.label, "features": "every other column"}),
            profile=json.dumps(
                {
                    "num_rows": rows,
                    "split": split,
                    "test_fraction": cfg.data.test_fraction,
                    "val_fraction": cfg.data.val_fraction,
                    "split_seed": cfg.data.seed,
                }
            ),
        )
        out.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)]))
    return out


def start_sweep_run(
    client: outbox.Outbox,
    exp_id: str,
    cfg: Config,
    fingerprint: str,
    sizes: dict[str, int],
    role: str = "sweep",
    parent_id: str | None = None,
    name: str | None = None,
) -> str:
    """The sweep's parent run (or the autopilot's, ``role`` autopilot, or one of its rounds,
    under ``parent_id``): tagged, its config as params, its data splits as inputs; its id."""
    tags = {
        schema.ROLE: role,
        **common_tags(cfg, fingerprint),
        **{f"{schema.ROWS}{k}": str(v) for k, v in sizes.items()},
    }
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run = client.create_run(exp_id, run_name=name or f"{role}-{cfg.experiment}", tags=tags)
    log_params(client, run.info.run_id, cfg)
    client.log_inputs(run.info.run_id, datasets=dataset_inputs(cfg, fingerprint, sizes))
    return run.info.run_id


def start_trial_run(
    client: outbox.Outbox,
    exp_id: str,
    parent_id: str | None,
    trial_id: str,
    cfg: Config,
    fingerprint: str,
    role: str = "trial",
    sizes: dict[str, int] | None = None,
) -> str:
    """A trial's run under the sweep's (``role`` trial, or confirm for a seed rerun); without a
    parent, the run of `orchestrator train`."""
    role = role if parent_id else "train"
    tags = {schema.ROLE: role, schema.TRIAL_ID: trial_id, **common_tags(cfg, fingerprint)}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    name = f"{role}-{trial_id}" if parent_id else f"train-{cfg.experiment}"
    run = client.create_run(exp_id, run_name=name, tags=tags)
    log_params(client, run.info.run_id, cfg)
    if sizes:
        client.log_inputs(run.info.run_id, datasets=dataset_inputs(cfg, fingerprint, sizes))
    return run.info.run_id


def system_monitor(cfg: Config, run_id: str) -> Any:
    """MLflow's system-metrics monitor on the run, started; ``None`` when not asked for.
    Samples the machine this driver runs on (the whole machine: trials on it included)."""
    if not cfg.tracking.system_metrics:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=cfg.tracking.system_metrics_interval,
        resume_logging=True,
        tracking_uri=resolve_uri(cfg),
    )
    monitor.start()
    return monitor


def log_png(client: outbox.Outbox, run_id: str, png: bytes, name: str) -> None:
    """A picture as a run artifact (MLflow's UI shows PNGs inline)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(png)
        client.log_artifact(run_id, str(path), artifact_path="plots")


Reader = outbox.Outbox | MlflowClient  # the reads work on both: a sweep's outbox, review's client


def find_trial_run(
    client: Reader,
    exp_id: str,
    parent_id: str,
    trial_id: str,
) -> tuple[str, int] | None:
    """A resumed sweep's existing run for a trial, and the last epoch it logged."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and "
        f"tags.`orchestrator.trial_id` = '{trial_id}'",
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    return run_id, last_step(client, run_id)


def epochs_since(client: Reader, run_id: str, after: int) -> list[dict[str, float]]:
    """The per-epoch metrics a run holds beyond epoch ``after``, oldest first."""
    rows: dict[int, dict[str, float]] = {}
    for key in schema.METRIC_KEYS:
        for m in client.get_metric_history(run_id, key):
            if m.step > after:
                rows.setdefault(m.step, {"epoch": float(m.step)})[key] = m.value
    return [rows[k] for k in sorted(rows)]


def last_step(client: Reader, run_id: str) -> int:
    """The last epoch a run logged (its latest ``val_loss`` step; 0 when none)."""
    return max((m.step for m in client.get_metric_history(run_id, "val_loss")), default=0)


def child_runs(client: Reader, exp_id: str, parent_id: str) -> list[Any]:
    """The runs under ``parent_id``: a sweep's trials and their seed reruns."""
    return list(
        client.search_runs(
            [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000
        )
    )


def log_epoch(client: outbox.Outbox, run_id: str, values: dict[str, Any]) -> None:
    """One epoch's metrics, stepped by epoch, in one write."""
    step, ms = int(values["epoch"]), int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(values[k]), ms, step) for k in schema.METRIC_KEYS if k in values],
    )


def end_run(client: outbox.Outbox, run_id: str, status: str, tags: dict[str, str]) -> None:
    """Close a run: its final tags, then its status."""
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status=status)

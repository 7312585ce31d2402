"""MLflow edge: the one writer. Only the sweep driver calls these (never a DDP worker), so
there is exactly one run per trial and no "database is locked" from many SQLite writers."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.tracking import MlflowClient

from orchestrator import config as config_mod
from orchestrator.config import Config, ConfigError
from orchestrator.core import modelfile

ROLE = "orchestrator.role"
METRIC_KEYS = (
    "train_loss",
    "train_accuracy",
    "train_f1",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "gap",
    "objective",
)


def resolve_uri(cfg: Config) -> str:
    """The URI to give MLflow: ``configured_uri`` with its credentials moved to MLflow's
    variables (``bare_uri``)."""
    return bare_uri(configured_uri(cfg))


def configured_uri(cfg: Config) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then ``sqlite:///<cwd>/mlflow.db``, made absolute:
    MLflow's own default is relative to the current directory, which Ray trials change. It
    may hold ``user:password@``: only for deciding what to send redacted, never for MLflow."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
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


def connect(cfg: Config, out: Callable[[str], None] = print) -> tuple[Any, str]:
    """The driver's MLflow client (writes through an outbox: a tracking server that goes
    away mid-sweep does not stop training) and the experiment's id. The server must answer
    now: a wrong URI fails here, before any training."""
    from orchestrator import outbox

    uri = resolve_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
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
    client: MlflowClient, exp_id: str, cfg: Config, fingerprint: str, sizes: dict[str, int]
) -> str:
    tags = {
        ROLE: "sweep",
        **common_tags(cfg, fingerprint),
        **{f"orchestrator.rows.{k}": str(v) for k, v in sizes.items()},
    }
    run = client.create_run(exp_id, run_name=f"sweep-{cfg.experiment}", tags=tags)
    log_params(client, run.info.run_id, cfg)
    client.log_inputs(run.info.run_id, datasets=dataset_inputs(cfg, fingerprint, sizes))
    return run.info.run_id


def start_trial_run(
    client: MlflowClient,
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
    tags = {ROLE: role, "orchestrator.trial_id": trial_id, **common_tags(cfg, fingerprint)}
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


def log_png(client: MlflowClient, run_id: str, png: bytes, name: str) -> None:
    """A picture as a run artifact (MLflow's UI shows PNGs inline)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(png)
        client.log_artifact(run_id, str(path), artifact_path="plots")


def find_trial_run(
    client: MlflowClient,
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
    return list(
        client.search_runs(
            [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000
        )
    )


def log_epoch(client: MlflowClient, run_id: str, values: dict[str, Any]) -> None:
    step, ms = int(values["epoch"]), int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(k, float(values[k]), ms, step) for k in METRIC_KEYS if k in values]
    )


def end_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status=status)


def register_champion(
    cfg: Config,
    parent_id: str,
    net: torch.nn.Module,
    x_example: np.ndarray,
    classes: list,
    test_metrics: dict[str, float],
    trial_run_id: str,
) -> str:
    """Log the served form of the model on the sweep run, register it, move ``champion``
    (the version it replaces keeps the alias ``previous``).

    Runs only after the sweep succeeded and the test split was scored, so a failed sweep
    never moves the alias. Returns the new model version.

    ``net`` is the trained network (logits out). Two forms are logged in one MLflow model:
    torch.export's pt2 program (``mlflow.pyfunc.load_model`` serves it; probabilities out)
    and, under ``extra_files/``, the weights as a plain state dict of tensors plus the
    model's config as JSON, which ``load_weights`` rebuilds with ``torch.load(weights_only=
    True)``: serving never unpickles code.
    """
    client = MlflowClient()
    name = cfg.tracking.register_as
    model_uri = log_champion(cfg, parent_id, net, x_example, classes, test_metrics)
    old = champion_version(client, name)
    version = register_version(model_uri, name, trial_run_id, test_metrics)
    promote(client, name, version, old, parent_id, trial_run_id)
    return version


def log_champion(
    cfg: Config,
    parent_id: str,
    net: torch.nn.Module,
    x_example: np.ndarray,
    classes: list,
    test_metrics: dict[str, float],
    at_ms: int | None = None,
) -> str:
    """The served form of ``net`` logged on the sweep run, with the test scores (at
    ``at_ms``: the same time on a second try, so MLflow keeps one point); its model URI."""
    from mlflow.models import infer_signature

    from orchestrator.core import model

    net = net.cpu().eval()
    served = model.WithProbabilities(net).eval()
    with torch.no_grad():
        example_out = served(torch.from_numpy(x_example)).numpy()
    signature = infer_signature(x_example, example_out)
    meta = {"classes": classes, "num_features": int(x_example.shape[1])}
    with tempfile.TemporaryDirectory() as d:
        weights, spec = modelfile.write_weights(d, cfg, net, classes, int(x_example.shape[1]))
        # the run's own experiment: MLflow refuses to resume a run of another experiment
        # than the process's active one (a replay, or a second sweep in one process)
        mlflow.set_experiment(experiment_id=MlflowClient().get_run(parent_id).info.experiment_id)
        with mlflow.start_run(run_id=parent_id):
            info = mlflow.pytorch.log_model(
                served,
                name="model",
                signature=signature,
                input_example=x_example[:2],
                # torch.export's pt2 format: the graph and weights, no pickled Python classes,
                # so the model loads where this package is not installed.
                serialization_format="pt2",
                metadata=meta,
                extra_files=[str(weights), str(spec)],
                # Stated, not inferred: inference reloads the model in a subprocess (~7 s).
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}",
                    "numpy",
                ],
            )
            mlflow.log_metrics(test_metrics, timestamp=at_ms or int(time.time() * 1000))
    return str(info.model_uri)


def register_version(
    model_uri: str, name: str, trial_run_id: str, test_metrics: dict[str, float], marker: str = ""
) -> str:
    """A new version of model ``name``; ``marker`` (a tag set in the same call) lets a
    replay that died before recording the version find it instead of registering again."""
    from orchestrator import outbox

    tags = {"trial_run_id": trial_run_id, **{k: f"{v:.4f}" for k, v in test_metrics.items()}}
    if marker:
        tags[outbox.MARKER] = marker
    return str(mlflow.register_model(model_uri, name, tags=tags).version)


def find_version(client: MlflowClient, name: str, marker: str) -> str | None:
    """The version of model ``name`` registered with ``marker``, if any."""
    from orchestrator import outbox

    found = client.search_model_versions(f"name = '{name}' and tags.`{outbox.MARKER}` = '{marker}'")
    return str(found[0].version) if found else None


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    old: str | None,
    parent_id: str,
    trial_run_id: str,
) -> None:
    """``champion`` to ``version``, ``previous`` to the one it replaces (``old``), and the
    runs tagged. Each step sets a value, so doing them again after a crash changes nothing."""
    from orchestrator import outbox

    if old is not None and old != version:
        client.set_registered_model_alias(name, "previous", old)  # before champion moves
        outbox.count_send()
    client.set_registered_model_alias(name, "champion", version)
    outbox.count_send()
    client.set_tag(parent_id, "orchestrator.champion_version", version)
    outbox.count_send()
    client.set_tag(trial_run_id, "orchestrator.champion", "true")
    outbox.count_send()


def champion_version(client: MlflowClient, name: str, alias: str = "champion") -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None  # no such model or alias yet


PENDING = "champion-pending"  # a champion trained while MLflow was away, to register later
CHAMPION_FILE = "champion.json"  # in PENDING: what registering needs, and how far it got


def keep_champion(
    folder: Path,
    cfg: Config,
    parent_id: str,
    net: torch.nn.Module,
    x_example: np.ndarray,
    classes: list,
    test_metrics: dict[str, float],
    trial_run_id: str,
) -> Path:
    """What ``register_champion`` needs, on disk (weights, config, example, scores), for a
    replay once the tracking server is back. The folder appears whole or not at all (built
    beside it, fsynced, renamed into place); run ids are stored resolved as far as the
    journal knows them (the replay resolves the rest); a marker lets the replay find the
    model version it registered if it dies before recording it."""
    import shutil
    import uuid

    from orchestrator import outbox

    folder = Path(folder)
    ids = outbox.load_ids(folder)
    parent_id, trial_run_id = ids.get(parent_id, parent_id), ids.get(trial_run_id, trial_run_id)
    pending, tmp = folder / PENDING, folder / (PENDING + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a kill while an earlier one was kept
    tmp.mkdir(parents=True)
    modelfile.write_weights(tmp, cfg, net, classes, int(x_example.shape[1]))
    (tmp / CHAMPION_FILE).write_text(
        json.dumps(
            {
                "config": config_mod.to_dict(config_mod.redact(cfg)),
                "parent_id": parent_id,
                "trial_run_id": trial_run_id,
                "example": x_example.tolist(),
                "classes": classes,
                "test_metrics": test_metrics,
                "marker": f"champion-{uuid.uuid4().hex[:12]}",
                "at": int(time.time() * 1000),
            }
        )
    )
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    outbox.fsync_dir(tmp)
    shutil.rmtree(pending, ignore_errors=True)
    tmp.replace(pending)
    outbox.fsync_dir(folder)
    return pending


def replay(
    folder: Path, uri: str, out: Callable[[str], None] = print, patience: float = 60.0
) -> str | None:
    """Send what a sweep (or train run) kept while its tracking server was away: the queued
    writes in order, then the champion's registration. Returns the new model version, if a
    champion was waiting. Raises if the server still does not answer, and (once the rest is
    done) if MLflow refused writes: they are set aside in ``outbox.REFUSED``.

    A replay killed at any point can be run again: each run is created once, each epoch
    logged once (see ``outbox``), and the champion registered once (``register_kept``)."""
    from orchestrator import outbox

    uri = bare_uri(uri)
    mlflow.set_tracking_uri(uri)
    box = outbox.Outbox.from_journal(
        MlflowClient(uri), folder, lambda m: out(config_mod.redact_uri(m))
    )
    total = len(box.queue)
    if not box.drain(block=True, patience=patience):
        raise RuntimeError(
            f"MLflow at {config_mod.redact_uri(uri)} still does not answer: "
            f"{len(box.queue)} of "
            f"{total} write(s) left in {folder / outbox.JOURNAL}"
        )
    if total:
        out(f"[tracking] replayed {total} kept write(s) to {config_mod.redact_uri(uri)}")
    version = None
    if (folder / PENDING / CHAMPION_FILE).is_file():
        version = register_kept(folder / PENDING, box.run_id, out)
    if box.refused:
        raise RuntimeError(
            f"MLflow refused {box.refused} of the {total} kept write(s) (not "
            f"an outage); they are set aside, each with its error, in "
            f"{folder / outbox.REFUSED}"
        )
    return version


def register_kept(
    pending: Path, resolve: Callable[[str], str | None], out: Callable[[str], None] = print
) -> str:
    """Register the champion ``keep_champion`` left in ``pending``. Each step's outcome is
    recorded in its ``champion.json`` (atomically, fsynced) before the next: the logged
    model (and the champion it will replace), then the new version, before any alias
    moves; a version registered by a try that died before recording it is found by its
    marker tag. So a kill at any point, and a replay again, registers one version."""
    import shutil

    from orchestrator import outbox

    path = pending / CHAMPION_FILE
    info = json.loads(path.read_text())
    cfg = config_mod.from_dict(info["config"])
    name, marker = cfg.tracking.register_as, info.get("marker", "")
    parent, trial = resolve(info["parent_id"]) or "", resolve(info["trial_run_id"]) or ""
    client = MlflowClient()
    version = info.get("version") or (find_version(client, name, marker) if marker else None)
    if version is None:
        if "model_uri" not in info:
            net, _ = modelfile.load_weights(pending)
            info["model_uri"] = log_champion(
                cfg,
                parent,
                net,
                np.asarray(info["example"], dtype=np.float32),
                info["classes"],
                info["test_metrics"],
                info.get("at"),
            )
            outbox.count_send()
            info["previous"] = champion_version(client, name)
            outbox.write_atomic(path, json.dumps(info))
        version = register_version(info["model_uri"], name, trial, info["test_metrics"], marker)
        outbox.count_send()
    if info.get("version") != version:
        info["version"] = version
        outbox.write_atomic(path, json.dumps(info))  # before any alias moves
    old = info["previous"] if "previous" in info else champion_version(client, name)
    promote(client, name, version, old, parent, trial)
    path.unlink()  # nothing is pending from here on; then the rest goes
    outbox.fsync_dir(pending)
    shutil.rmtree(pending)
    out(f"[tracking] champion registered as models:/{name}@champion (version {version})")
    return version

"""The champion in the registry: logged (both forms: torch.export's pt2 program and the
pickle-free model format), registered, promoted (``champion``; the version it replaces keeps
``previous``); or, while the tracking server is away, kept on disk and registered later by
``replay`` together with the writes the outbox journaled."""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from orchestrator import config as config_mod
from orchestrator.config import Config
from orchestrator.core import modelfile, storage
from orchestrator.tracking import outbox, schema
from orchestrator.tracking.location import bare_uri
from orchestrator.tracking.registry import champion_version, find_version


def register_champion(
    cfg: Config,
    parent_id: str,
    net: torch.nn.Module,
    x_example: np.ndarray,
    spec: modelfile.Spec,
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
    model_uri = log_champion(cfg, parent_id, net, x_example, spec, test_metrics)
    old = champion_version(client, name)
    version = register_version(model_uri, name, trial_run_id, test_metrics)
    promote(client, name, version, old, parent_id, trial_run_id)
    return version


def log_champion(
    cfg: Config,
    parent_id: str,
    net: torch.nn.Module,
    x_example: np.ndarray,
    spec: modelfile.Spec,
    test_metrics: dict[str, float],
    at_ms: int | None = None,
) -> str:
    """The served form of ``net`` logged on the sweep run, with the test scores (at
    ``at_ms``: the same time on a second try, so MLflow keeps one point); its model URI."""
    from mlflow.models import infer_signature

    from orchestrator.core import model

    net = net.cpu().eval()
    served = model.Outputs(net, spec.task).eval()
    with torch.no_grad():
        example_out = served(torch.from_numpy(x_example)).numpy()
    signature = infer_signature(x_example, example_out)
    meta = {
        "task": spec.task.kind,
        "classes": spec.classes,
        "num_features": spec.num_features,
        "inputs": spec.encoding.schema(),
    }
    with tempfile.TemporaryDirectory() as d:
        weights, spec_path = modelfile.write_weights(d, spec, net)
        # the run's own experiment: MLflow refuses to resume a run of another experiment
        # than the process's active one (a replay, or a second sweep in one process)
        mlflow.set_experiment(experiment_id=MlflowClient().get_run(parent_id).info.experiment_id)
        requirements = [
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            "numpy",
        ]
        with mlflow.start_run(run_id=parent_id):
            why_not = pt2_refusal(served, spec)
            if why_not is None:
                info = mlflow.pytorch.log_model(
                    served,
                    name="model",
                    signature=signature,
                    input_example=x_example[:2],
                    # torch.export's pt2 format: the graph and weights, no pickled Python
                    # classes, so the model loads where this package is not installed.
                    serialization_format="pt2",
                    metadata=meta,
                    extra_files=[str(weights), str(spec_path)],
                    # Stated, not inferred: inference reloads the model in a subprocess.
                    pip_requirements=requirements,
                )
            else:  # the pickle-free form alone, with a loader from this package's code
                with warnings.catch_warnings():  # MLflow's notes on its type-hint schemas
                    warnings.simplefilter("ignore", UserWarning)
                    info = _log_pyfunc(weights, spec_path, spec, meta, why_not, requirements)
            source = model.factory_source(spec.model.kind)
            if source:  # the user's model code, as text, for reproducibility (never loaded)
                mlflow.log_artifact(source, artifact_path="code")
            mlflow.log_metrics(test_metrics, timestamp=at_ms or int(time.time() * 1000))
    return str(info.model_uri)


def _log_pyfunc(
    weights: Path,
    spec_path: Path,
    spec: modelfile.Spec,
    meta: dict[str, Any],
    why_not: str,
    requirements: list[str],
) -> Any:
    """The champion as an MLflow model from code (``pyfunc_model.py``) over its pickle-free
    files, for what a pt2 program cannot serve."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={modelfile.WEIGHTS_FILE: str(weights), modelfile.MODEL_FILE: str(spec_path)},
        signature=records_signature(spec),
        metadata={**meta, "pt2": f"not exported: {why_not}"},
        # not "orchestrator": that name on PyPI is another project; the loader needs this
        # package installed where it runs (docs/models.md)
        pip_requirements=requirements,
    )


def pt2_refusal(served: torch.nn.Module | None, spec: modelfile.Spec) -> str | None:
    """Why torch.export's pt2 program cannot be the champion's MLflow form (None: it can).
    It takes one float matrix: a model with text categories or lists takes named columns,
    and a user's module may not trace. Tried on the driver before the sweep starts too
    (``sweep.driver``), so the user knows then what ``mlflow.pyfunc.load_model`` offers."""
    if not spec.encoding.numeric():
        return "its inputs include text categories or lists, which a pt2 program cannot take"
    if served is None:
        return None
    try:
        with torch.no_grad():
            torch.export.export(served.eval(), (torch.zeros(2, spec.num_features),))
    except Exception as e:  # noqa: BLE001 - any failure to trace: fall back, say why
        return f"torch.export cannot trace the model ({type(e).__name__}: {str(e)[:200]})"
    return None


def records_signature(spec: modelfile.Spec) -> Any:
    """The MLflow signature of raw named columns (what the pyfunc form takes)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    from orchestrator.core import features

    def col(c: features.Column) -> ColSpec:
        required = spec.encoding.missing != "impute"
        if c.kind == features.LIST:
            return ColSpec(Array(DataType.double), c.name, required=required)
        if c.kind == features.BOOLEAN:
            return ColSpec(DataType.boolean, c.name, required=required)
        if c.kind == features.CATEGORY:
            text = c.dtype in ("string", "large_string")
            return ColSpec(DataType.string if text else DataType.long, c.name, required=required)
        return ColSpec(DataType.double, c.name, required=required)

    return ModelSignature(inputs=Schema([col(c) for c in spec.encoding.columns]))


def register_version(
    model_uri: str, name: str, trial_run_id: str, test_metrics: dict[str, float], marker: str = ""
) -> str:
    """A new version of model ``name``; ``marker`` (a tag set in the same call) lets a
    replay that died before recording the version find it instead of registering again."""

    tags = {"trial_run_id": trial_run_id, **{k: f"{v:.4f}" for k, v in test_metrics.items()}}
    if marker:
        tags[schema.OUTBOX_ID] = marker
    return str(mlflow.register_model(model_uri, name, tags=tags).version)


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

    if old is not None and old != version:
        client.set_registered_model_alias(name, "previous", old)  # before champion moves
        outbox.count_send()
    client.set_registered_model_alias(name, "champion", version)
    outbox.count_send()
    client.set_tag(parent_id, schema.CHAMPION_VERSION, version)
    outbox.count_send()
    client.set_tag(trial_run_id, schema.CHAMPION, "true")
    outbox.count_send()


PENDING = "champion-pending"  # a champion trained while MLflow was away, to register later


CHAMPION_FILE = "champion.json"  # in PENDING: what registering needs, and how far it got


def keep_champion(
    folder: Path | storage.Folder,
    cfg: Config,
    parent_id: str,
    net: torch.nn.Module,
    x_example: np.ndarray,
    spec: modelfile.Spec,
    test_metrics: dict[str, float],
    trial_run_id: str,
) -> str:
    """What ``register_champion`` needs, on disk (weights, config, example, scores), for a
    replay once the tracking server is back. The folder appears whole or not at all (built
    beside it, fsynced, renamed into place; on object storage its ``champion.json``, which
    the replay looks for, is uploaded last); run ids are stored resolved as far as the
    journal knows them (the replay resolves the rest); a marker lets the replay find the
    model version it registered if it dies before recording it."""
    import shutil
    import uuid

    store = storage.as_folder(folder)
    ids = outbox.load_ids(store)
    parent_id, trial_run_id = ids.get(parent_id, parent_id), ids.get(trial_run_id, trial_run_id)
    scratch = None if store.local else storage.scratch()
    local = Path(store.path) if scratch is None else scratch
    pending, tmp = local / PENDING, local / (PENDING + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a kill while an earlier one was kept
    tmp.mkdir(parents=True)
    modelfile.write_weights(tmp, spec, net)
    (tmp / CHAMPION_FILE).write_text(
        json.dumps(
            {
                "config": config_mod.to_dict(config_mod.redact(cfg)),
                "parent_id": parent_id,
                "trial_run_id": trial_run_id,
                "example": x_example.tolist(),
                "test_metrics": test_metrics,
                "marker": f"champion-{uuid.uuid4().hex[:12]}",
                "at": int(time.time() * 1000),
            }
        )
    )
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    storage.fsync_dir(tmp)
    if scratch is not None:  # object storage: the marker file last, after the rest
        store.remove_tree(PENDING)
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == CHAMPION_FILE):
            store.write_atomic(f"{PENDING}/{f.name}", f.read_bytes())
        shutil.rmtree(scratch, ignore_errors=True)
        return f"{store}/{PENDING}"
    shutil.rmtree(pending, ignore_errors=True)
    tmp.replace(pending)
    storage.fsync_dir(local)
    return str(pending)


def replay(
    folder: Path | storage.Folder,
    uri: str,
    out: Callable[[str], None] = print,
    patience: float = 60.0,
) -> str | None:
    """Send what a sweep (or train run) kept while its tracking server was away: the queued
    writes in order, then the champion's registration. Returns the new model version, if a
    champion was waiting. Raises if the server still does not answer, and (once the rest is
    done) if MLflow refused writes: they are set aside in ``outbox.REFUSED``.

    A replay killed at any point can be run again: each run is created once, each epoch
    logged once (see ``outbox``), and the champion registered once (``register_kept``)."""

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
            f"{total} write(s) left in {folder}/{outbox.JOURNAL}"
        )
    if total:
        out(f"[tracking] replayed {total} kept write(s) to {config_mod.redact_uri(uri)}")
    version = None
    store = storage.as_folder(folder)
    if store.is_file(f"{PENDING}/{CHAMPION_FILE}"):
        version = register_kept(store / PENDING, box.run_id, out)
    if box.refused:
        raise RuntimeError(
            f"MLflow refused {box.refused} of the {total} kept write(s) (not "
            f"an outage); they are set aside, each with its error, in "
            f"{folder}/{outbox.REFUSED}"
        )
    return version


def register_kept(
    pending: Path | storage.Folder,
    resolve: Callable[[str], str | None],
    out: Callable[[str], None] = print,
) -> str:
    """Register the champion ``keep_champion`` left in ``pending``. Each step's outcome is
    recorded in its ``champion.json`` (atomically, fsynced) before the next: the logged
    model (and the champion it will replace), then the new version, before any alias
    moves; a version registered by a try that died before recording it is found by its
    marker tag. So a kill at any point, and a replay again, registers one version."""
    pending = storage.as_folder(pending)
    info = json.loads(pending.read_text(CHAMPION_FILE))
    cfg = config_mod.from_dict(info["config"])
    name, marker = cfg.tracking.register_as, info.get("marker", "")
    parent, trial = resolve(info["parent_id"]) or "", resolve(info["trial_run_id"]) or ""
    client = MlflowClient()
    version = info.get("version") or (find_version(client, name, marker) if marker else None)
    if version is None:
        if "model_uri" not in info:
            # this machine trained it: the factory it names is the config's own
            with tempfile.TemporaryDirectory() as d:  # weights read from local files
                local = pending.download("", Path(d) / PENDING)
                net, spec = modelfile.load_weights(local, factories=(cfg.model.kind,))
            info["model_uri"] = log_champion(
                cfg,
                parent,
                net,
                np.asarray(info["example"], dtype=np.float32),
                spec,
                info["test_metrics"],
                info.get("at"),
            )
            outbox.count_send()
            info["previous"] = champion_version(client, name)
            pending.write_atomic(CHAMPION_FILE, json.dumps(info))
        version = register_version(info["model_uri"], name, trial, info["test_metrics"], marker)
        outbox.count_send()
    if info.get("version") != version:
        info["version"] = version
        pending.write_atomic(CHAMPION_FILE, json.dumps(info))  # before any alias moves
    old = info["previous"] if "previous" in info else champion_version(client, name)
    promote(client, name, version, old, parent, trial)
    pending.remove(CHAMPION_FILE)  # nothing is pending from here on; then the rest goes
    pending.parent.remove_tree(pending.name)
    out(f"[tracking] champion registered as models:/{name}@champion (version {version})")
    return version

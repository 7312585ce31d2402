"""Typed configuration: YAML + dotted ``key=value`` overrides, validated once at the door.

Every error names the dotted key and says the fix, and is raised before Ray or MLflow
start (``ConfigError``; the CLI turns it into exit code 2).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml


class ConfigError(ValueError):
    """A bad configuration value: ``key`` is the dotted path, ``fix`` one line on what to do."""

    def __init__(self, key: str, problem: str, fix: str):
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"config error at '{key}': {problem}\n  fix: {fix}")

    def __reduce__(self) -> tuple:  # so it crosses Ray's process boundaries intact
        return (ConfigError, (self.key, self.problem, self.fix))


def secret(kind: str = "value", env: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field metadata marking a secret: never written or printed as it is (see ``redact``),
    read back from ``env`` when a saved config is used again (see ``restore``).

    ``kind`` ``value``: the whole value is secret (``env``: the one variable holding it);
    ``uri``: only a URI's ``user:password@`` part is (``env``: the user's and the password's
    variables). A new secret key (storage credentials, say) needs only this mark."""
    return {SECRET: kind, "env": env}


SECRET, REDACTED = "secret", "***"


@dataclass
class DataConfig:
    """Where the Parquet data is and how it is split."""

    path: str = ""
    """Parquet file or directory: local path, ``s3://`` or ``gs://``."""
    label: str = "label"
    """Name of the label column; every other column is a numeric feature."""
    test_fraction: float = 0.2
    """Held-out test split (stratified); only the champion ever sees it."""
    val_fraction: float = 0.15
    """Validation split, as a fraction of what remains after the test split."""
    max_train_rows: int | None = None
    """Cap the training rows, to study the small-data (overfitting) regime."""
    seed: int = 0
    """Seed of the split: the same seed gives the same rows in every worker and run."""
    loader: str = "auto"
    """``memory``: each worker reads the table once and shards it by index (exact,
    stratified splits); ``stream``: Ray Data streams row batches to the workers (splits by
    row hash); ``auto``: stream above ``stream_above_mb``."""
    stream_above_mb: float = 1024.0
    shape: list[int] | None = None
    """Image shape of the features as [channels, height, width] (digits: [1, 8, 8]);
    needed by ``model.kind: cnn`` and by shift augmentation. Unset: tabular."""


@dataclass
class ModelConfig:
    kind: str = "mlp"
    """``mlp`` for tabular features, ``cnn`` for image-shaped ones (needs ``data.shape``)."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Width of each hidden layer (mlp) or channels of each conv block (cnn): capacity,
    the underfit <-> overfit knob."""
    dropout: float = 0.1
    """Dropout probability after each block, in [0, 1)."""


@dataclass
class EarlyStoppingConfig:
    patience: int = 0
    """Epochs without improvement of ``sweep.metric`` before stopping; 0 turns it off."""
    min_delta: float = 0.0
    """An improvement smaller than this does not count."""
    restore_best: bool = True
    """End with the best epoch's weights rather than the last epoch's."""


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    """Global batch size; each of N DDP workers gets batch_size / N."""
    lr: float = 1e-3
    optimizer: str = "adamw"
    """``adamw`` (decoupled weight decay) or ``sgd`` (momentum 0.9)."""
    weight_decay: float = 1e-4
    """L2 regularization, decoupled as in AdamW."""
    l1: float = 0.0
    """L1 penalty on weights (not biases), added to the loss."""
    seed: int = 0
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    augment: bool = False
    """Data augmentation: Gaussian feature noise (tabular) or random shifts (data.shape set)."""
    augment_noise: float = 0.1
    """Noise standard deviation, as a fraction of each feature's standard deviation."""
    augment_shift: int = 1
    """Largest shift in pixels, each direction."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` or ``fp16`` (torch.autocast; fp16 with a GradScaler)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; DDP syncs gradients only on the last one."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, more time."""
    checkpoint_every: int = 1
    """Save a checkpoint every N epochs (and always the last one)."""
    keep_checkpoints: int = 2
    """Checkpoints kept: the best N by ``sweep.metric`` (the latest is always kept too)."""


@dataclass
class ScalingConfig:
    num_workers: int = 1
    """DDP workers per trial (a Ray Train TorchTrainer worker group)."""
    use_gpu: bool = False
    """One GPU per worker and NCCL; gloo on CPU otherwise."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; fractions let small trials share a core."""
    data_cpus: float = 1.0
    """CPUs a streamed trial leaves to Ray Data's read and map tasks."""
    max_failures: int = 0
    """Restarts of a worker group after a worker dies; each resumes from the last checkpoint."""
    placement_strategy: str = "PACK"
    """Where a trial's workers go: ``PACK`` (as few nodes as possible), ``SPREAD`` (across
    nodes where it can), ``STRICT_SPREAD`` (each worker on its own node; a node lost costs
    one worker), ``STRICT_PACK`` (all on one node)."""
    fast_path: bool = True
    """Run a single-worker trial's loop inside the Tune trial itself (about 1 s to start)
    instead of through a TorchTrainer (15-20 s)."""


@dataclass
class SweepConfig:
    num_samples: int = 8
    metric: str = "val_loss"
    """What trials are ranked by (and early stopping watches)."""
    mode: str = "min"
    objective: str = "metric"
    """``metric``: rank by ``sweep.metric``; ``gap_penalized``: rank by
    val_loss + gap_penalty * max(0, val_loss - train_loss), preferring configurations that
    generalize (needs ``sweep.metric: val_loss``)."""
    gap_penalty: float = 1.0
    searcher: str = "random"
    """``random`` (and grids), ``grid`` (every combination of ``grid``/``choice`` values)
    or ``optuna`` (TPE, seeded)."""
    seed: int = 0
    """Seed of the searcher: the same seed samples the same configurations."""
    scheduler: str = "asha"
    """``asha``, ``hyperband`` (asynchronous: ASHA over ``brackets`` brackets), ``median``
    (median stopping rule), ``fifo`` (no early stop) or ``pbt`` (population based training,
    which clones trials through Tune checkpoints, so it needs single-worker trials)."""
    asha_mode: str = "auto"
    """``promote``: ASHA as published (Li et al. 2020): a trial pauses at each rung and
    resumes only once it ranks in the top 1/reduction_factor there, so no trial runs its
    whole budget before others have been compared with it; needs single-worker fast-path
    trials (pausing one is a checkpoint, not a worker-group restart). ``stop``: Tune's
    asynchronous ASHA, which never pauses and stops a trial that ranks below the top
    1/reduction_factor of those seen at a rung so far (the first trials run in full).
    ``auto``: promote on the fast path, stop otherwise."""
    grace_period: int = 5
    """ASHA/median: epochs every trial runs before it may be stopped (capped at train.epochs)."""
    reduction_factor: int = 3
    brackets: int = 3
    """hyperband: up to this many brackets, each starting its stopping rungs at a larger
    minimum budget (grace_period x reduction_factor^k, kept below train.epochs)."""
    perturbation_interval: int = 4
    """PBT: epochs between exploit/explore steps."""
    max_concurrent: int | None = None
    """Trials at once; derived from the cluster's CPUs/GPUs when unset."""
    max_failures: int = 0
    """Retries of a crashed trial (from its last checkpoint) before it is recorded as failed;
    the sweep goes on either way."""
    confirm_seeds: int = 0
    """Rerun the top ``confirm_top`` configurations with this many seeds each and choose
    the champion by the mean; 0 turns it off."""
    confirm_top: int = 3
    refit: bool = True
    """Retrain the best configuration on train + validation before the test split scores it."""
    stall_timeout: float = 1800.0
    """Seconds a running trial may go without reporting (its start-up and one epoch) before
    the sweep stops with an error naming it, instead of waiting forever."""
    storage_path: str = field(
        default_factory=lambda: os.environ.get("ORCHESTRATOR_STORAGE_PATH", "results")
    )
    """Where Ray keeps trial checkpoints (absolute, or relative to the working directory);
    default ``$ORCHESTRATOR_STORAGE_PATH``, else ``results``. On a multi-node cluster it must
    be storage every node shares (an NFS/EFS mount at the same path on every node)."""
    space: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "train.l1": {"type": "loguniform", "low": 1e-8, "high": 1e-3},
            "train.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-1},
            "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        }
    )
    """Dotted key -> ``{type: uniform|loguniform|randint|choice|grid, ...}``. The default is
    the regularization axis: L1, L2 (weight decay) and dropout."""


@dataclass
class TrackingConfig:
    uri: str | None = field(
        default=None,
        metadata=secret("uri", ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")),
    )
    """MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``.
    A ``user:password@`` in it is secret: saved as ``http://***@host``, and read back from
    ``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD``."""
    register_as: str = "orchestrator-champion"
    """Registered-model name of the champion (alias ``champion``; the version it replaces
    keeps ``previous``)."""
    system_metrics: bool = False
    """Log the driver machine's CPU, memory, disk, network and GPU use on the sweep's run
    (MLflow's system-metrics monitor, ``system/*`` metrics)."""
    system_metrics_interval: float = 10.0
    """Seconds between system-metrics samples."""
    drain_timeout: float = 60.0
    """If the tracking server went away mid-sweep: seconds the sweep waits for it at the end
    before keeping the unsent writes (and the champion) for `orchestrator tracking replay`."""


@dataclass
class DiagnosisConfig:
    """Thresholds of the bias/variance labels (see orchestrator/diagnosis.py). Losses are
    fractions of the baseline's loss (predicting the training split's class frequencies);
    both curves are read smoothed (median of three epochs). Tuned on tests/curves/corpus.json
    (`python -m jobs.curves score` shows the confusion matrix for any values)."""

    underfit_loss_ratio: float = 0.15
    """High bias: the lowest training loss of the whole run is above this x baseline (never
    when training accuracy reached 100%)."""
    gap_ratio: float = 0.15
    """High variance: validation minus training loss at the end is above this x baseline."""
    rise_ratio: float = 0.15
    """High variance: validation loss ended more than this x baseline above its minimum,
    wherever in the run the minimum fell."""
    accuracy_gap: float = 0.1
    """High variance: training minus validation accuracy at the end is above this, while the
    loss gap is above half of gap_ratio."""
    min_epochs: int = 5
    """undetermined: a run with fewer epochs is too short to tell."""
    falling_ratio: float = 0.03
    """undetermined: a run the scheduler stopped (pruned) whose validation loss fell by more
    than this x baseline over the last quarter of its epochs (at least its last 6, read as
    the median slope) had not settled yet."""
    diverge_ratio: float = 3.0
    """diverged: training loss ended above this x baseline (or above the baseline and this x
    its own minimum), or validation loss ended above this x baseline while training loss
    stayed above half of it. A NaN or infinite loss always is."""


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 1024
    """Most rows one /predict request may carry."""
    window_ms: float = 2.0
    """Micro-batching: how long a request may wait for others to share its forward pass."""
    api_key: str | None = field(default=None, metadata=secret("value", ("ORCHESTRATOR_API_KEY",)))
    """Required (header X-API-Key, or Authorization: Bearer) on everything but /health;
    default $ORCHESTRATOR_API_KEY; unset: open. Secret: saved as ``***``."""
    poll_s: float = 30.0
    """Seconds between checks that the served alias still names the same version (0: only
    on POST /reload)."""
    replicas: int = 2
    """With `serve --ray`: Ray Serve replicas of the model server (each loads the model)."""
    replica_cpus: float = 1.0
    """With `serve --ray`: CPUs Ray reserves for each replica."""
    replica_gpus: float = 0.0
    """With `serve --ray`: GPUs for each replica (e.g. 1, or 0.5 to pack two on one GPU)."""
    max_model_mb: float = 1024.0
    """Largest ``weights.pt`` a model version may have; a bigger one is refused unread."""
    allow_unauthenticated: bool = False
    """Serve without an API key on an address beyond loopback (refused otherwise)."""
    max_header_bytes: int = 65536
    """Request line and headers together; a longer head is answered 431."""
    header_timeout_s: float = 10.0
    """Seconds a client has to send a request's head (408 and closed after)."""
    body_timeout_s: float = 30.0
    """Seconds a client has, after the head, to send the body (408 and closed after)."""
    max_connections: int = 1024
    """Connections (or requests in flight) at once; beyond it, 503."""
    keepalive_s: float = 5.0
    """An idle keep-alive connection is closed after this many seconds."""


@dataclass
class Config:
    experiment: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


SPACE_TYPES = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "randint": ("low", "high"),
    "choice": ("values",),
    "grid": ("values",),
}


# ---------------------------------------------------------------- loading


def load(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), only: str | None = None
) -> Config:
    """Read a YAML file (or nothing), apply ``key=value`` overrides, validate.

    ``only="serve"`` checks types everywhere but the value rules of that section alone
    (serving needs no data path)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                "<file>",
                f"config file {str(p)!r} does not exist",
                "pass the path of a YAML file, e.g. jobs/configs/quickstart.yaml",
            )
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError("<file>", f"{p} is not valid YAML: {e}", "fix the YAML syntax") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                "<file>",
                f"{p} must hold a mapping of sections",
                "start the file with keys such as 'data:' and 'train:'",
            )
        raw = loaded or {}
    for item in overrides:
        apply_override(raw, item)
    # a redacted secret (`orchestrator submit` sends only those) is read from the environment
    if only == "serve":
        cfg = _build(Config, raw, "")
        validate_serve(cfg)
        return restore(cfg)
    return restore(from_dict(raw))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (numbers, lists)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(
            item,
            "an override must look like key=value",
            "write e.g. train.lr=0.01 or model.hidden=[128,128]",
        )
    if text.strip() == REDACTED:  # a redacted secret (what submit sends); YAML reads an alias
        set_dotted(raw, key, REDACTED)
        return
    set_dotted(raw, key, yaml.safe_load(text) if text.strip() else None)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict of raw config (before validation)."""
    parts = key.split(".")
    if key.startswith("sweep.space."):  # space keys themselves contain dots
        parts = ["sweep", "space", key[len("sweep.space.") :]]
    node = raw
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if node is None:  # `sweep:` with nothing under it, or `sweep: null`
            section = ".".join(parts[: i + 1])
            raise ConfigError(
                section,
                f"is empty (null), so {key} has no section to go in",
                f"remove '{parts[i]}:' from the file to keep its defaults, or give it keys",
            )
        if not isinstance(node, dict):
            raise ConfigError(key, f"'{part}' is not a section", "override a leaf key")
    node[parts[-1]] = value


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    validate(cfg)
    _check(
        cfg.sweep.scheduler != "pbt" or bool(cfg.sweep.space),
        "sweep.space",
        "pbt needs at least one key to mutate",
        "add e.g. train.weight_decay: {type: loguniform, low: 1e-6, high: 1e-1}",
    )
    _check(
        not cfg.sweep.confirm_seeds or "train.seed" not in cfg.sweep.space,
        "sweep.confirm_seeds",
        "confirmation varies train.seed, which the search also varies",
        "remove train.seed from sweep.space, or set sweep.confirm_seeds: 0",
    )
    return cfg


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        section = prefix.rstrip(".") or "<root>"
        if raw is None:  # `sweep:` with every key under it commented out, or `sweep: null`
            raise ConfigError(
                section,
                "is empty (null), not a section of keys",
                f"remove '{section.rsplit('.', 1)[-1]}:' to keep its defaults, or give it keys",
            )
        raise ConfigError(
            section,
            f"expected a mapping, got {_show(raw)}",
            f"write '{section}:' as a section of keys",
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            dotted = f"{prefix}{key}"
            raise ConfigError(
                dotted, "unknown key", f"remove it or use one of: {', '.join(sorted(names))}"
            )
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")  # type: ignore[arg-type]
    if value is None:
        raise ConfigError(key, "is empty", f"give it a value of type {_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {_show(value)}", f"set {key}: true")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {_show(value)}", f"set {key} to e.g. 4")
    if tp is float:
        # PyYAML reads 1e-4 (no dot) as a string: accept any text that is a number.
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):  # OverflowError: an int beyond any float
                number = math.inf if not isinstance(value, str) else None
        if number is None:
            raise ConfigError(
                key, f"expected a number, got {_show(value)}", f"set {key} to e.g. 0.1"
            )
        # One rule for every float key: inf and nan are never settings (an infinite timeout
        # waits forever, and nan passes no range check because it compares false to all).
        if not math.isfinite(number):
            raise ConfigError(
                key, f"must be a finite number, got {value!r}", f"set {key} to e.g. 0.1"
            )
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected text, got {_show(value)}", f'quote it: {key}: "..."')
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {_show(value)}", f"write {key}: [...]")
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {_show(value)}", f"write {key}: {{}}")
        return dict(value)
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a bug in this file


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------- checks beside the fields


def _check(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(key, problem, fix)


def validate(cfg: Config) -> None:
    """Cross-field and range checks; each names the key and the fix."""
    d, m, t, s, sw = cfg.data, cfg.model, cfg.train, cfg.scaling, cfg.sweep
    _check(bool(cfg.experiment.strip()), "experiment", "is empty", "name the MLflow experiment")
    _check(
        bool(d.path),
        "data.path",
        "is not set",
        "point it at a Parquet file, e.g. data/digits.parquet (make data exports one)",
    )
    _check(bool(d.label), "data.label", "is empty", "name the label column")
    _check(
        0 < d.test_fraction < 1,
        "data.test_fraction",
        f"must be in (0, 1), got {d.test_fraction}",
        "use e.g. 0.2",
    )
    _check(
        0 < d.val_fraction < 1,
        "data.val_fraction",
        f"must be in (0, 1), got {d.val_fraction}",
        "use e.g. 0.15",
    )
    _check(
        d.loader in ("auto", "memory", "stream"),
        "data.loader",
        f"unknown loader {d.loader!r}",
        "use auto, memory or stream",
    )
    _check(
        d.stream_above_mb > 0,
        "data.stream_above_mb",
        f"must be positive, got {d.stream_above_mb}",
        "use e.g. 1024",
    )
    _check(
        d.max_train_rows is None or d.max_train_rows > 0,
        "data.max_train_rows",
        f"must be positive, got {d.max_train_rows}",
        "remove it or set e.g. 200",
    )
    _check(
        m.kind in ("mlp", "cnn"),
        "model.kind",
        f"unknown kind {m.kind!r}",
        "use 'mlp' (tabular) or 'cnn' (image-shaped, with data.shape)",
    )
    _check(
        m.kind != "cnn" or d.shape is not None,
        "data.shape",
        "is not set but model.kind is cnn",
        "set data.shape: [channels, height, width], e.g. [1, 8, 8] for digits",
    )
    _check(
        d.shape is None or (len(d.shape) == 3 and all(v > 0 for v in d.shape)),
        "data.shape",
        f"must be [channels, height, width] of positive sizes, got {d.shape}",
        "use e.g. [1, 8, 8]",
    )
    _check(
        all(h > 0 for h in m.hidden),
        "model.hidden",
        f"layer widths must be positive, got {m.hidden}",
        "use e.g. [256, 256]",
    )
    _check(
        0 <= m.dropout < 1,
        "model.dropout",
        f"must be in [0, 1), got {m.dropout}",
        "use e.g. 0.1 (0 turns dropout off)",
    )
    _check(t.epochs > 0, "train.epochs", f"must be positive, got {t.epochs}", "use e.g. 30")
    _check(
        t.batch_size > 0, "train.batch_size", f"must be positive, got {t.batch_size}", "use e.g. 64"
    )
    _check(
        t.lr > 0 and math.isfinite(t.lr),
        "train.lr",
        f"must be a positive number, got {t.lr}",
        "use e.g. 0.001",
    )
    _check(
        t.optimizer in ("adamw", "sgd"),
        "train.optimizer",
        f"unknown optimizer {t.optimizer!r}",
        "use 'adamw' or 'sgd'",
    )
    _check(
        t.weight_decay >= 0,
        "train.weight_decay",
        f"must be >= 0, got {t.weight_decay}",
        "use e.g. 0.0001 (0 turns L2 off)",
    )
    _check(t.l1 >= 0, "train.l1", f"must be >= 0, got {t.l1}", "use e.g. 0.00001 (0 = off)")
    es = t.early_stopping
    _check(
        es.patience >= 0,
        "train.early_stopping.patience",
        f"must be >= 0, got {es.patience}",
        "use e.g. 5 (0 turns early stopping off)",
    )
    _check(
        es.min_delta >= 0,
        "train.early_stopping.min_delta",
        f"must be >= 0, got {es.min_delta}",
        "use e.g. 0.001",
    )
    _check(
        t.augment_noise >= 0,
        "train.augment_noise",
        f"must be >= 0, got {t.augment_noise}",
        "use e.g. 0.1",
    )
    _check(
        t.augment_shift >= 0,
        "train.augment_shift",
        f"must be >= 0, got {t.augment_shift}",
        "use e.g. 1",
    )
    _check(
        t.precision in ("fp32", "bf16", "fp16"),
        "train.precision",
        f"unknown precision {t.precision!r}",
        "use fp32, bf16 or fp16",
    )
    _check(
        t.grad_accum_steps >= 1,
        "train.grad_accum_steps",
        f"must be at least 1, got {t.grad_accum_steps}",
        "use e.g. 4",
    )
    _check(
        t.batch_size >= s.num_workers * t.grad_accum_steps,
        "train.batch_size",
        f"{t.batch_size} cannot be split into {s.num_workers} workers x "
        f"{t.grad_accum_steps} micro-batches",
        "raise train.batch_size",
    )
    _check(
        t.checkpoint_every >= 1,
        "train.checkpoint_every",
        f"must be at least 1, got {t.checkpoint_every}",
        "use e.g. 1",
    )
    _check(
        t.keep_checkpoints >= 1,
        "train.keep_checkpoints",
        f"must be at least 1, got {t.keep_checkpoints}",
        "use e.g. 2",
    )
    _check(
        "://" not in sw.storage_path,
        "sweep.storage_path",
        f"{sw.storage_path!r}: checkpoints on object storage are not supported yet",
        "use a folder every node mounts at the same path (NFS, EFS, Filestore), e.g. "
        "/mnt/shared/results",
    )
    _check(
        s.placement_strategy in PLACEMENT_STRATEGIES,
        "scaling.placement_strategy",
        f"unknown strategy {s.placement_strategy!r}",
        f"use one of {PLACEMENT_STRATEGIES}",
    )
    _check(
        s.max_failures >= -1,
        "scaling.max_failures",
        f"must be >= -1 (-1: retry forever), got {s.max_failures}",
        "use e.g. 2",
    )
    _check(
        s.num_workers >= 1,
        "scaling.num_workers",
        f"must be at least 1, got {s.num_workers}",
        "use e.g. 2",
    )
    _check(
        s.data_cpus > 0, "scaling.data_cpus", f"must be positive, got {s.data_cpus}", "use e.g. 1"
    )
    _check(
        s.cpus_per_worker > 0,
        "scaling.cpus_per_worker",
        f"must be positive, got {s.cpus_per_worker}",
        "use e.g. 1",
    )
    _check(
        t.batch_size >= s.num_workers,
        "train.batch_size",
        f"{t.batch_size} cannot be split over {s.num_workers} workers",
        "raise train.batch_size or lower scaling.num_workers",
    )
    _check(
        sw.num_samples >= 1,
        "sweep.num_samples",
        f"must be at least 1, got {sw.num_samples}",
        "use e.g. 8",
    )
    _check(
        sw.metric in METRICS,
        "sweep.metric",
        f"unknown metric {sw.metric!r}",
        f"use one of: {', '.join(METRICS)}",
    )
    _check(
        sw.mode in ("min", "max"),
        "sweep.mode",
        f"must be min or max, got {sw.mode!r}",
        "use 'min' for losses, 'max' for accuracy",
    )
    _check(
        sw.searcher in SEARCHERS,
        "sweep.searcher",
        f"unknown searcher {sw.searcher!r}",
        f"use one of: {', '.join(SEARCHERS)}",
    )
    _check(
        sw.scheduler in SCHEDULERS,
        "sweep.scheduler",
        f"unknown scheduler {sw.scheduler!r}",
        f"use one of: {', '.join(SCHEDULERS)}",
    )
    _check(
        sw.scheduler != "pbt" or (s.num_workers == 1 and s.fast_path),
        "sweep.scheduler",
        f"pbt clones trials through Tune checkpoints, which only single-worker trials on "
        f"the fast path write; got scaling.num_workers={s.num_workers}, "
        f"scaling.fast_path={s.fast_path}",
        "set scaling.num_workers: 1 (and fast_path: true), or use scheduler asha or median",
    )
    _check(
        sw.asha_mode in ("auto", "promote", "stop"),
        "sweep.asha_mode",
        f"unknown mode {sw.asha_mode!r}",
        "use one of: auto, promote, stop",
    )
    _check(
        sw.asha_mode != "promote" or sw.scheduler == "asha",
        "sweep.asha_mode",
        f"promote is a mode of scheduler asha, not {sw.scheduler}",
        "set sweep.scheduler: asha, or drop sweep.asha_mode",
    )
    _check(
        sw.asha_mode != "promote" or (s.num_workers == 1 and s.fast_path),
        "sweep.asha_mode",
        f"promote pauses and resumes trials through Tune checkpoints, which only "
        f"single-worker trials on the fast path write; got scaling.num_workers="
        f"{s.num_workers}, scaling.fast_path={s.fast_path}",
        "set scaling.num_workers: 1, or sweep.asha_mode: stop",
    )
    _check(
        sw.brackets >= 1, "sweep.brackets", f"must be at least 1, got {sw.brackets}", "use e.g. 3"
    )
    if sw.scheduler == "pbt":
        _check(
            sw.perturbation_interval < t.epochs,
            "sweep.perturbation_interval",
            f"{sw.perturbation_interval} is not below train.epochs ({t.epochs}): pbt would "
            "never perturb",
            "use e.g. train.epochs / 5",
        )
        _check(
            sw.perturbation_interval % t.checkpoint_every == 0,
            "train.checkpoint_every",
            f"pbt clones the checkpoint of a perturbation epoch; every "
            f"{t.checkpoint_every} epochs does not divide sweep.perturbation_interval "
            f"({sw.perturbation_interval})",
            "set train.checkpoint_every: 1",
        )
        _check(
            not sw.refit and not sw.confirm_seeds,
            "sweep.refit",
            "a pbt trial's score comes from a schedule of values that a refit or a seed "
            "rerun from scratch cannot replay",
            "set sweep.refit: false and "
            "sweep.confirm_seeds: 0 (the champion keeps the trial's own weights)",
        )
    _check(
        sw.objective in ("metric", "gap_penalized"),
        "sweep.objective",
        f"unknown objective {sw.objective!r}",
        "use 'metric' or 'gap_penalized'",
    )
    _check(
        sw.objective != "gap_penalized" or (sw.metric, sw.mode) == ("val_loss", "min"),
        "sweep.objective",
        f"gap_penalized ranks by val_loss, but sweep.metric is {sw.metric} ({sw.mode})",
        "set sweep.metric: val_loss and sweep.mode: min",
    )
    _check(
        sw.gap_penalty >= 0,
        "sweep.gap_penalty",
        f"must be >= 0, got {sw.gap_penalty}",
        "use e.g. 1.0",
    )
    _check(
        sw.perturbation_interval >= 1,
        "sweep.perturbation_interval",
        f"must be at least 1, got {sw.perturbation_interval}",
        "use e.g. 4",
    )
    _check(
        sw.max_failures >= -1,
        "sweep.max_failures",
        f"must be >= -1 (-1: retry forever), got {sw.max_failures}",
        "use e.g. 1",
    )
    _check(
        sw.stall_timeout > 0,
        "sweep.stall_timeout",
        f"must be > 0 seconds, got {sw.stall_timeout}",
        "use e.g. 1800 (above the slowest epoch, start-up included)",
    )
    _check(
        sw.confirm_seeds >= 0,
        "sweep.confirm_seeds",
        f"must be >= 0, got {sw.confirm_seeds}",
        "use e.g. 3 (0 turns it off)",
    )
    _check(
        sw.confirm_seeds != 1,
        "sweep.confirm_seeds",
        "one seed has no spread to compare",
        "use 0 (off) or at least 2",
    )
    _check(
        sw.confirm_top >= 1,
        "sweep.confirm_top",
        f"must be at least 1, got {sw.confirm_top}",
        "use e.g. 3",
    )
    _check(
        sw.grace_period >= 1,
        "sweep.grace_period",
        f"must be at least 1, got {sw.grace_period}",
        "use e.g. 5",
    )
    _check(
        sw.reduction_factor >= 2,
        "sweep.reduction_factor",
        f"must be at least 2, got {sw.reduction_factor}",
        "use e.g. 3",
    )
    _check(
        sw.max_concurrent is None or sw.max_concurrent >= 1,
        "sweep.max_concurrent",
        f"must be at least 1, got {sw.max_concurrent}",
        "remove it to derive it from the cluster",
    )
    _check(
        cfg.tracking.system_metrics_interval > 0,
        "tracking.system_metrics_interval",
        f"must be > 0 seconds, got {cfg.tracking.system_metrics_interval}",
        "use e.g. 10",
    )
    dg = cfg.diagnosis
    for key in ("underfit_loss_ratio", "gap_ratio", "rise_ratio", "falling_ratio"):
        _check(
            getattr(dg, key) > 0,
            f"diagnosis.{key}",
            f"must be > 0, got {getattr(dg, key)}",
            "use the default, or e.g. 0.1",
        )
    _check(
        0 < dg.accuracy_gap <= 1,
        "diagnosis.accuracy_gap",
        f"must be in (0, 1] (a difference of accuracies), got {dg.accuracy_gap}",
        "use e.g. 0.1",
    )
    _check(
        dg.min_epochs >= 1,
        "diagnosis.min_epochs",
        f"must be at least 1, got {dg.min_epochs}",
        "use e.g. 5",
    )
    _check(
        dg.diverge_ratio > 1,
        "diagnosis.diverge_ratio",
        f"must be above 1 (the baseline itself), got {dg.diverge_ratio}",
        "use e.g. 3",
    )
    _check(
        cfg.tracking.drain_timeout >= 0,
        "tracking.drain_timeout",
        f"must be >= 0 seconds, got {cfg.tracking.drain_timeout}",
        "use e.g. 60",
    )
    _check(
        bool(cfg.tracking.register_as.strip()),
        "tracking.register_as",
        "is empty",
        "name the registered model, e.g. digits-mlp",
    )
    validate_serve(cfg)
    for dotted, spec in sw.space.items():
        _validate_dimension(cfg, dotted, spec)
    _validate_searcher(cfg)


def _validate_searcher(cfg: Config) -> None:
    """What each searcher and scheduler can do with the space, checked before any trial."""
    sw = cfg.sweep
    kinds = {k: spec["type"] for k, spec in sw.space.items()}
    if sw.searcher == "grid":
        for k, kind in kinds.items():
            _check(
                kind in ("grid", "choice"),
                f"sweep.space.{k}",
                f"the grid searcher needs a list of values, got type {kind}",
                "write {type: grid, values: [...]}, or use searcher random or optuna",
            )
    if sw.searcher == "optuna":
        for k, kind in kinds.items():
            _check(
                kind != "grid",
                f"sweep.space.{k}",
                "optuna samples; it cannot enumerate a grid",
                "use type choice, or searcher grid",
            )
    if sw.scheduler == "pbt":
        for k in kinds:
            _check(
                k in PBT_MUTABLE,
                f"sweep.space.{k}",
                "pbt hands a trial's weights to another configuration, so it can only "
                "change keys that keep the model's shape",
                f"search only {', '.join(sorted(PBT_MUTABLE))}, or use scheduler asha",
            )


SEARCHERS = ("random", "grid", "optuna")
SCHEDULERS = ("asha", "hyperband", "median", "fifo", "pbt")
PBT_MUTABLE = {
    "train.lr",
    "train.weight_decay",
    "train.l1",
    "model.dropout",
    "train.augment",
    "train.augment_noise",
    "train.augment_shift",
    "train.batch_size",
}


def rank_metric(cfg: Config) -> tuple[str, str]:
    """The reported value trials are ranked by, and its mode."""
    if cfg.sweep.objective == "gap_penalized":
        return "objective", "min"
    return cfg.sweep.metric, cfg.sweep.mode


def asha_promotes(cfg: Config) -> bool:
    """Whether the sweep runs ASHA by promotion (trials pause at rungs) rather than stopping."""
    sw = cfg.sweep
    fast = cfg.scaling.num_workers == 1 and cfg.scaling.fast_path
    return sw.scheduler == "asha" and (
        sw.asha_mode == "promote" or (sw.asha_mode == "auto" and fast)
    )


def rungs(cfg: Config) -> list[int]:
    """ASHA's rung epochs: grace_period x reduction_factor^k, below train.epochs (as Tune's
    ASHAScheduler places its milestones)."""
    sw, epochs = cfg.sweep, cfg.train.epochs
    out, r = [], min(sw.grace_period, epochs)
    while r < epochs:
        out.append(r)
        r *= sw.reduction_factor
    return out


def validate_serve(cfg: Config) -> None:
    v = cfg.serve
    _check(
        1 <= v.max_batch,
        "serve.max_batch",
        f"must be at least 1, got {v.max_batch}",
        "use e.g. 1024",
    )
    _check(0 < v.port < 65536, "serve.port", f"must be a TCP port, got {v.port}", "use e.g. 8000")
    _check(
        0 <= v.window_ms <= 1000,
        "serve.window_ms",
        f"must be in [0, 1000] ms, got {v.window_ms}",
        "use e.g. 2",
    )
    _check(v.poll_s >= 0, "serve.poll_s", f"must be >= 0, got {v.poll_s}", "use e.g. 30")
    _check(v.replicas >= 1, "serve.replicas", f"must be at least 1, got {v.replicas}", "use e.g. 2")
    _check(
        v.replica_cpus > 0,
        "serve.replica_cpus",
        f"must be > 0, got {v.replica_cpus}",
        "use e.g. 1 (or 0.5 to pack two replicas on a core)",
    )
    _check(
        v.replica_gpus >= 0,
        "serve.replica_gpus",
        f"must be >= 0, got {v.replica_gpus}",
        "use 0 on CPU nodes, e.g. 1 on GPU nodes",
    )
    for key in ("max_model_mb", "header_timeout_s", "body_timeout_s", "keepalive_s"):
        _check(
            0 < getattr(v, key) < math.inf,
            f"serve.{key}",
            f"must be a positive number, got {getattr(v, key)}",
            "use the default",
        )
    _check(
        v.max_header_bytes >= 1024,
        "serve.max_header_bytes",
        f"must be at least 1024, got {v.max_header_bytes}",
        "use e.g. 65536",
    )
    _check(
        v.max_connections >= 1,
        "serve.max_connections",
        f"must be at least 1, got {v.max_connections}",
        "use e.g. 1024",
    )


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")
METRICS = ("val_loss", "val_accuracy", "val_f1", "train_loss", "train_accuracy")


def _validate_dimension(cfg: Config, dotted: str, spec: Any) -> None:
    key = f"sweep.space.{dotted}"
    try:
        get(cfg, dotted)
    except KeyError:
        raise ConfigError(
            key,
            f"'{dotted}' is not a config key",
            "search a real key, e.g. train.weight_decay or model.dropout",
        ) from None
    # Resources, the data checked at the door, the schedulers' budget and where results go
    # are decided once for the whole sweep; a trial may only change how it trains.
    _check(
        (dotted.startswith(("train.", "model.")) or dotted == "data.max_train_rows")
        and dotted not in ("train.epochs", "train.checkpoint_every"),
        key,
        "only training and model settings (and data.max_train_rows) can be searched",
        "search e.g. train.weight_decay, train.lr or model.hidden; set the rest outside "
        "sweep.space",
    )
    _check(
        isinstance(spec, dict) and spec.get("type") in SPACE_TYPES,
        key,
        f"needs a 'type' among {', '.join(SPACE_TYPES)}, got {spec!r}",
        "write e.g. {type: loguniform, low: 1e-6, high: 1e-2}",
    )
    kind = spec["type"]
    needed = SPACE_TYPES[kind]
    extra = set(spec) - set(needed) - {"type"}
    _check(
        not extra,
        key,
        f"unknown field(s) {sorted(extra)} for {kind}",
        f"{kind} takes: {', '.join(needed)}",
    )
    for name in needed:
        _check(name in spec, f"{key}.{name}", "is missing", f"{kind} needs {', '.join(needed)}")
    if kind in ("choice", "grid"):
        values = spec["values"]
        _check(
            isinstance(values, list) and len(values) > 0,
            f"{key}.values",
            f"must be a non-empty list, got {values!r}",
            "write values: [a, b, c]",
        )
        for v in values:
            _check_candidate(cfg, dotted, v, f"{key}.values")
        return
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (TypeError, ValueError):
        raise ConfigError(
            key, f"low and high must be numbers, got {spec!r}", "write e.g. low: 0.0, high: 0.5"
        ) from None
    _check(
        math.isfinite(low) and math.isfinite(high),
        key,
        f"low and high must be finite, got {low} and {high}",
        "write e.g. low: 1, high: 8",
    )
    _check(low < high, key, f"low ({low}) must be below high ({high})", "swap or widen the range")
    _check(
        kind != "loguniform" or low > 0,
        f"{key}.low",
        f"loguniform needs low > 0, got {low}",
        "use e.g. 1e-6, or type: uniform",
    )
    spec["low"], spec["high"] = (int(low), int(high)) if kind == "randint" else (low, high)
    _check_candidate(cfg, dotted, low, key)
    if kind != "randint":  # randint's high is exclusive
        _check_candidate(cfg, dotted, high, key)


def _check_candidate(cfg: Config, dotted: str, value: Any, key: str) -> None:
    """A sampled value must itself make a valid config: check the range ends now."""
    try:
        with_values(cfg, {dotted: value})
    except ConfigError as e:
        raise ConfigError(
            key, f"the value {value!r} would be invalid: {e.problem}", e.fix
        ) from None


# ---------------------------------------------------------------- helpers


def get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        names = {f.name for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else ()
        if part not in names:
            raise KeyError(dotted)
        node = getattr(node, part)
    return node


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A validated copy of ``cfg`` with dotted keys set (how a trial gets its config)."""
    raw = to_dict(cfg)
    space = raw["sweep"].pop("space")
    for dotted, v in values.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = v
    raw["sweep"]["space"] = space
    out = _build(Config, raw, "")
    validate_no_space(out)
    return out


def validate_no_space(cfg: Config) -> None:
    space, cfg.sweep.space = cfg.sweep.space, {}
    try:
        validate(cfg)
    finally:
        cfg.sweep.space = space


def flatten(cfg: Config) -> dict[str, Any]:
    """Dotted params for MLflow: ``train.weight_decay`` -> value (the search space as JSON),
    secrets redacted."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and k != "space":
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, (dict, list)):
                out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(redact(cfg)), "")
    return out


def config_hash(cfg: Config) -> str:
    """Of the redacted config: the same with any password, and no oracle to guess one by."""
    raw = to_dict(redact(cfg))
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]


def to_yaml(cfg: Config) -> str:
    """The config as YAML, secrets redacted (what is written or shown, never read back as
    is: ``restore`` brings the secrets back from the environment)."""
    return yaml.safe_dump(to_dict(redact(cfg)), sort_keys=False)


# ---------------------------------------------------------------- secrets


# scheme://USERINFO@: greedy up to the token's last '@', so a password holding an unencoded
# '@' or '/' is hidden whole (an '@' later in a path hides the host too: safe side)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]+@")


def redact_uri(text: str) -> str:
    """Every ``scheme://user:password@host`` in ``text`` as ``scheme://***@host``: for a URI
    on its own, or any message that may quote one."""
    return _USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:pw@host:5000`` -> (``http://host:5000``, user, pw), percent-decoded."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), user, password


def secret_fields(cls: type | None = None, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every field marked with ``secret(...)``: dotted key -> its metadata."""
    cls = Config if cls is None else cls
    hints = typing.get_type_hints(cls)
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(secret_fields(hints[f.name], f"{prefix}{f.name}."))
        elif f.metadata.get(SECRET):
            out[f"{prefix}{f.name}"] = dict(f.metadata)
    return out


def redacted_value(kind: str, value: Any) -> Any:
    """``value`` as it is written or shown (``kind``: a field's ``secret(...)`` kind)."""
    if value is None or value == "":
        return value  # nothing to hide (and "unset" stays visible as such)
    if isinstance(value, dict):
        return {k: redacted_value(kind, v) for k, v in value.items()}
    if kind == "uri":
        return redact_uri(str(value))
    return REDACTED


def redact(cfg: Config) -> Config:
    """A copy with every secret field redacted: what goes into MLflow params, config.yaml,
    the sweep folder's state files, printed output and error messages."""
    out = copy.deepcopy(cfg)
    for dotted, meta in secret_fields().items():
        _set(out, dotted, redacted_value(meta[SECRET], get(out, dotted)))
    return out


def secrets_set(cfg: Config) -> dict[str, tuple[str, ...]]:
    """The secret keys this config gives a value to (a URI: only with credentials in it),
    each with the environment variables that carry it instead."""
    out = {}
    for dotted, meta in secret_fields().items():
        value, kind = get(cfg, dotted), meta[SECRET]
        if value not in (None, "") and (
            redacted_value(kind, value) != value or is_redacted(kind, value)
        ):
            out[dotted] = tuple(meta["env"])
    return out


def is_redacted(kind: str, value: Any) -> bool:
    if kind == "uri":
        return isinstance(value, str) and f"://{REDACTED}@" in value
    return value == REDACTED


def restore(cfg: Config, keys: Sequence[str] | None = None) -> Config:
    """A copy with each redacted secret (of ``keys``, default all) read back from the
    environment; ConfigError naming the key and the variable when one is not set."""
    out = copy.deepcopy(cfg)
    for dotted, meta in secret_fields().items():
        value, env = get(out, dotted), tuple(meta["env"])
        if (keys is not None and dotted not in keys) or not is_redacted(meta[SECRET], value):
            continue
        if meta[SECRET] == "uri":
            user, password = (
                (os.environ.get(env[0]), os.environ.get(env[1])) if len(env) == 2 else (None, None)
            )
            if not user:
                raise ConfigError(
                    dotted,
                    f"{value} was saved with its credentials redacted (secrets are never written)",
                    f"export {' and '.join(env)} (that server's credentials)",
                )
            userinfo = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
            value = value.replace(f"://{REDACTED}@", f"://{userinfo}@", 1)
        else:
            value = os.environ.get(env[0]) if env else None
            if not value:
                raise ConfigError(
                    dotted,
                    "was saved redacted (secrets are never written)",
                    f"export {env[0] if env else 'its value'}",
                )
        _set(out, dotted, value)
    return out


def _set(cfg: Config, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = cfg
    for part in parents:
        node = getattr(node, part)
    setattr(node, leaf, value)

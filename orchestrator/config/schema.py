"""The configuration schema: one pydantic model per section, each field documented, its range
rules beside it (``_rules``), with types, unknown keys and coercion from pydantic.

Strict mode keeps the rules a typo needs: an int refuses ``"4"`` and ``4.0``, a bool refuses
``"yes"`` and ``1``. Floats take any number, and text that reads as one (PyYAML reads
``1e-4`` without a dot as a string); never inf or nan (an infinite timeout waits forever, and
nan passes every range check because it compares false to everything). Rules that span
sections are in ``orchestrator/config/checks.py``. Every rule raises
``ConfigError(dotted key, problem, fix)``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic import field_validator as _field_validator

from orchestrator.config.errors import ConfigError, check

SECRET, REDACTED = "secret", "***"
IMAGE_DIMS = 3  # a shape is [channels, height, width]
MAX_ONE_HOT = 1024  # a category this wide is embedded (a one-hot row per request row costs it)
PORT_END = 65536  # TCP ports are 16-bit: 1 to 65535
MAX_WINDOW_MS = 1000  # a batching wait past a second costs more latency than batches save
MIN_HEADER_BYTES = 1024  # room for a request line and the headers every client sends


def secret(kind: str = "value", env: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field metadata (``json_schema_extra``) marking a secret: never written or printed as
    it is (see ``redact``), read back from ``env`` when a saved config is used again (see
    ``restore``).

    ``kind`` ``value``: the whole value is secret (``env``: the one variable holding it);
    ``uri``: only a URI's ``user:password@`` part is (``env``: the user's and the password's
    variables). A new secret key (storage credentials, say) needs only this mark."""
    return {SECRET: kind, "env": list(env)}


def _number(value: Any) -> Any:
    """Before the strict float check: text that reads as a number is one; an int beyond
    every float is infinite (and so refused as not finite)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # refused by the float check, quoting the text
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    return value


Number = Annotated[float, BeforeValidator(_number)]
"""A float setting: a number, or text that reads as one; finite."""

_STRICT = ConfigDict(
    strict=True,
    extra="forbid",
    allow_inf_nan=False,
    use_attribute_docstrings=True,  # the field docstrings are the schema's descriptions
    validate_default=False,
)


def _serve_only(info: ValidationInfo) -> bool:
    """`orchestrator serve` checks types everywhere but only the serve section's values (it
    needs no data path)."""
    return (info.context or {}).get("only") == "serve"


class Section(BaseModel):
    """A config section: strict types, no unknown keys. A section left out of a file is its
    defaults, built unvalidated (``model_construct``): defaults are valid by design, and a
    rule such as "data.path is not set" belongs to the whole config, not to the default."""

    model_config = _STRICT


class DataConfig(Section):
    """Where the Parquet data is and how it is split."""

    path: str = ""
    """Parquet file or directory: local path, ``s3://`` or ``gs://``."""
    label: str = "label"
    """Name of the label column (class labels, a regression target, or a fixed-size list of
    0/1 for multilabel or of numbers for several regression targets)."""
    features: list[str] | None = None
    """The feature columns; default: every column but the label and ``exclude``. A column
    may be numeric, boolean, text or dictionary-encoded (a category), or a fixed-size list of
    numbers (a signal, or an image with ``shape``)."""
    exclude: list[str] = Field(default_factory=list)
    """Columns that are not features (ids, timestamps, leaks of the label)."""
    categorical: list[str] = Field(default_factory=list)
    """Integer columns to encode as categories rather than numbers (text and dictionary
    columns always are)."""
    missing: Literal["error", "impute"] = "error"
    """``error``: a null or NaN in a feature stops the run before it starts, naming the
    column and count. ``impute``: numbers get the training split's median and a
    was-missing indicator, categories a missing category of their own."""
    unknown_category: Literal["unknown", "error"] = "unknown"
    """A category never seen in training (validation, test or a request): ``unknown`` maps
    it to the column's unknown slot, ``error`` refuses it, naming the column and value."""
    one_hot_max: int = 16
    """A category column with at most this many training values is one-hot encoded; one
    with more gets a learned embedding (its L2/L1 apply like any weight matrix)."""
    max_categories: int = 100_000
    """Most distinct training values a category column may have (each is a row of its
    embedding); more is refused, naming the column."""
    stratify: Literal["auto", "none", "target_quantiles"] = "auto"
    """How the in-memory splits are drawn: ``auto`` stratifies classes (classification)
    and is random otherwise; ``target_quantiles`` stratifies a regression target on five
    quantile bins; ``none`` is random. Streamed data is split by row hash."""
    test_fraction: Number = 0.2
    """Held-out test split (stratified); only the champion ever sees it."""
    val_fraction: Number = 0.15
    """Validation split, as a fraction of what remains after the test split."""
    max_train_rows: int | None = None
    """Cap the training rows, to study the small-data (overfitting) regime."""
    seed: int = 0
    """Seed of the split: the same seed gives the same rows in every worker and run."""
    loader: Literal["auto", "memory", "stream"] = "auto"
    """``memory``: each worker reads the table once and shards it by index (exact,
    stratified splits); ``stream``: Ray Data streams row batches to the workers (splits by
    row hash); ``auto``: stream above ``stream_above_mb``."""
    stream_above_mb: Number = 1024.0
    """With ``loader: auto``: tables larger than this (MB, on disk) are streamed."""
    shape: list[int] | None = None
    """Image shape of the features as [channels, height, width] (digits: [1, 8, 8]);
    needed by ``model.kind: cnn`` and by shift augmentation. Unset: tabular."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(bool(self.label), "data.label", "is empty", "name the label column")
        for key, example in (("test_fraction", "0.2"), ("val_fraction", "0.15")):
            value = getattr(self, key)
            check(0 < value < 1, f"data.{key}", f"must be in (0, 1), got {value}", f"use {example}")
        check(
            self.stream_above_mb > 0,
            "data.stream_above_mb",
            f"must be positive, got {self.stream_above_mb}",
            "use e.g. 1024",
        )
        check(
            self.max_train_rows is None or self.max_train_rows > 0,
            "data.max_train_rows",
            f"must be positive, got {self.max_train_rows}",
            "remove it or set e.g. 200",
        )
        check(
            self.shape is None
            or (len(self.shape) == IMAGE_DIMS and all(v > 0 for v in self.shape)),
            "data.shape",
            f"must be [channels, height, width] of positive sizes, got {self.shape}",
            "use e.g. [1, 8, 8]",
        )
        check(
            1 <= self.one_hot_max <= MAX_ONE_HOT,
            "data.one_hot_max",
            f"must be 1 to {MAX_ONE_HOT}, got {self.one_hot_max}",
            "use e.g. 16 (a category with more values is embedded)",
        )
        check(
            self.max_categories >= 1,
            "data.max_categories",
            f"must be at least 1, got {self.max_categories}",
            "use e.g. 100000",
        )
        named = (self.features or []) + self.exclude + self.categorical
        check(
            self.label not in named,
            "data.features",
            f"the label {self.label!r} cannot also be a feature, excluded or categorical",
            f"remove {self.label!r} from data.features, data.exclude and data.categorical",
        )
        check(
            self.features is None or len(self.features) > 0,
            "data.features",
            "is an empty list",
            "remove it to use every column but the label, or name the columns",
        )
        return self


FACTORY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
"""``package.module:function``: the import path of a model factory."""
BUILT_IN = ("mlp", "cnn")


def _plain_value(value: Any) -> bool:
    """JSON-like: what a factory argument may be (it is logged, saved and searched)."""
    if value is None or isinstance(value, str | bool | int | float):
        return not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, list):
        return all(_plain_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_value(v) for k, v in value.items())
    return False


class ModelConfig(Section):
    """The network: its kind, its capacity and its dropout."""

    kind: str = Field(
        default="mlp",
        json_schema_extra={"pattern": f"^(mlp|cnn|{FACTORY.pattern[1:-1]})$"},
    )
    """``mlp`` for tabular features, ``cnn`` for image-shaped ones (needs ``data.shape``), or
    ``package.module:function``, a factory that returns your own ``nn.Module`` (see
    docs/models.md)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of a factory (``model.kind: package.module:function``); each is
    searchable as ``model.args.NAME``. Built-in kinds take none."""
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    """Width of each hidden layer (mlp) or channels of each conv block (cnn): capacity,
    the underfit <-> overfit knob."""
    dropout: Number = 0.1
    """Dropout probability after each block, in [0, 1)."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(
            self.kind in BUILT_IN or bool(FACTORY.match(self.kind)),
            "model.kind",
            f"{self.kind!r} is neither a built-in kind (mlp, cnn) nor an import path",
            "use 'mlp', 'cnn', or package.module:function (a factory returning an nn.Module)",
        )
        check(
            self.kind not in BUILT_IN or not self.args,
            "model.args",
            f"the built-in kind {self.kind} takes no args, got {sorted(self.args)}",
            "set capacity with model.hidden, or use a factory (model.kind: package.module:fn)",
        )
        bad = [k for k, v in self.args.items() if not k.isidentifier() or not _plain_value(v)]
        check(
            not bad,
            f"model.args.{bad[0]}" if bad else "model.args",
            "must be a Python identifier holding text, a number, true/false, null or a list",
            "give factory arguments plain values",
        )
        check(
            all(h > 0 for h in self.hidden),
            "model.hidden",
            f"layer widths must be positive, got {self.hidden}",
            "use e.g. [256, 256]",
        )
        check(
            0 <= self.dropout < 1,
            "model.dropout",
            f"must be in [0, 1), got {self.dropout}",
            "use e.g. 0.1 (0 turns dropout off)",
        )
        return self


class EarlyStoppingConfig(Section):
    """Stop a run once ``sweep.metric`` stops improving."""

    patience: int = 0
    """Epochs without improvement of ``sweep.metric`` before stopping; 0 turns it off."""
    min_delta: Number = 0.0
    """An improvement smaller than this does not count."""
    restore_best: bool = True
    """End with the best epoch's weights rather than the last epoch's."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(
            self.patience >= 0,
            "train.early_stopping.patience",
            f"must be >= 0, got {self.patience}",
            "use e.g. 5 (0 turns early stopping off)",
        )
        check(
            self.min_delta >= 0,
            "train.early_stopping.min_delta",
            f"must be >= 0, got {self.min_delta}",
            "use e.g. 0.001",
        )
        return self


class TrainConfig(Section):
    """How one run trains: optimizer, regularization, precision, checkpoints."""

    epochs: int = 30
    """Epochs of a full run (the budget ASHA's rungs divide)."""
    batch_size: int = 64
    """Global batch size; each of N DDP workers gets batch_size / N."""
    lr: Number = 1e-3
    """Peak learning rate (cosine-decayed over the epochs)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """``adamw`` (decoupled weight decay) or ``sgd`` (momentum 0.9)."""
    weight_decay: Number = 1e-4
    """L2 regularization, decoupled as in AdamW."""
    l1: Number = 0.0
    """L1 penalty on weights (not biases), added to the loss."""
    seed: int = 0
    """Seed of the weights, the shuffling and the augmentation."""
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig.model_construct)
    """Stop once the watched metric stops improving."""
    augment: bool = False
    """Data augmentation: Gaussian feature noise (tabular) or random shifts (data.shape set)."""
    augment_noise: Number = 0.1
    """Noise standard deviation, as a fraction of each feature's standard deviation."""
    augment_shift: int = 1
    """Largest shift in pixels, each direction."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """``fp32``, ``bf16`` or ``fp16`` (torch.autocast; fp16 with a GradScaler)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; DDP syncs gradients only on the last one."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, more time."""
    loss: Literal["auto", "cross_entropy", "mse", "huber"] = "auto"
    """``auto``: cross-entropy for classes (softmax; one sigmoid per output for binary and
    multilabel), mean squared error for regression. ``huber`` (regression): quadratic
    within one standard deviation of the target, linear beyond (robust to outliers)."""
    checkpoint_every: int = 1
    """Save a checkpoint every N epochs (and always the last one)."""
    keep_checkpoints: int = 2
    """Checkpoints kept: the best N by ``sweep.metric`` (the latest is always kept too)."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(self.epochs > 0, "train.epochs", f"must be positive, got {self.epochs}", "use 30")
        check(
            self.batch_size > 0,
            "train.batch_size",
            f"must be positive, got {self.batch_size}",
            "use e.g. 64",
        )
        check(self.lr > 0, "train.lr", f"must be a positive number, got {self.lr}", "use 0.001")
        check(
            self.weight_decay >= 0,
            "train.weight_decay",
            f"must be >= 0, got {self.weight_decay}",
            "use e.g. 0.0001 (0 turns L2 off)",
        )
        check(
            self.l1 >= 0, "train.l1", f"must be >= 0, got {self.l1}", "use e.g. 0.00001 (0 = off)"
        )
        check(
            self.augment_noise >= 0,
            "train.augment_noise",
            f"must be >= 0, got {self.augment_noise}",
            "use e.g. 0.1",
        )
        check(
            self.augment_shift >= 0,
            "train.augment_shift",
            f"must be >= 0, got {self.augment_shift}",
            "use e.g. 1",
        )
        for key, example in (("grad_accum_steps", 4), ("checkpoint_every", 1)):
            value = getattr(self, key)
            check(value >= 1, f"train.{key}", f"must be at least 1, got {value}", f"use {example}")
        check(
            self.keep_checkpoints >= 1,
            "train.keep_checkpoints",
            f"must be at least 1, got {self.keep_checkpoints}",
            "use e.g. 2",
        )
        return self


class ScalingConfig(Section):
    """The resources of one trial: DDP workers, CPUs, GPUs, placement."""

    num_workers: int = 1
    """DDP workers per trial (a Ray Train TorchTrainer worker group)."""
    use_gpu: bool = False
    """One GPU per worker and NCCL; gloo on CPU otherwise."""
    cpus_per_worker: Number = 1.0
    """CPUs reserved per worker; fractions let small trials share a core."""
    data_cpus: Number = 1.0
    """CPUs a streamed trial leaves to Ray Data's read and map tasks: a whole number, as Ray
    Data only takes whole CPUs of what training leaves on a node."""
    max_failures: int = 0
    """Restarts of a worker group after a worker dies; each resumes from the last checkpoint."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"] = "PACK"
    """Where a trial's workers go: ``PACK`` (as few nodes as possible), ``SPREAD`` (across
    nodes where it can), ``STRICT_SPREAD`` (each worker on its own node; a node lost costs
    one worker), ``STRICT_PACK`` (all on one node)."""
    fast_path: bool = True
    """Run a single-worker trial's loop inside the Tune trial itself (about 1 s to start)
    instead of through a TorchTrainer (15-20 s)."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(
            self.max_failures >= -1,
            "scaling.max_failures",
            f"must be >= -1 (-1: retry forever), got {self.max_failures}",
            "use e.g. 2",
        )
        check(
            self.num_workers >= 1,
            "scaling.num_workers",
            f"must be at least 1, got {self.num_workers}",
            "use e.g. 2",
        )
        for key in ("data_cpus", "cpus_per_worker"):
            value = getattr(self, key)
            check(value > 0, f"scaling.{key}", f"must be positive, got {value}", "use e.g. 1")
        # Ray Data shares out what a Train run leaves on each node in whole CPUs (its
        # autoscaling coordinator divides with //): 0.4 CPU left is none, and a streamed
        # 2-worker trial then waited for its first block forever.
        check(
            float(self.data_cpus).is_integer(),
            "scaling.data_cpus",
            f"must be a whole number of CPUs, got {self.data_cpus}: Ray Data only takes "
            "whole CPUs of what training leaves on a node",
            f"use {max(1, round(self.data_cpus))}",
        )
        return self


METRICS = (
    "val_loss",
    "val_accuracy",
    "val_f1",
    "val_rmse",
    "val_mae",
    "val_r2",
    "val_macro_f1",
    "val_subset_accuracy",
    "train_loss",
    "train_accuracy",
)
"""What trials can be ranked by (each reported every epoch by the tasks that have it:
accuracy and F1 for classes, RMSE, MAE and R² for regression, micro F1 (``f1``), macro F1
and subset accuracy for multilabel)."""

SPACE_TYPES = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "randint": ("low", "high"),
    "choice": ("values",),
    "grid": ("values",),
}
"""Each kind of search dimension and the fields it takes."""


_DIMENSION: Any = {  # what an editor checks a dimension against (the rules are in _dimension)
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "type": {"enum": ["uniform", "loguniform", "randint"]},
                "low": {"type": "number"},
                "high": {"type": "number"},
            },
            "required": ["type", "low", "high"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "type": {"enum": ["choice", "grid"]},
                "values": {"type": "array", "minItems": 1},
            },
            "required": ["type", "values"],
            "additionalProperties": False,
        },
    ]
}


def _default_space() -> dict[str, Any]:
    return {
        "train.l1": {"type": "loguniform", "low": 1e-8, "high": 1e-3},
        "train.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-1},
        "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
    }


def _storage_default() -> str:
    return os.environ.get("ORCHESTRATOR_STORAGE_PATH", "results")


class SweepConfig(Section):
    """The search: how many trials, ranked how, sampled and stopped by what."""

    num_samples: int = 8
    """Trials to sample (with ``searcher: grid``: repeats of the whole grid)."""
    metric: Literal[
        "val_loss",
        "val_accuracy",
        "val_f1",
        "val_rmse",
        "val_mae",
        "val_r2",
        "val_macro_f1",
        "val_subset_accuracy",
        "train_loss",
        "train_accuracy",
    ] = "val_loss"
    """What trials are ranked by (and early stopping watches)."""
    mode: Literal["min", "max"] = "min"
    """``min`` for losses, ``max`` for accuracy and F1."""
    objective: Literal["metric", "gap_penalized"] = "metric"
    """``metric``: rank by ``sweep.metric``; ``gap_penalized``: rank by
    val_loss + gap_penalty * max(0, val_loss - train_loss), preferring configurations that
    generalize (needs ``sweep.metric: val_loss``)."""
    gap_penalty: Number = 1.0
    """With ``objective: gap_penalized``: the weight of the generalization gap."""
    searcher: Literal["random", "grid", "optuna"] = "random"
    """``random`` (and grids), ``grid`` (every combination of ``grid``/``choice`` values)
    or ``optuna`` (TPE, seeded)."""
    seed: int = 0
    """Seed of the searcher: the same seed samples the same configurations."""
    scheduler: Literal["asha", "hyperband", "median", "fifo", "pbt"] = "asha"
    """``asha``, ``hyperband`` (asynchronous: ASHA over ``brackets`` brackets), ``median``
    (median stopping rule), ``fifo`` (no early stop) or ``pbt`` (population based training,
    which clones trials through Tune checkpoints, so it needs single-worker trials)."""
    asha_mode: Literal["auto", "promote", "stop"] = "auto"
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
    """ASHA: 1 in this many trials goes on at each rung."""
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
    """With ``confirm_seeds``: how many of the best configurations are rerun."""
    refit: bool = True
    """Retrain the best configuration on train + validation before the test split scores it."""
    stall_timeout: Number = 1800.0
    """Seconds a running trial may go without reporting (its start-up and one epoch) before
    the sweep stops with an error naming it, instead of waiting forever."""
    storage_path: str = Field(default_factory=_storage_default)
    """Where the sweep keeps trial checkpoints, its state, ledger and tracking journal: a
    folder (absolute, or relative to the working directory), or object storage (``s3://``,
    ``gs://``, any URI pyarrow has a filesystem for); default ``$ORCHESTRATOR_STORAGE_PATH``,
    else ``results``. On a multi-node cluster every node must reach it: object storage, or a
    folder every node mounts at the same path. Write access to it is code execution on the
    driver (a resumed sweep unpickles Tune's state from it): guard it as the cluster."""
    storage_filesystem: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra=secret(
            "options", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        ),
    )
    """Options of the storage URI's pyarrow filesystem (``S3FileSystem``, ``GcsFileSystem``),
    e.g. ``endpoint_override``, ``region``, ``scheme``; by default the standard environment
    (``AWS_*``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, an instance role)
    decides. ``access_key``, ``secret_key`` and ``session_token`` are secret: never written
    or logged, exported to the driver's environment (and so to the workers of a local Ray)
    as ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN``, and read
    back from those on resume. On a cluster each node needs them in its own environment."""
    space: dict[str, Any] = Field(
        default_factory=_default_space, json_schema_extra={"additionalProperties": _DIMENSION}
    )
    """Dotted key -> ``{type: uniform|loguniform|randint|choice|grid, ...}``. The default is
    the regularization axis: L1, L2 (weight decay) and dropout."""

    @_field_validator("space", mode="after")
    @classmethod
    def _dimensions(cls, space: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Each dimension's own shape, normalized (randint ends as ints, the others as
        floats) into a new mapping; what needs the rest of the config is in checks.py."""
        if _serve_only(info):
            return space
        return {dotted: _dimension(dotted, spec) for dotted, spec in space.items()}

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(
            not self.storage_filesystem or "://" in self.storage_path,
            "sweep.storage_filesystem",
            f"filesystem options are for object storage; {self.storage_path!r} is a folder",
            "drop sweep.storage_filesystem, or set sweep.storage_path to an s3:// or gs:// URI",
        )
        scheme = self.storage_path.split("://", 1)[0] if "://" in self.storage_path else ""
        check(
            not self.storage_filesystem or scheme in ("s3", "gs", "gcs"),
            "sweep.storage_filesystem",
            f"options are supported for s3:// and gs:// storage, not {scheme}://",
            "drop sweep.storage_filesystem and configure that filesystem from the environment",
        )
        for key, value in self.storage_filesystem.items():
            check(
                isinstance(value, (str, int, float, bool)),
                f"sweep.storage_filesystem.{key}",
                f"expected a string, number or boolean, got {type(value).__name__}",
                "give each filesystem option as a plain value",
            )
        check(
            self.objective != "gap_penalized" or (self.metric, self.mode) == ("val_loss", "min"),
            "sweep.objective",
            f"gap_penalized ranks by val_loss, but sweep.metric is {self.metric} ({self.mode})",
            "set sweep.metric: val_loss and sweep.mode: min",
        )
        check(
            self.asha_mode != "promote" or self.scheduler == "asha",
            "sweep.asha_mode",
            f"promote is a mode of scheduler asha, not {self.scheduler}",
            "set sweep.scheduler: asha, or drop sweep.asha_mode",
        )
        minimums = {
            "num_samples": (1, "8"),
            "brackets": (1, "3"),
            "perturbation_interval": (1, "4"),
            "confirm_top": (1, "3"),
            "grace_period": (1, "5"),
            "reduction_factor": (2, "3"),
        }
        for key, (low, example) in minimums.items():
            value = getattr(self, key)
            check(
                value >= low,
                f"sweep.{key}",
                f"must be at least {low}, got {value}",
                f"use {example}",
            )
        check(
            self.gap_penalty >= 0,
            "sweep.gap_penalty",
            f"must be >= 0, got {self.gap_penalty}",
            "use e.g. 1.0",
        )
        check(
            self.max_failures >= -1,
            "sweep.max_failures",
            f"must be >= -1 (-1: retry forever), got {self.max_failures}",
            "use e.g. 1",
        )
        check(
            self.stall_timeout > 0,
            "sweep.stall_timeout",
            f"must be > 0 seconds, got {self.stall_timeout}",
            "use e.g. 1800 (above the slowest epoch, start-up included)",
        )
        check(
            self.confirm_seeds >= 0,
            "sweep.confirm_seeds",
            f"must be >= 0, got {self.confirm_seeds}",
            "use e.g. 3 (0 turns it off)",
        )
        check(
            self.confirm_seeds != 1,
            "sweep.confirm_seeds",
            "one seed has no spread to compare",
            "use 0 (off) or at least 2",
        )
        check(
            self.max_concurrent is None or self.max_concurrent >= 1,
            "sweep.max_concurrent",
            f"must be at least 1, got {self.max_concurrent}",
            "remove it to derive it from the cluster",
        )
        return self


def _dimension(dotted: str, spec: Any) -> dict[str, Any]:
    """One search dimension checked on its own, as a new normalized mapping."""
    key = f"sweep.space.{dotted}"
    check(
        isinstance(spec, dict) and spec.get("type") in SPACE_TYPES,
        key,
        f"needs a 'type' among {', '.join(SPACE_TYPES)}, got {spec!r}",
        "write e.g. {type: loguniform, low: 1e-6, high: 1e-2}",
    )
    kind = spec["type"]
    needed = SPACE_TYPES[kind]
    extra = set(spec) - set(needed) - {"type"}
    check(
        not extra,
        key,
        f"unknown field(s) {sorted(extra)} for {kind}",
        f"{kind} takes: {', '.join(needed)}",
    )
    for name in needed:
        check(name in spec, f"{key}.{name}", "is missing", f"{kind} needs {', '.join(needed)}")
    if kind in ("choice", "grid"):
        values = spec["values"]
        check(
            isinstance(values, list) and len(values) > 0,
            f"{key}.values",
            f"must be a non-empty list, got {values!r}",
            "write values: [a, b, c]",
        )
        return {"type": kind, "values": list(values)}
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            key, f"low and high must be numbers, got {spec!r}", "write e.g. low: 0.0, high: 0.5"
        ) from None
    check(
        math.isfinite(low) and math.isfinite(high),
        key,
        f"low and high must be finite, got {low} and {high}",
        "write e.g. low: 1, high: 8",
    )
    check(low < high, key, f"low ({low}) must be below high ({high})", "swap or widen the range")
    check(
        kind != "loguniform" or low > 0,
        f"{key}.low",
        f"loguniform needs low > 0, got {low}",
        "use e.g. 1e-6, or type: uniform",
    )
    if kind == "randint":
        return {"type": kind, "low": int(low), "high": int(high)}
    return {"type": kind, "low": low, "high": high}


class TrackingConfig(Section):
    """Where runs, metrics and models are logged (MLflow), and the champion's name."""

    uri: str | None = Field(
        default=None,
        json_schema_extra=secret("uri", ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")),
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
    system_metrics_interval: Number = 10.0
    """Seconds between system-metrics samples."""
    drain_timeout: Number = 60.0
    """If the tracking server went away mid-sweep: seconds the sweep waits for it at the end
    before keeping the unsent writes (and the champion) for `orchestrator tracking replay`."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(
            self.system_metrics_interval > 0,
            "tracking.system_metrics_interval",
            f"must be > 0 seconds, got {self.system_metrics_interval}",
            "use e.g. 10",
        )
        check(
            self.drain_timeout >= 0,
            "tracking.drain_timeout",
            f"must be >= 0 seconds, got {self.drain_timeout}",
            "use e.g. 60",
        )
        check(
            bool(self.register_as.strip()),
            "tracking.register_as",
            "is empty",
            "name the registered model, e.g. digits-mlp",
        )
        return self


class DiagnosisConfig(Section):
    """Thresholds of the bias/variance labels (see orchestrator/core/diagnosis.py). Losses are
    fractions of the baseline's loss (the trivial predictor: class frequencies, the training
    mean of a regression target, label frequencies); both curves are read smoothed (median
    of three epochs). Tuned on tests/curves/corpus.json (`python -m jobs.curves score` shows
    the confusion matrix for any values)."""

    underfit_loss_ratio: Number = 0.15
    """High bias: the lowest training loss of the whole run is above this x baseline (never
    when training accuracy reached 100%)."""
    gap_ratio: Number = 0.15
    """High variance: validation minus training loss at the end is above this x baseline."""
    rise_ratio: Number = 0.15
    """High variance: validation loss ended more than this x baseline above its minimum,
    wherever in the run the minimum fell."""
    accuracy_gap: Number = 0.1
    """High variance: training minus validation accuracy at the end is above this, while the
    loss gap is above half of gap_ratio."""
    min_epochs: int = 5
    """undetermined: a run with fewer epochs is too short to tell."""
    falling_ratio: Number = 0.03
    """undetermined: a run the scheduler stopped (pruned) whose validation loss fell by more
    than this x baseline over the last quarter of its epochs (at least its last 6, read as
    the median slope) had not settled yet."""
    diverge_ratio: Number = 3.0
    """diverged: training loss ended above this x baseline (or above the baseline and this x
    its own minimum), or validation loss ended above this x baseline while training loss
    stayed above half of it. A NaN or infinite loss always is."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        for key in ("underfit_loss_ratio", "gap_ratio", "rise_ratio", "falling_ratio"):
            value = getattr(self, key)
            check(
                value > 0,
                f"diagnosis.{key}",
                f"must be > 0, got {value}",
                "use the default, or e.g. 0.1",
            )
        check(
            0 < self.accuracy_gap <= 1,
            "diagnosis.accuracy_gap",
            f"must be in (0, 1] (a difference of accuracies), got {self.accuracy_gap}",
            "use e.g. 0.1",
        )
        check(
            self.min_epochs >= 1,
            "diagnosis.min_epochs",
            f"must be at least 1, got {self.min_epochs}",
            "use e.g. 5",
        )
        check(
            self.diverge_ratio > 1,
            "diagnosis.diverge_ratio",
            f"must be above 1 (the baseline itself), got {self.diverge_ratio}",
            "use e.g. 3",
        )
        return self


class ServeConfig(Section):
    """The model server: address, batching, auth, limits, and Ray Serve replicas."""

    host: str = "127.0.0.1"
    """Address to listen on (``--host`` is short for it); beyond loopback an API key is
    required unless ``allow_unauthenticated``."""
    port: int = 8000
    """TCP port to listen on (``--port`` is short for it)."""
    max_batch: int = 1024
    """Most rows one /predict request may carry."""
    window_ms: Number = 2.0
    """Micro-batching: how long a request may wait for others to share its forward pass."""
    api_key: str | None = Field(
        default=None, json_schema_extra=secret("value", ("ORCHESTRATOR_API_KEY",))
    )
    """Required (header X-API-Key, or Authorization: Bearer) on everything but /health;
    default $ORCHESTRATOR_API_KEY; unset: open. Secret: saved as ``***``."""
    poll_s: Number = 30.0
    """Seconds between checks that the served alias still names the same version (0: only
    on POST /reload)."""
    replicas: int = 2
    """With `serve --ray`: Ray Serve replicas of the model server (each loads the model);
    ``--replicas`` is short for it."""
    replica_cpus: Number = 1.0
    """With `serve --ray`: CPUs Ray reserves for each replica."""
    replica_gpus: Number = 0.0
    """With `serve --ray`: GPUs for each replica (e.g. 1, or 0.5 to pack two on one GPU)."""
    max_model_mb: Number = 1024.0
    """Largest ``weights.pt`` a model version may have; a bigger one is refused unread."""
    factories: list[str] = Field(default_factory=list)
    """Model factories (``package.module:function``) this server may import to rebuild a
    model: the registry's spec names the import path, so only those listed here are ever
    imported (from this server's own Python environment; nothing is downloaded). The
    built-in kinds are always allowed."""
    allow_unauthenticated: bool = False
    """Serve without an API key on an address beyond loopback (refused otherwise);
    ``--allow-unauthenticated`` is short for it."""
    max_header_bytes: int = 65536
    """Request line and headers together; a longer head is answered 431."""
    header_timeout_s: Number = 10.0
    """Seconds a client has to send a request's head (408 and closed after)."""
    body_timeout_s: Number = 30.0
    """Seconds a client has, after the head, to send the body (408 and closed after)."""
    max_connections: int = 1024
    """Connections (or requests in flight) at once; beyond it, 503."""
    keepalive_s: Number = 5.0
    """An idle keep-alive connection is closed after this many seconds."""

    @model_validator(mode="after")
    def _rules(self) -> Self:
        check(
            1 <= self.max_batch,
            "serve.max_batch",
            f"must be at least 1, got {self.max_batch}",
            "use e.g. 1024",
        )
        check(
            0 < self.port < PORT_END,
            "serve.port",
            f"must be a TCP port, got {self.port}",
            "use 8000",
        )
        check(
            0 <= self.window_ms <= MAX_WINDOW_MS,
            "serve.window_ms",
            f"must be in [0, 1000] ms, got {self.window_ms}",
            "use e.g. 2",
        )
        check(self.poll_s >= 0, "serve.poll_s", f"must be >= 0, got {self.poll_s}", "use e.g. 30")
        check(
            self.replicas >= 1,
            "serve.replicas",
            f"must be at least 1, got {self.replicas}",
            "use e.g. 2",
        )
        check(
            self.replica_cpus > 0,
            "serve.replica_cpus",
            f"must be > 0, got {self.replica_cpus}",
            "use e.g. 1 (or 0.5 to pack two replicas on a core)",
        )
        check(
            self.replica_gpus >= 0,
            "serve.replica_gpus",
            f"must be >= 0, got {self.replica_gpus}",
            "use 0 on CPU nodes, e.g. 1 on GPU nodes",
        )
        for key in ("max_model_mb", "header_timeout_s", "body_timeout_s", "keepalive_s"):
            value = getattr(self, key)
            check(
                value > 0,
                f"serve.{key}",
                f"must be a positive number, got {value}",
                "use the default",
            )
        check(
            self.max_header_bytes >= MIN_HEADER_BYTES,
            "serve.max_header_bytes",
            f"must be at least 1024, got {self.max_header_bytes}",
            "use e.g. 65536",
        )
        check(
            self.max_connections >= 1,
            "serve.max_connections",
            f"must be at least 1, got {self.max_connections}",
            "use e.g. 1024",
        )
        return self


MIN_ROUNDS = 3  # the autopilot's stop rule compares the last two rounds with the one before


class AutopilotConfig(Section):
    """`orchestrator autopilot`: rounds of search, each steered by the diagnosis of the one
    before (see docs/autopilot.md). The budget covers everything: the rounds, the
    confirmation and the data curve."""

    budget_trials: int = 60
    """Trials in all (short form: --budget-trials). The confirmation (confirm_top x
    confirm_seeds, at least 2 seeds) and the data curve's 12 runs come off the top; round 1
    gets 40% of the rest, each later round half that, at least 3 rounds of 4. The
    champion's one refit (sweep.refit) is not counted."""
    budget_hours: Number | None = None
    """Wall-clock hours for the search (short form: --budget-hours); None: no time limit.
    Round 1 may take 40% of it; a later round what is left less an estimate of the
    confirmation's time, and Tune ends a round whose time is up; a round with no time left
    is not started. The confirmation, refit and data curve are estimated, not cut off."""
    min_improvement: Number = 0.01
    """Stop when the best validation loss improved by less than this (relative) in each of
    the last two rounds."""
    max_rounds: int = 6
    """Rounds at most (at least 3: the stop rule compares the last two with the one before)."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(
            self.budget_trials >= 1,
            "autopilot.budget_trials",
            f"must be at least 1, got {self.budget_trials}",
            "use e.g. 60",
        )
        check(
            self.budget_hours is None or self.budget_hours > 0,
            "autopilot.budget_hours",
            f"must be above 0 (or null: no time limit), got {self.budget_hours}",
            "use e.g. 2.5",
        )
        check(
            0 <= self.min_improvement < 1,
            "autopilot.min_improvement",
            f"must be in [0, 1) (a relative improvement), got {self.min_improvement}",
            "use e.g. 0.01 (1%)",
        )
        check(
            self.max_rounds >= MIN_ROUNDS,
            "autopilot.max_rounds",
            f"must be at least 3 (the stop rule reads the last two rounds), got {self.max_rounds}",
            "use e.g. 6",
        )
        return self


class Config(Section):
    """The whole configuration: one YAML file, or defaults and ``key=value`` overrides."""

    model_config = ConfigDict(**_STRICT, title="orchestrator config")

    experiment: str = "default"
    """MLflow experiment the sweep's runs go in (and the name `diagnose` and `report` take)."""
    task: Literal["auto", "multiclass", "binary", "multilabel", "regression"] = "auto"
    """What the label is: ``auto`` decides from the label column (integers, text, booleans:
    classes, binary for two; floats: regression, unless at most 20 distinct whole numbers;
    a fixed-size list of 0/1: multilabel) and says what it decided."""
    data: DataConfig = Field(default_factory=DataConfig.model_construct)
    """The data: a Parquet table and its splits."""
    model: ModelConfig = Field(default_factory=ModelConfig.model_construct)
    """The network."""
    train: TrainConfig = Field(default_factory=TrainConfig.model_construct)
    """How one run trains."""
    scaling: ScalingConfig = Field(default_factory=ScalingConfig.model_construct)
    """The resources of one trial."""
    sweep: SweepConfig = Field(default_factory=SweepConfig.model_construct)
    """The search."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig.model_construct)
    """MLflow."""
    diagnosis: DiagnosisConfig = Field(default_factory=DiagnosisConfig.model_construct)
    """Thresholds of the bias/variance labels."""
    serve: ServeConfig = Field(default_factory=ServeConfig.model_construct)
    """The model server."""
    autopilot: AutopilotConfig = Field(default_factory=AutopilotConfig.model_construct)
    """`orchestrator autopilot`: its budget and stop rule."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        if _serve_only(info):
            return self
        check(bool(self.experiment.strip()), "experiment", "is empty", "name the experiment")
        check(  # here, not in DataConfig: a file without a data section must say it too
            bool(self.data.path),
            "data.path",
            "is not set",
            "point it at a Parquet file, e.g. data/digits.parquet (make data exports one)",
        )
        return self


def get(cfg: BaseModel, dotted: str) -> Any:
    """The value at a dotted key (``KeyError`` when the schema has no such key). Under
    ``model.args`` any name is a key (a factory's arguments are its own; an unset one
    reads as None, and building the model says whether the factory takes it)."""
    node: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and parts[:i] == ["model", "args"] and i == len(parts) - 1:
            return node.get(part)
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise KeyError(dotted)
        node = getattr(node, part)
    return node

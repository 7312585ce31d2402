"""Model construction: plain PyTorch. A network is the orchestrator's ``Preprocess`` (the
fitted encoders: imputation, was-missing indicators, scaling, one-hot or embeddings) in
front of a body: the built-in ``mlp`` or ``cnn``, or the module a user's factory returns
(``model.kind: package.module:function``, see docs/models.md)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from orchestrator.config import Config, ConfigError, ModelConfig
from orchestrator.core import features
from orchestrator.core.features import Encoding
from orchestrator.core.task import Task

BINARY = 2  # two classes: one logit and a sigmoid (BCE), not a softmax
CONSTANT_STD = 1e-6  # a spread this small is a constant column: left unscaled, not divided by ~0
POOL_FROM = 4  # an image is halved by max pooling only while at least this wide (never below 2)


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics, stored as buffers.

    It lives inside the model so a checkpoint, the logged MLflow model and the server
    all see raw features and scale them the same way.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        # Constant columns (digits' blank corner pixels) would divide by zero.
        self.register_buffer(
            "std", torch.as_tensor(np.where(std > CONSTANT_STD, std, 1.0), dtype=torch.float32)
        )

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features scaled with the training split's statistics."""
        return (x - self.mean) / self.std


def num_outputs(num_classes: int) -> int:
    """Binary: one logit (sigmoid + BCE); multi-class: one logit per class (softmax + CE)."""
    return 1 if num_classes == BINARY else num_classes


class CheckpointedBlock(nn.Sequential):
    """A block under activation checkpointing: its activations are recomputed in the backward
    pass instead of kept (less memory, about one more forward of time). Same parameter
    names as a plain block, so checkpoints load either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output; while training with gradients, its activations are not kept."""
        if self.training and torch.is_grad_enabled():
            out: torch.Tensor = checkpoint(super().forward, x, use_reentrant=False)
            return out
        return super().forward(x)


def feature_stats(
    kind: str,
    col_mean: np.ndarray,
    col_std: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The stem's scaling from the training split's per-column moments. A cnn gets one scale
    for every pixel, so a shifted image means the same; an mlp one per feature."""
    if kind != "cnn":
        return col_mean, col_std
    mean = float(np.mean(col_mean))
    std = float(np.sqrt(max(np.mean(col_std**2 + col_mean**2) - mean**2, 0.0)))
    return np.full_like(col_mean, mean), np.full_like(col_std, std)


def build(
    cfg: ModelConfig,
    mean: np.ndarray,
    std: np.ndarray,
    num_classes: int,
    shape: list[int] | None = None,
    grad_checkpointing: bool = False,
) -> nn.Sequential:
    """Standardize, then the blocks (each optionally checkpointed), then the head.

    mlp: a block is [Linear, ReLU, Dropout]. cnn: the flat features are viewed as
    ``shape`` (C, H, W); a block is [Conv 3x3, ReLU, MaxPool 2 while the image is at least
    4 wide, Dropout]; the head is Flatten + Linear.
    """

    def block(layers: list[nn.Module]) -> nn.Sequential:
        return CheckpointedBlock(*layers) if grad_checkpointing else nn.Sequential(*layers)

    stem: list[nn.Module] = [Standardize(mean, std)]
    blocks: list[nn.Module] = []
    if cfg.kind == "cnn":
        assert shape is not None, "data.shape is validated for cnn"
        channels, height, width = shape
        stem.append(nn.Unflatten(1, (channels, height, width)))
        for h in cfg.hidden:
            layers: list[nn.Module] = [nn.Conv2d(channels, h, 3, padding=1), nn.ReLU()]
            if min(height, width) >= POOL_FROM:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            blocks.append(block(layers))
            channels = h
        head: list[nn.Module] = [
            nn.Flatten(),
            nn.Linear(channels * height * width, num_outputs(num_classes)),
        ]
    else:
        width = len(mean)
        for h in cfg.hidden:
            layers = [nn.Linear(width, h), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            blocks.append(block(layers))
            width = h
        head = [nn.Linear(width, num_outputs(num_classes))]
    return nn.Sequential(*stem, *blocks, *head)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities, (rows, classes), for one-logit binary or multi-class heads."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


class Outputs(nn.Module):
    """The served form of a trained network: raw encoded rows in, what fits the task out
    (class probabilities, per-label probabilities, or targets in their own units)."""

    def __init__(self, net: nn.Module, task: Task):
        super().__init__()
        self.net = net
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The task's outputs for raw encoded rows."""
        from orchestrator.core import task as task_mod

        return task_mod.outputs(self.task, self.net(x))


class WithProbabilities(nn.Module):
    """The served form of a trained model: raw features in, class probabilities out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, (rows, classes), for raw features."""
        return probabilities(self.net(x))


# ---------------------------------------------------------------- the user's columns and model


class Preprocess(nn.Module):
    """The fitted encoders as the network's first layer: raw encoded rows in (numbers with
    NaN where missing, category codes), the features the body learns from out: numbers
    imputed with the training median (``missing: impute``), scaled by the training split's
    moments, followed by a was-missing indicator per column that had missing values in
    training, then each category one-hot (at most ``one_hot_max`` values) or embedded.

    All-number data without imputation keeps ``Standardize``'s two buffers (``mean``,
    ``std``) and nothing else, so checkpoints and models of earlier versions load."""

    mean: torch.Tensor
    std: torch.Tensor
    median: torch.Tensor
    num_idx: torch.Tensor
    ind_idx: torch.Tensor

    def __init__(self, enc: Encoding, one_scale: bool = False):
        super().__init__()
        self.encoding = enc
        num_pos: list[int] = []
        median: list[float] = []
        mean: list[float] = []
        std: list[float] = []
        indicators: list[int] = []
        self.categories: list[tuple[int, int, int]] = []  # (raw position, codes, embed index)
        embeds: list[nn.Module] = []
        pos = 0
        for c in enc.columns:
            if c.kind == features.CATEGORY:
                dim = 0 if c.cardinality - features.FIRST_VALUE <= enc.one_hot_max else 1
                self.categories.append((pos, c.cardinality, len(embeds) if dim else -1))
                if dim:
                    embeds.append(nn.Embedding(c.cardinality, features.embed_dim(c.cardinality)))
            else:
                if c.indicator:
                    indicators.extend(range(len(num_pos), len(num_pos) + c.width))
                num_pos.extend(range(pos, pos + c.width))
                median += c.median
                mean += c.mean
                std += c.std
            pos += c.width
        m, s = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if one_scale and len(m):  # an image: one scale for every pixel (see feature_stats)
            m, s = feature_stats("cnn", m, s)
        self.register_buffer("mean", torch.as_tensor(m, dtype=torch.float32))
        self.register_buffer(
            "std", torch.as_tensor(np.where(s > CONSTANT_STD, s, 1.0), dtype=torch.float32)
        )
        if enc.missing == "impute":
            self.register_buffer("median", torch.as_tensor(median, dtype=torch.float32))
        # where things are: fixed by the encoding (saved as JSON), not weights
        self.register_buffer("num_idx", torch.as_tensor(num_pos, dtype=torch.int64), False)
        self.register_buffer("ind_idx", torch.as_tensor(indicators, dtype=torch.int64), False)
        self.all_numbers = num_pos == list(range(enc.width))
        self.embed = nn.ModuleList(embeds) if embeds else None
        self.impute = enc.missing == "impute"
        self.out_width = (
            len(num_pos)
            + len(indicators)
            + sum(
                n if e < 0 else features.embed_dim(n)  # one-hot, or the embedding's width
                for _, n, e in self.categories
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw encoded rows in, the body's features out."""
        nums = x if self.all_numbers else x[:, self.num_idx]
        parts = []
        if self.impute:
            missing = torch.isnan(nums)
            nums = torch.where(missing, self.median, nums)
            parts.append((nums - self.mean) / self.std)
            if len(self.ind_idx):
                parts.append(missing[:, self.ind_idx].to(x.dtype))
        else:
            parts.append((nums - self.mean) / self.std)
        for pos, n, e in self.categories:
            codes = x[:, pos].to(torch.int64).clamp(0, n - 1)
            if e < 0:
                parts.append(F.one_hot(codes, n).to(x.dtype))
            else:
                assert self.embed is not None
                parts.append(self.embed[e](codes).to(x.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def noise_scale(self) -> torch.Tensor:
        """Per raw column: the spread augmentation noise is relative to (a number's standard
        deviation; 0 for a category code, which noise must not move)."""
        out = torch.zeros(self.encoding.width)
        out[self.num_idx.cpu()] = self.std.cpu()  # the module may sit on a GPU already
        return out


@dataclass(frozen=True)
class Problem:
    """What a model factory is told about the problem (see docs/models.md)."""

    inputs: int
    """Features per row the module takes: the orchestrator's preprocessing output (scaled
    numbers, was-missing indicators, one-hot and embedded categories)."""
    outputs: int
    """Width of the module's output: logits (one for binary, one per class or label) or
    one value per regression target."""
    task: str
    """``multiclass``, ``binary``, ``multilabel`` or ``regression``."""
    shape: tuple[int, ...] | None
    """``data.shape`` ([channels, height, width]) when the inputs form an image, else None."""
    dropout: float
    """``model.dropout``, the rate the sweep chose for this trial."""
    grad_checkpointing: bool
    """``train.grad_checkpointing``: recompute activations in the backward pass if it can."""


def factory(kind: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names, imported from this Python
    environment; a ``ConfigError`` on ``model.kind`` says what is wrong."""
    module_name, _, attr = kind.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure to import is the user's to fix
        raise ConfigError(
            "model.kind",
            f"cannot import {module_name!r}: {type(e).__name__}: {e}",
            "install the package or run from the folder that holds it (a cluster gets it "
            "with `ray job submit --working-dir .`)",
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(
            "model.kind",
            f"{module_name!r} has no function {attr!r}",
            f"define {attr}(problem, **args) in {module_name}, returning an nn.Module",
        )
    return fn


def factory_source(kind: str) -> str | None:
    """The file a factory is defined in (its source, kept with the champion so the run can
    be reproduced); None for the built-in kinds or code without a file."""
    if kind in ("mlp", "cnn"):
        return None
    try:
        return inspect.getsourcefile(factory(kind))
    except TypeError:  # a built-in or C function
        return None


def declared_space(kind: str) -> dict[str, Any]:
    """The ranges a factory declares worth searching for its own arguments (a
    ``search_space`` mapping beside it), as ``sweep.space`` entries (``model.args.NAME``);
    empty for the built-in kinds and for a factory that declares none."""
    if kind in ("mlp", "cnn"):
        return {}
    declared = getattr(factory(kind), "search_space", None) or {}
    if not isinstance(declared, dict):
        raise ConfigError(
            "model.kind",
            f"{kind}.search_space is {type(declared).__name__}, not a mapping",
            "declare it as {argument: {type: ..., ...}}",
        )
    return {f"model.args.{name}": spec for name, spec in declared.items()}


def body(cfg: Config, problem: Problem) -> list[nn.Module]:
    """The layers after ``Preprocess``: the built-in kind's blocks and head, or the one
    module the factory returns (``ConfigError`` naming ``model.kind`` or the argument when
    it raises or returns something else)."""
    m = cfg.model
    if m.kind in ("mlp", "cnn"):
        return _built_in(m, problem)
    fn = factory(m.kind)
    try:
        out = fn(problem, **m.args)
    except TypeError as e:
        raise ConfigError(_argument_key(e, m.args), f"{m.kind}: {e}", _signature_fix(fn)) from None
    except Exception as e:  # noqa: BLE001 - the factory's own error, shown as it is
        raise ConfigError(
            _argument_key(e, m.args), f"{m.kind} raised {type(e).__name__}: {e}", "fix the value"
        ) from None
    if not isinstance(out, nn.Module):
        raise ConfigError(
            "model.kind",
            f"{m.kind} returned {type(out).__name__}, not an nn.Module",
            "return the network (a torch.nn.Module)",
        )
    return [out]


def _argument_key(e: Exception, args: dict[str, Any]) -> str:
    """``model.args.NAME`` when the factory's error names one of its arguments."""
    text = str(e)
    for name in args:
        if f"'{name}'" in text or f" {name} " in f" {text} " or text.startswith(f"{name}"):
            return f"model.args.{name}"
    missing = text.split("argument:")[-1].strip(" '\"") if "missing" in text else ""
    return f"model.args.{missing}" if missing.isidentifier() else "model.args"


def _signature_fix(fn: Callable[..., Any]) -> str:
    try:
        return f"the factory's signature is {fn.__name__}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return "pass the arguments the factory takes in model.args"


def _built_in(m: ModelConfig, problem: Problem) -> list[nn.Module]:
    def block(layers: list[nn.Module]) -> nn.Sequential:
        return CheckpointedBlock(*layers) if problem.grad_checkpointing else nn.Sequential(*layers)

    layers: list[nn.Module] = []
    if m.kind == "cnn":
        assert problem.shape is not None, "checked by image_check"
        channels, height, width = problem.shape
        layers.append(nn.Unflatten(1, (channels, height, width)))
        for h in m.hidden:
            conv: list[nn.Module] = [nn.Conv2d(channels, h, 3, padding=1), nn.ReLU()]
            if min(height, width) >= POOL_FROM:
                conv.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            if m.dropout > 0:
                conv.append(nn.Dropout(m.dropout))
            layers.append(block(conv))
            channels = h
        return [*layers, nn.Flatten(), nn.Linear(channels * height * width, problem.outputs)]
    width = problem.inputs
    for h in m.hidden:
        dense: list[nn.Module] = [nn.Linear(width, h), nn.ReLU()]
        if m.dropout > 0:
            dense.append(nn.Dropout(m.dropout))
        layers.append(block(dense))
        width = h
    return [*layers, nn.Linear(width, problem.outputs)]


def from_data(cfg: Config, x_train: np.ndarray, num_classes: int) -> nn.Sequential:
    """The config's classifier for a matrix of numbers, its stem fitted on ``x_train``
    (classes 0..num_classes-1): for callers that hold arrays, not a table."""
    return network(cfg, features.numeric_encoding(x_train), classifier(num_classes))


def classifier(num_classes: int) -> Task:
    """The classification task of classes 0..num_classes-1."""
    from orchestrator.core import task as task_mod

    kind = task_mod.BINARY if num_classes == BINARY else task_mod.MULTICLASS
    return Task(kind, list(range(num_classes)))


def problem_of(cfg: Config, pre: Preprocess, task: Task) -> Problem:
    """The ``Problem`` a body is built for."""
    shape = tuple(cfg.data.shape) if cfg.data.shape else None
    return Problem(
        inputs=pre.out_width,
        outputs=task.outputs,
        task=task.kind,
        shape=shape,
        dropout=cfg.model.dropout,
        grad_checkpointing=cfg.train.grad_checkpointing,
    )


def network(cfg: Config, enc: Encoding, task: Task) -> nn.Sequential:
    """``Preprocess`` then the body: the whole trained model, raw encoded rows in, logits
    (or standardized targets) out."""
    # an image is scaled as one (a shifted stroke means the same anywhere): the cnn, and a
    # factory told the inputs form an image; the mlp keeps one scale per feature
    image = cfg.model.kind == "cnn" or (cfg.model.kind != "mlp" and cfg.data.shape is not None)
    pre = Preprocess(enc, one_scale=image)
    problem = problem_of(cfg, pre, task)
    if cfg.model.kind == "cnn":
        image_check(cfg, pre)
    return nn.Sequential(pre, *body(cfg, problem))


def image_check(cfg: Config, pre: Preprocess) -> None:
    """The cnn views the preprocessed features as ``data.shape``: they must fill it."""
    shape = cfg.data.shape
    assert shape is not None, "data.shape is validated for cnn"
    need = shape[0] * shape[1] * shape[2]
    if pre.out_width != need:
        raise ConfigError(
            "data.shape",
            f"{shape} holds {need} values, but the features are {pre.out_width} wide "
            "(categories and was-missing indicators add to the numbers)",
            "select the image's columns with data.features, or use model.kind mlp or a factory",
        )


def check_buildable(cfg: Config, enc: Encoding, task: Task, space: dict[str, Any]) -> None:
    """Build the network on the meta device (no memory) with the config, then with each
    searched model key at each range end and choice value, one key at a time: a factory
    that refuses a value stops the sweep before Ray starts, naming the key and showing the
    factory's own error."""
    from orchestrator import config as config_mod

    with torch.device("meta"):  # the config as it is: its own key named on failure
        network(cfg, enc, task)
    for dotted, spec in space.items():
        if not dotted.startswith("model."):
            continue
        ends = spec["values"] if "values" in spec else [spec["low"], spec["high"]]
        if spec["type"] == "randint":
            ends = [spec["low"], spec["high"] - 1]  # randint's high is exclusive
        for value in ends:
            try:
                c = config_mod.with_values(cfg, {dotted: value})
            except ConfigError:
                continue  # the space checks already named it
            try:
                with torch.device("meta"):
                    network(c, enc, task)
            except ConfigError as e:
                raise ConfigError(
                    f"sweep.space.{dotted}",
                    f"the value {value!r} would fail: {e.problem}",
                    e.fix,
                ) from None

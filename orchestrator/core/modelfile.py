"""The pickle-free model format: a trained network as ``weights.pt`` (a plain state dict of
tensors) and ``model.json`` (the model section, the fitted encoders and the task that
rebuild it). The sweep writes it into the
registered model; the server reads it back, checked, without unpickling anything."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator import config as config_mod
from orchestrator.config import Config, ConfigError
from orchestrator.core import features, model
from orchestrator.core import task as task_mod
from orchestrator.core.features import Encoding
from orchestrator.core.task import Task

WEIGHTS_FILE, MODEL_FILE = "weights.pt", "model.json"  # the pickle-free form, in extra_files/
MIN_CLASSES = 2  # a classifier tells at least two classes apart


@dataclass
class Spec:
    """What ``model.json`` says: the model section, the image shape, the fitted encoders
    and the task. Enough to rebuild the network, check a request and shape the answer."""

    model: config_mod.ModelConfig
    shape: list[int] | None
    encoding: Encoding
    task: Task

    @property
    def classes(self) -> list:
        """Class values of a classification task (empty otherwise)."""
        return self.task.class_values

    @property
    def num_features(self) -> int:
        """Numbers per row of the encoded input."""
        return self.encoding.width

    def to_json(self) -> dict[str, Any]:
        """``model.json``'s content (format 2)."""
        return {
            "format": FORMAT,
            "model": self.model.model_dump(),
            "shape": self.shape,
            "encoding": self.encoding.to_json(),
            "task": self.task.to_json(),
        }

    def config(self) -> Config:
        """A config that rebuilds this network (the other sections at their defaults)."""
        return config_mod.from_dict(
            {
                "data": {"path": MODEL_FILE, "shape": self.shape},
                "model": self.model.model_dump(),
                "sweep": {"storage_path": "results", "space": {}},
            }
        )

    def network(self) -> torch.nn.Module:
        """The network this spec describes, with untrained weights."""
        return model.network(self.config(), self.encoding, self.task)


def spec_of(cfg: Config, enc: Encoding, task: Task) -> Spec:
    """The spec of a network trained with ``cfg`` on data encoded by ``enc``."""
    return Spec(cfg.model, cfg.data.shape, enc, task)


def write_weights(folder: str | Path, spec: Spec, net: torch.nn.Module) -> tuple[Path, Path]:
    """The pickle-free form of a trained network: its tensors (a plain state dict) and the
    spec that rebuilds it (JSON)."""
    weights, spec_path = Path(folder) / WEIGHTS_FILE, Path(folder) / MODEL_FILE
    torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, weights)
    spec_path.write_text(json.dumps(spec.to_json()))
    return weights, spec_path


# model.json is a few KB (a category's values are listed); weights.pt holds float32 tensors
MAX_SPEC_BYTES = 64 << 20


MAX_LAYERS = 1024


BYTES_PER_ELEMENT = 4
FORMAT = 2  # 1: numbers only, classes only (0.1); 2: encoders and task


class NotTrusted(ValueError):
    """A spec naming a model factory the server was not told to trust (``serve.factories``)."""


def load_weights(
    folder: str | Path, factories: tuple[str, ...] | list[str] = ()
) -> tuple[torch.nn.Module, Spec]:
    """The pickle-free champion: its network rebuilt from ``model.json`` and the tensors of
    ``weights.pt`` (``weights_only=True``: no code is unpickled). Logits out.

    Both files are input from whoever can write the registry: the spec is checked by the
    config's own rules; a factory is imported only when ``factories`` (``serve.factories``)
    names it; a network that would need more tensor elements than the weights file can
    hold is refused before it is built (``hidden: [2000000000]`` would otherwise take
    every host's memory). A bad spec raises ``ValueError`` naming the field."""

    folder = Path(folder)
    spec_path, weights_path = folder / MODEL_FILE, folder / WEIGHTS_FILE
    if spec_path.stat().st_size > MAX_SPEC_BYTES:
        raise ValueError(
            f"{MODEL_FILE}: {spec_path.stat().st_size} bytes, at most {MAX_SPEC_BYTES}"
        )
    try:
        raw = json.loads(spec_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{MODEL_FILE}: not valid JSON ({e})") from None
    spec = check_spec(raw, factories)
    cfg = spec.config()
    with torch.device("meta"):  # counted without memory
        elements = sum(t.numel() for t in spec.network().state_dict().values())
    size = weights_path.stat().st_size
    if elements * BYTES_PER_ELEMENT > size:
        raise ValueError(
            f"{MODEL_FILE}: model {cfg.model.model_dump()} needs {elements:,} float32 "
            f"values, but {WEIGHTS_FILE} has only {size:,} bytes"
        )
    net = spec.network()
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)  # the stem's statistics are buffers: the trained ones
    return net.eval(), spec


def check_spec(spec: Any, factories: tuple[str, ...] | list[str] = ()) -> Spec:
    """The ``Spec`` of a ``model.json``, checked: the model section and the shape by the
    config's own rules, the encoders and the task by theirs, a factory against the trusted
    ``factories``. ``ValueError`` names the first bad field."""

    def bad(key: str, problem: str) -> ValueError:
        return ValueError(f"{MODEL_FILE}: {key}: {problem}")

    if not isinstance(spec, dict):
        raise bad("<root>", "expected an object")
    if spec.get("format") not in (1, FORMAT):
        raise bad("format", f"expected 1 or {FORMAT}, got {spec.get('format')!r}")
    needed = (
        ("model", "num_features", "num_classes", "classes")
        if spec["format"] == 1
        else (
            "model",
            "encoding",
            "task",
        )
    )
    for key in needed:
        if key not in spec:
            raise bad(key, "missing")
    if not isinstance(spec["model"], dict):
        raise bad("model", "expected an object")
    try:  # the same checks as a config file's model section (and data.shape); the other
        # sections keep their defaults (storage fixed: it is read from the environment)
        cfg = config_mod.from_dict(
            {
                "data": {"path": MODEL_FILE, "shape": spec.get("shape")},
                "model": spec["model"],
                "sweep": {"storage_path": "results", "space": {}},
            }
        )
    except ConfigError as e:
        raise bad("shape" if e.key == "data.shape" else e.key, e.problem) from None
    kind = cfg.model.kind
    if kind not in ("mlp", "cnn") and kind not in factories:
        raise NotTrusted(
            f"{MODEL_FILE}: model.kind: the factory {kind!r} is not trusted by this server: "
            "add it to serve.factories (the package must be installed here) to serve it"
        )
    if len(cfg.model.hidden) > MAX_LAYERS:  # each layer is Python objects, whatever its size
        raise bad("model.hidden", f"{len(cfg.model.hidden)} layers, at most {MAX_LAYERS}")
    if spec["format"] == 1:
        enc, task = _format_1(spec, bad)
    else:
        enc = features.from_json(spec["encoding"], f"{MODEL_FILE}: encoding")
        task = task_mod.from_json(spec["task"], f"{MODEL_FILE}: task")
    shape = cfg.data.shape
    if shape is not None and shape[0] * shape[1] * shape[2] != enc.width:
        raise bad(
            "shape",
            f"{shape} holds {shape[0] * shape[1] * shape[2]} values, not the {enc.width} features",
        )
    return Spec(cfg.model, shape, enc, task)


def _format_1(spec: dict[str, Any], bad: Any) -> tuple[Encoding, Task]:
    """A 0.1 model: numbers only, classes only."""
    d, num_classes, classes = spec["num_features"], spec["num_classes"], spec["classes"]
    if type(d) is not int or not 1 <= d <= features.MAX_COLUMNS:
        raise bad("num_features", f"expected a positive integer, got {d!r}")
    if type(num_classes) is not int or num_classes < MIN_CLASSES:
        raise bad("num_classes", f"expected an integer of at least 2, got {num_classes!r}")
    if not isinstance(classes, list) or len(classes) != num_classes:
        raise bad("classes", f"expected a list of {num_classes} class names")
    if not all(isinstance(c, str | int | float | bool) for c in classes):
        raise bad("classes", "class names must be strings or numbers")
    columns = [
        features.Column(f"x{i}", features.NUMBER, median=[0.0], mean=[0.0], std=[1.0])
        for i in range(d)
    ]
    kind = task_mod.BINARY if num_classes == MIN_CLASSES else task_mod.MULTICLASS
    return Encoding(columns), Task(kind, classes)

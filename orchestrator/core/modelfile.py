"""The pickle-free model format: a trained network as ``weights.pt`` (a plain state dict of
tensors) and ``model.json`` (the config that rebuilds it). The sweep writes it into the
registered model; the server reads it back, checked, without unpickling anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator import config as config_mod
from orchestrator.config import Config, ConfigError
from orchestrator.core import model

WEIGHTS_FILE, MODEL_FILE = "weights.pt", "model.json"  # the pickle-free form, in extra_files/
MIN_CLASSES = 2  # a classifier tells at least two classes apart


def write_weights(
    folder: str | Path, cfg: Config, net: torch.nn.Module, classes: list, num_features: int
) -> tuple[Path, Path]:
    """The pickle-free form of a trained network: its tensors (a plain state dict) and the
    config that rebuilds it (JSON)."""
    weights, spec = Path(folder) / WEIGHTS_FILE, Path(folder) / MODEL_FILE
    torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, weights)
    spec.write_text(
        json.dumps(
            {
                "format": 1,
                "model": config_mod.to_dict(cfg)["model"],
                "shape": cfg.data.shape,
                "num_classes": len(classes),
                "classes": classes,
                "num_features": num_features,
            }
        )
    )
    return weights, spec


# model.json is a few hundred bytes; weights.pt holds float32 tensors (write_weights)
MAX_SPEC_BYTES = 1 << 20


MAX_LAYERS = 1024


BYTES_PER_ELEMENT = 4


def load_weights(folder: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The pickle-free champion: its network rebuilt from ``model.json`` and the tensors of
    ``weights.pt`` (``weights_only=True``: no code is unpickled). Logits out.

    Both files are input from whoever can write the registry: the spec is checked by the
    config's own rules, and a network that would need more tensor elements than the
    weights file can hold is refused before it is built (``hidden: [2000000000]`` would
    otherwise take every host's memory). A bad spec raises ``ValueError`` naming the field."""

    folder = Path(folder)
    spec_path, weights_path = folder / MODEL_FILE, folder / WEIGHTS_FILE
    if spec_path.stat().st_size > MAX_SPEC_BYTES:
        raise ValueError(
            f"{MODEL_FILE}: {spec_path.stat().st_size} bytes, at most {MAX_SPEC_BYTES}"
        )
    try:
        spec = json.loads(spec_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{MODEL_FILE}: not valid JSON ({e})") from None
    mcfg, shape, d, num_classes = check_spec(spec)
    elements = state_elements(mcfg, d, num_classes, shape)
    size = weights_path.stat().st_size
    if elements * BYTES_PER_ELEMENT > size:
        raise ValueError(
            f"{MODEL_FILE}: model {spec['model']} needs {elements:,} float32 "
            f"values, but {WEIGHTS_FILE} has only {size:,} bytes"
        )
    net = model.build(
        mcfg, np.zeros(d, dtype=np.float32), np.ones(d, dtype=np.float32), num_classes, shape
    )
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)  # the stem's statistics are buffers: the trained ones
    return net.eval(), spec


def check_spec(spec: Any) -> tuple[config_mod.ModelConfig, list[int] | None, int, int]:
    """(model config, shape, features, classes) of a ``model.json``, checked: the model
    section and the shape by the config's own validation, the rest here. ``ValueError``
    names the first bad field."""

    def bad(key: str, problem: str) -> ValueError:
        return ValueError(f"{MODEL_FILE}: {key}: {problem}")

    if not isinstance(spec, dict):
        raise bad("<root>", "expected an object")
    if spec.get("format") != 1:
        raise bad("format", f"expected 1, got {spec.get('format')!r}")
    for key in ("model", "num_features", "num_classes", "classes"):
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
                "sweep": {"storage_path": "results"},
            }
        )
    except ConfigError as e:
        raise bad("shape" if e.key == "data.shape" else e.key, e.problem) from None
    if len(cfg.model.hidden) > MAX_LAYERS:  # each layer is Python objects, whatever its size
        raise bad("model.hidden", f"{len(cfg.model.hidden)} layers, at most {MAX_LAYERS}")
    d, num_classes, classes = spec["num_features"], spec["num_classes"], spec["classes"]
    if type(d) is not int or d < 1:
        raise bad("num_features", f"expected a positive integer, got {d!r}")
    if type(num_classes) is not int or num_classes < MIN_CLASSES:
        raise bad("num_classes", f"expected an integer of at least 2, got {num_classes!r}")
    if not isinstance(classes, list) or len(classes) != num_classes:
        raise bad("classes", f"expected a list of {num_classes} class names")
    if not all(isinstance(c, str | int | float | bool) for c in classes):
        raise bad("classes", "class names must be strings or numbers")
    shape = cfg.data.shape
    if shape is not None and shape[0] * shape[1] * shape[2] != d:
        raise bad(
            "shape",
            f"{shape} holds {shape[0] * shape[1] * shape[2]} values, not num_features ({d})",
        )
    return cfg.model, shape, d, num_classes


def state_elements(
    mcfg: config_mod.ModelConfig, d: int, num_classes: int, shape: list[int] | None
) -> int:
    """Tensor elements in ``model.build``'s state dict (parameters and the stem's two
    buffers), counted without building it. Mirrors ``model.build`` (a test keeps the two
    in step)."""

    out = model.num_outputs(num_classes)
    n = 2 * d  # Standardize: mean and std
    if mcfg.kind == "cnn":
        assert shape is not None, "check_spec requires a shape for cnn"
        channels, height, width = shape
        for h in mcfg.hidden:
            n += channels * h * 9 + h
            if min(height, width) >= model.POOL_FROM:
                height, width = height // 2, width // 2
            channels = h
        return n + channels * height * width * out + out
    width = d
    for h in mcfg.hidden:
        n += width * h + h
        width = h
    return n + width * out + out

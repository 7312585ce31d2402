"""The checkpoint format: one folder per saved epoch, tensors only (``weights_only`` loads
it, so no code is unpickled), with the history of every epoch so far beside it as JSON."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import torch

from orchestrator.core import storage

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"  # every epoch's metrics so far, readable without torch


def save(folder: str, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, and its ``history`` list) into ``folder``."""
    torch.save(state, os.path.join(folder, CHECKPOINT_FILE))
    # A driver that lost some epochs' reports (it was killed while they were in flight)
    # fills them in from here after a resume.
    with open(os.path.join(folder, HISTORY_FILE), "w") as f:
        json.dump(state["history"], f)


def load_checkpoint(path: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint folder's contents, from a local folder or object storage (``options``:
    ``sweep.storage_filesystem``); tensors only, so no code is unpickled."""
    if storage.is_uri(path):
        raw = storage.Folder(path, options).read_bytes(CHECKPOINT_FILE)
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    return torch.load(os.path.join(path, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def load_history(path: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]] | None:
    """The epochs' metrics saved beside a checkpoint (None: the folder has none)."""
    folder = storage.Folder(path, options)
    if not folder.is_file(HISTORY_FILE):
        return None
    rows: list[dict[str, Any]] = json.loads(folder.read_text(HISTORY_FILE))
    return rows

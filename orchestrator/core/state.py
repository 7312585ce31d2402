"""The sweep folder's state file: what ``orchestrator resume``, ``diagnose``, ``report`` and
``tracking replay`` read to find a sweep again (its config, redacted; its MLflow runs; its
data fingerprint; how far it got). Written atomically, read by name or by folder."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from orchestrator import config as config_mod
from orchestrator.config import Config, ConfigError

STATE_FILE = "orchestrator.json"

RUNNING, DONE = "running", "done"  # the phases a state file records


def write(
    folder: Path, cfg: Config, phase: str, *, stamp: str, parent_run_id: str | None, **ids: str
) -> None:
    """Save the sweep's state in ``folder``, its config redacted (secrets come back from the
    environment on resume). ``ids``: ``experiment_id`` and ``fingerprint``."""
    state = {
        "config": config_mod.to_dict(config_mod.redact(cfg)),
        "stamp": stamp,
        "phase": phase,
        "parent_run_id": parent_run_id,
        **ids,
    }
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(folder / STATE_FILE)  # atomic: a kill never leaves half a state file


def read(folder: Path) -> dict[str, Any]:
    """The state saved in a sweep folder (as ``write`` left it)."""
    return json.loads((folder / STATE_FILE).read_text())


def saved_config(state: dict[str, Any], keys: list[str] | None = None) -> Config:
    """The state's config with its secrets back from the environment (all of them, or only
    ``keys``); a missing variable is a ConfigError naming it."""
    return config_mod.restore(config_mod.from_dict(state["config"]), keys=keys)


def find_sweep(experiment: str, storage_path: str) -> Path:
    """A sweep folder, or the newest sweep of that experiment name under the storage path."""
    given = Path(experiment)
    if (given / STATE_FILE).is_file():
        return given.absolute()
    pattern = re.compile(rf"^{re.escape(experiment)}-\d{{8}}-\d{{6}}$")
    root = Path(storage_path)
    found = sorted(
        p
        for p in (root.iterdir() if root.is_dir() else [])
        if pattern.match(p.name) and (p / STATE_FILE).is_file()
    )
    if not found:
        raise ConfigError(
            "EXPERIMENT",
            f"no sweep named {experiment!r} under {root.absolute()}",
            "pass the experiment name from the config (or the folder the sweep "
            "printed), and --storage when sweep.storage_path was changed",
        )
    return found[-1].absolute()


def check_storage(cfg: Config) -> None:
    """``sweep.storage_path`` can hold files: a probe file created and deleted in it, or in
    its nearest existing parent while it does not exist yet (permissions alone do not say,
    e.g. for root or a read-only mount). Checked before any MLflow run exists: found out
    later, the parent run would stay RUNNING."""
    root = Path(cfg.sweep.storage_path).absolute()
    # probed where it exists so far: a sweep refused later (MLflow away) leaves no folder
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        if not where.is_dir():
            raise NotADirectoryError(20, "not a folder", str(where))
        probe = where / f".orchestrator-probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            "sweep.storage_path",
            f"{str(root)!r} is not a folder this process can write ({e.strerror or e})",
            "point it at a writable folder (on a cluster: storage every node "
            "mounts), or fix its permissions",
        ) from None

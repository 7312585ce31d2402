"""The sweep folder's state file: what ``orchestrator resume``, ``diagnose``, ``report`` and
``tracking replay`` read to find a sweep again (its config, redacted; its MLflow runs; its
data fingerprint; how far it got). Written atomically, read by name or by folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from orchestrator import config as config_mod
from orchestrator.config import Config, ConfigError
from orchestrator.core import storage

STATE_FILE = "orchestrator.json"

RUNNING, DONE = "running", "done"  # the phases a state file records


def folder_of(cfg: Config) -> storage.Folder:
    """The config's ``sweep.storage_path`` as a folder (local or object storage)."""
    return storage.Folder(cfg.sweep.storage_path, cfg.sweep.storage_filesystem)


def write(
    folder: Path | storage.Folder,
    cfg: Config,
    phase: str,
    *,
    stamp: str,
    parent_run_id: str | None,
    **ids: Any,
) -> None:
    """Save the sweep's state in ``folder``, its config redacted (secrets come back from the
    environment on resume). ``ids``: ``experiment_id`` and ``fingerprint`` (and an
    autopilot's ``autopilot``: its rounds so far)."""
    state = {
        "config": config_mod.to_dict(config_mod.redact(cfg)),
        "stamp": stamp,
        "phase": phase,
        "parent_run_id": parent_run_id,
        **ids,
    }
    # atomic: a kill never leaves half a state file (one PUT on object storage)
    storage.as_folder(folder).write_atomic(STATE_FILE, json.dumps(state, indent=1))


def read(folder: Path | storage.Folder) -> dict[str, Any]:
    """The state saved in a sweep folder (as ``write`` left it)."""
    loaded: dict[str, Any] = json.loads(storage.as_folder(folder).read_text(STATE_FILE))
    return loaded


def saved_config(state: dict[str, Any], keys: list[str] | None = None) -> Config:
    """The state's config with its secrets back from the environment (all of them, or only
    ``keys``); a missing variable is a ConfigError naming it."""
    return config_mod.restore(config_mod.from_dict(state["config"]), keys=keys)


def find_sweep(experiment: str, storage_path: str) -> storage.Folder:
    """A sweep folder (a path or a URI), or the newest sweep of that experiment name under
    the storage path (a folder or a URI). Object storage is reached with the environment's
    credentials and endpoint (the state's own options are known only once it is read)."""
    if storage.is_uri(experiment) or Path(experiment).is_dir():
        given = storage.Folder(experiment)
        if given.is_file(STATE_FILE):
            return given
    pattern = re.compile(rf"^{re.escape(experiment)}-\d{{8}}-\d{{6}}$")
    root = storage.Folder(storage_path)
    try:
        found = [n for n in root.children() if pattern.match(n) and (root / n).is_file(STATE_FILE)]
    except OSError as e:
        raise ConfigError(
            "--storage", f"{root} cannot be read ({e})", "check the location and credentials"
        ) from None
    if not found:
        raise ConfigError(
            "EXPERIMENT",
            f"no sweep named {experiment!r} under {root}",
            "pass the experiment name from the config (or the folder the sweep "
            "printed), and --storage when sweep.storage_path was changed",
        )
    return root / sorted(found)[-1]


def check_storage(cfg: Config) -> None:
    """``sweep.storage_path`` can hold files: a probe file (object) created and deleted in
    it, or locally in its nearest existing parent while it does not exist yet (permissions
    alone do not say, e.g. for root or a read-only mount). Checked before any MLflow run
    exists: found out later, the parent run would stay RUNNING."""
    location = storage.absolute(cfg.sweep.storage_path)
    try:
        storage.probe(folder_of(cfg))
    except TypeError as e:  # an option the filesystem class does not take
        raise ConfigError(
            "sweep.storage_filesystem",
            f"not options of {location.split('://')[0]}://'s filesystem ({e})",
            "see pyarrow.fs.S3FileSystem / GcsFileSystem for the options they take",
        ) from None
    except (OSError, ValueError) as e:
        remote = storage.is_uri(location)
        raise ConfigError(
            "sweep.storage_path",
            f"{location!r} is not a "
            f"{'location' if remote else 'folder'} this process can write "
            f"({getattr(e, 'strerror', None) or e})",
            "check the bucket, the credentials (AWS_* / GOOGLE_APPLICATION_CREDENTIALS) and "
            "the endpoint (AWS_ENDPOINT_URL or sweep.storage_filesystem.endpoint_override)"
            if remote
            else "point it at a writable folder (on a cluster: storage every node "
            "mounts), or fix its permissions",
        ) from None

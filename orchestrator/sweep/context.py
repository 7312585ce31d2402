"""One sweep's handles, built once by the driver and shared by its stages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.config import Config
from orchestrator.core.prepare import Prepared
from orchestrator.core.storage import Folder
from orchestrator.tracking import outbox


@dataclass
class Context:
    """One sweep's (or one training run's) handles, shared by its stages (search, confirm,
    champion) and the trial book of each: the config, the data, MLflow, and where it lives."""

    cfg: Config
    prep: Prepared
    client: outbox.Outbox
    exp_id: str
    parent_id: str | None  # the sweep's MLflow run; None for `orchestrator train`
    stamp: str  # the sweep's start time, part of its name
    storage: str  # sweep.storage_path: an absolute folder, or a URI
    concurrency: int
    out: Callable[[str], None]
    resume: bool = False

    @property
    def name(self) -> str:
        """The sweep's Tune run name: the experiment and the sweep's start time."""
        return f"{self.cfg.experiment}-{self.stamp}"

    @functools.cached_property
    def root(self) -> Folder:
        """The storage path, local or object storage; its filesystem built once (resolving
        an S3 URI may ask the store for the bucket's region)."""
        return Folder(self.storage, self.cfg.sweep.storage_filesystem)

    @property
    def path(self) -> Folder:
        """The sweep's folder under the storage path."""
        return self.root / self.name

    @property
    def filesystem(self) -> Any:
        """The storage's pyarrow filesystem for Ray (None: Ray resolves the path itself). Built
        without secrets (they come from the environment), so Tune may pickle it."""
        return self.root.fs if self.cfg.sweep.storage_filesystem else None

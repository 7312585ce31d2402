"""``orchestrator train``: one training run of the config as it stands, no search, through
the same trainable, trial book and tuner as a sweep's trials."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator import config as config_mod
from orchestrator.config import Config
from orchestrator.core import state, storage
from orchestrator.core.ledger import TrialRecord
from orchestrator.core.prepare import prepare
from orchestrator.execution import runtime, trials
from orchestrator.sweep import screen, tuner
from orchestrator.sweep.book import Book
from orchestrator.sweep.context import Context
from orchestrator.sweep.driver import concurrency_for
from orchestrator.tracking import location, writer


@dataclass
class TrainSummary:
    """What ``orchestrator train`` reports: its MLflow run, its trial record, and the
    tracking server it went to."""

    run_id: str
    record: TrialRecord
    tracking_uri: str  # redacted (config.redact_uri): for showing


def train_run(
    cfg: Config, out: Callable[[str], None] = print, verbose: bool = False
) -> TrainSummary:
    """One training run of the config as it stands (no search): in a single trial on the
    fast path, or a TorchTrainer of ``scaling.num_workers`` DDP workers; restarted from its
    last checkpoint up to ``scaling.max_failures`` times; one MLflow run, ``role=train``."""
    with screen.reading(out, cfg):
        prep = prepare(cfg, say=out)
    cfg = prep.cfg
    storage.export_secrets(cfg.sweep.storage_filesystem)  # for the workers Ray starts
    state.check_storage(cfg)
    client, exp_id = writer.connect(cfg, out)
    runtime.init_ray(verbose)
    concurrency_for(cfg, prep)  # fails now if one run cannot fit
    where = storage.absolute(cfg.sweep.storage_path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{cfg.experiment}-{stamp}-train"
    ctx = Context(cfg, prep, client, exp_id, None, stamp, where, 1, out)
    client.use_journal(ctx.root / name)
    out(
        f"[train] {cfg.experiment}: {cfg.scaling.num_workers} DDP worker(s), "
        f"{cfg.train.epochs} epochs; data {prep.sizes} ({prep.loader}); {prep.describe()}"
    )
    # a trial's own retries are the worker group's (scaling.max_failures); no search retries
    no_search = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"max_failures": 0})})
    book = Book(ctx, "train")
    trainable = trials.make_trainable(cfg, stamp, where, prep.summary)
    search = tuner.Search(retries=trials.max_failures(no_search))
    tuner.run_book(book, trainable, lambda: search, name)
    rec = book.records[0]
    assert rec.run_id is not None
    shown = config_mod.redact_uri(location.resolve_uri(cfg))
    if not client.drain(block=True, patience=cfg.tracking.drain_timeout):
        out(
            f"[tracking] MLflow at {shown} does not answer: "
            f"{len(client.queue)} write(s) kept; when it is back: orchestrator tracking "
            f"replay {ctx.root / name} --tracking-uri {shown}"
        )
    return TrainSummary(client.run_id(rec.run_id) or rec.run_id, rec, shown)

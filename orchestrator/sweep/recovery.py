"""What a driver that died leaves to the next one, for the trial book to set right: epochs
that MLflow or Tune's saved ledger got and the other did not, trials that ended without
their run ending, runs opened for trials Tune has forgotten, and epochs no driver received
(filled in from the history a checkpoint carries)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.analysis import plots
from orchestrator.core import checkpoint, ledger
from orchestrator.core.ledger import TrialRecord
from orchestrator.tracking import schema, writer

if TYPE_CHECKING:
    from orchestrator.sweep.book import Book


def reconcile(book: Book, saved: dict[str, TrialRecord]) -> None:
    """Take the ledger Tune saved back, and make MLflow and it agree again: epochs either
    side had that the other missed, and trials that ended without their run ending."""
    book.by_id = saved
    for rec in saved.values():
        if not rec.run_id:
            continue
        run = book.client.get_run(rec.run_id)
        logged = writer.last_step(book.client, rec.run_id)
        if rec.status == "RUNNING":
            # MLflow may hold epochs that Tune's last save missed; a trial that then
            # finished reports nothing more, so the ledger takes them from MLflow
            for row in writer.epochs_since(book.client, rec.run_id, rec.epochs):
                ledger.update(rec, row, book.key, book.mode)
            best_ckpt = run.data.tags.get(schema.BEST_CHECKPOINT)
            if rec.best is not None and best_ckpt:
                rec.checkpoint = best_ckpt
        # and the other way round: epochs the ledger holds that were still in the dead
        # driver's outbox (writes are sent from a thread, up to half a second later)
        for row in plots.by_epoch(rec.history):
            if int(row["epoch"]) > logged:
                writer.log_epoch(book.client, rec.run_id, row)
        rec.logged = max(logged, rec.epochs)
        if rec.status != "RUNNING" and run.info.status == "RUNNING":
            book.close(rec)  # it ended, but its end had not reached MLflow
    done = sum(r.status != "RUNNING" for r in saved.values())
    book.ctx.out(
        f"[{book.tag}] restored {len(saved)} trial(s): {done} finished (not "
        f"rerun), {len(saved) - done} to continue from their last checkpoint"
    )


def forget_orphans(book: Book) -> None:
    """Runs opened for trials Tune no longer knows (started after its last save before the
    driver died; Tune runs them again under new ids): deleted, so every trial has exactly
    one run."""
    if book.ctx.parent_id is None:
        return
    # a record may still hold a placeholder id from an outage: compare real ids
    known = {book.client.run_id(r.run_id) for r in book.records}
    for run in writer.child_runs(book.client, book.ctx.exp_id, book.ctx.parent_id):
        if (
            run.info.run_id not in known
            and run.info.status == "RUNNING"
            and run.data.tags.get(schema.ROLE) == book.role
        ):
            book.client.delete_run(run.info.run_id)


def fill_gap(book: Book, rec: TrialRecord, checkpoint_dir: str) -> None:
    """Epochs this driver never got (reports in flight when an earlier driver was killed;
    the worker group went on from a later checkpoint): logged from the history in the
    checkpoint, and kept in the ledger's history (not as candidates for the best epoch:
    their checkpoints are gone)."""
    assert rec.gap is not None and rec.run_id is not None
    lo, hi = rec.gap
    saved = checkpoint.load_history(checkpoint_dir, book.cfg.sweep.storage_filesystem)
    if saved is None:
        return
    rows = [r for r in saved if lo < int(r["epoch"]) < hi]
    for row in rows:
        writer.log_epoch(book.client, rec.run_id, row)
    rec.history = sorted(rec.history + rows, key=lambda r: r["epoch"])
    rec.gap = None
    if rows:
        book.ctx.out(
            f"[{book.tag}] trial {rec.trial_id}: epochs {lo + 1}-{hi - 1} "
            "recovered from its checkpoint"
        )

"""The trial book: the driver's record of every trial of one Tune run (the ledger) and the
MLflow runs it writes for them (the driver is MLflow's only writer), with the bias/variance
label and the learning curves of each trial that ends, and a line for the terminal. What a
resumed driver has to reconcile lives in ``recovery``.

Plain Python, no Tune: ``hooks`` turns Tune's callbacks into these calls, and the unit tests
drive it with fake trials and a fake client."""

from __future__ import annotations

from typing import Any

from orchestrator import config as config_mod
from orchestrator.analysis import plots, progress
from orchestrator.core import diagnosis, ledger
from orchestrator.core.ledger import TrialRecord
from orchestrator.execution import trials
from orchestrator.sweep import recovery, screen
from orchestrator.sweep.context import Context
from orchestrator.tracking import schema, writer

ERROR_TAIL = 5000  # characters of a trial's error kept on its run (MLflow caps tag values)


class Book:
    """The trials of one Tune run as the driver saw them, and their MLflow runs.

    ``role`` is the runs' role tag (``trial`` for the search, ``confirm``, ``train``);
    ``total`` how many trials the run plans, for the progress line. Its state (``state``) is
    saved with Tune's experiment, so a resumed sweep knows every trial it had; a trial Tune
    re-runs finds its MLflow run again rather than opening a second one, and an epoch
    replayed from a checkpoint is logged once."""

    def __init__(self, ctx: Context, role: str = "trial", total: int = 1) -> None:
        self.ctx, self.role, self.total = ctx, role, total
        self.cfg, self.client = ctx.cfg, ctx.client
        self.key, self.mode = config_mod.rank_metric(ctx.cfg)
        self.by_id: dict[str, TrialRecord] = {}
        self.title = self.tag  # what the live view calls this run ("round 2" in an autopilot)
        self._started: set[str] = set()  # trials (re)started and not yet reporting

    @property
    def tag(self) -> str:
        """The prefix of this book's terminal lines."""
        return "sweep" if self.role == "trial" else self.role

    @property
    def records(self) -> list[TrialRecord]:
        """Every trial so far, in the order they first appeared."""
        return list(self.by_id.values())

    # ------------------------------------------------------------ what Tune tells the driver

    def started(self, trial_id: str, trial_config: dict[str, Any]) -> None:
        """A trial (re)started: its run opened (or found again), a line when it is new."""
        rec = self.record(trial_id, trial_config)
        self._started.add(trial_id)
        if self.ctx.parent_id is not None and rec.epochs == 0 and not self.live:
            # a live view shows it running: the line would only push the view's rows up
            self.ctx.out(f"[{self.tag}] trial {trial_id} started ({_show(rec.values)})")

    @property
    def live(self) -> bool:
        """Whether the terminal shows a live view of this book's trials."""
        view = screen.of(self.ctx.out)
        return view is not None and view.live_view

    def tick(self, statuses: dict[str, str]) -> None:
        """A turn of Tune's loop, with every trial's status: the live view's next frame."""
        view = screen.of(self.ctx.out)
        if view is not None:
            view.trials(self, statuses)

    def recovered(self, trial_id: str) -> None:
        """A trial crashed and Tune retries it."""
        text = f"trial {trial_id} crashed; retrying from its last checkpoint"
        view = screen.of(self.ctx.out)
        if view is not None:
            view.note(text)
        else:
            self.ctx.out(f"[{self.tag}] {text}")

    def result(self, trial_id: str, trial_config: dict[str, Any], result: dict) -> None:
        """One epoch's result: into the ledger and MLflow, each epoch exactly once."""
        rec = self.record(trial_id, trial_config)
        epoch = int(result.get("epoch", 0))
        if trial_id in self._started:
            self._started.discard(trial_id)
            if epoch > 1:  # a retry, a resumed sweep, an unpaused or exploited (PBT) trial
                self.ctx.out(f"[{self.tag}] trial {trial_id} continues from epoch {epoch - 1}")
        values = trials.values_of(trial_config)
        if values != rec.values:  # PBT moved this trial to new values and a better one's
            rec.values = values  # checkpoint, which may be some epochs behind this trial
            rec.epochs = min(rec.epochs, epoch - 1)
            assert rec.run_id is not None
            self.client.set_tag(rec.run_id, f"{schema.VALUES_AT_EPOCH}{epoch}", _show(values))
        if epoch <= rec.epochs:
            return  # an epoch replayed from a checkpoint: in the ledger already
        if epoch > rec.epochs + 1 and self.cfg.sweep.scheduler != "pbt":
            # epochs this driver never got (reports in flight when an earlier driver was
            # killed; the worker group went on from a later checkpoint): filled in from
            # the history in the next checkpoint this trial reports
            rec.gap = (rec.epochs, epoch)
        if ledger.update(rec, result, self.key, self.mode) and rec.checkpoint:
            self._note_checkpoint(rec)
        if epoch > rec.logged:
            assert rec.run_id is not None
            writer.log_epoch(self.client, rec.run_id, result)
            rec.logged = epoch
        if rec.gap and result.get("checkpoint_path"):
            recovery.fill_gap(self, rec, str(result["checkpoint_path"]))
        if self.ctx.parent_id is None:
            self.ctx.out(progress.epoch_line(result))

    def checkpointed(
        self, trial_id: str, trial_config: dict[str, Any], path: str, epoch: Any
    ) -> None:
        """A fast-path trial's checkpoint (through Tune: it arrives after its result)."""
        rec = self.record(trial_id, trial_config)
        if rec.best is not None and rec.best.get("epoch") == epoch:
            rec.checkpoint = path
            self._note_checkpoint(rec)
        if rec.gap:
            recovery.fill_gap(self, rec, path)

    def ended(
        self, trial_id: str, trial_config: dict[str, Any], status: str, error: str | None = None
    ) -> None:
        """A trial finished (``TERMINATED``) or failed (``ERROR``, with its error text)."""
        rec = self.record(trial_id, trial_config)
        rec.status, rec.error = status, error
        self.close(rec)
        if error is not None:
            lines = error.strip().splitlines() or ["?"]
            self.ctx.out(f"[{self.tag}] trial {trial_id} failed: {lines[-1]}")

    # ------------------------------------------------------------ saved with Tune's state

    def state(self) -> dict[str, Any]:
        """What Tune saves with its experiment: the ledger."""
        return {"by_id": self.by_id}

    def restore(self, state: dict[str, Any]) -> None:
        """The ledger Tune saved, back in a resumed sweep (see ``recovery.reconcile``)."""
        recovery.reconcile(self, state["by_id"])

    # ------------------------------------------------------------ the work behind the calls

    def record(self, trial_id: str, trial_config: dict[str, Any]) -> TrialRecord:
        """The trial's record, made (with its MLflow run, or the one a resumed sweep finds
        again) the first time the trial is heard of."""
        rec = self.by_id.get(trial_id)
        if rec is not None:
            return rec
        values = trials.values_of(trial_config)
        rec = TrialRecord(trial_id, values)
        parent = self.ctx.parent_id
        found = (
            writer.find_trial_run(self.client, self.ctx.exp_id, parent, trial_id)
            if self.ctx.resume and parent
            else None
        )
        if found:  # started just before the driver died, after Tune's last save
            rec.run_id, rec.logged = found
            self.client.update_run(rec.run_id, status="RUNNING")
        else:
            rec.run_id = writer.start_trial_run(
                self.client,
                self.ctx.exp_id,
                parent,
                trial_id,
                config_mod.with_values(self.cfg, values),
                self.ctx.prep.fingerprint,
                self.role,
                sizes=self.ctx.prep.sizes,  # the dataset lineage on every run
            )
        if parent is None:
            self.ctx.out(f"[train] MLflow run {rec.run_id}")
        self.by_id[trial_id] = rec
        return rec

    def _note_checkpoint(self, rec: TrialRecord) -> None:
        # in MLflow too: a resumed sweep whose Tune state missed this epoch finds it there
        assert rec.run_id is not None and rec.checkpoint is not None
        self.client.set_tag(rec.run_id, schema.BEST_CHECKPOINT, rec.checkpoint)

    def close(self, rec: TrialRecord) -> None:
        """End a finished trial's run: its label, its learning curves, its status, a line."""
        assert rec.run_id is not None
        tags = {
            schema.EPOCHS_RUN: str(rec.epochs),
            schema.STATUS: progress.status_of(rec, self.cfg.train.epochs),
        }
        if rec.error:
            tags[schema.ERROR] = rec.error[-ERROR_TAIL:]
        found = self._diagnose(rec)
        if found is not None:
            rec.diagnosis, rec.diagnosis_reasons = found.label, found.reasons
            rec.diagnosis_fixes = found.fixes
            tags.update(
                {
                    schema.DIAGNOSIS: found.label,
                    schema.DIAGNOSIS_REASONS: found.reasons,
                    schema.DIAGNOSIS_FIXES: "; ".join(found.fixes),
                }
            )
        if rec.history:  # the trial's learning curves, as a picture on its run
            title = f"{self.tag} {rec.trial_id}" + (f": {_show(rec.values)}" if rec.values else "")
            png = plots.learning_curves(rec.history, title)
            writer.log_png(self.client, rec.run_id, png, "learning_curves.png")
        writer.end_run(self.client, rec.run_id, "FAILED" if rec.error else "FINISHED", tags)
        if self.ctx.parent_id is not None:
            line = progress.progress_line(self.records, self.total, self.key, self.mode)
            where = f"[{self.tag}] trial {rec.trial_id} {tags[schema.STATUS]};"
            self.ctx.out(line.replace("[sweep]", where))

    def _diagnose(self, rec: TrialRecord) -> diagnosis.Diagnosis | None:
        if rec.error:
            return diagnosis.failed(rec.epochs)
        values = rec.best_values or rec.values
        return diagnosis.diagnose(
            rec.history,
            self.ctx.prep.baseline,
            config_mod.with_values(self.cfg, values),
            self.cfg.diagnosis,
        )


def _show(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )

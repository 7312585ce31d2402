"""ASHA by promotion as a Tune scheduler: the thin Ray edge of ``orchestrator.core.asha``.

Tune pauses a trial by saving its latest reported checkpoint (the loop checkpoints at every
rung epoch when promoting) and resumes it from there, so a promoted trial replays nothing.
Tune starts every PENDING trial that fits, whatever ``choose_trial_to_run`` prefers, so the
searcher is kept from proposing a new trial while a paused one is due to resume: its
concurrency cap is moved with the ladder (``Ladder.gate``).
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator.core.asha import PAUSE, Ladder


class PromotionASHA(FIFOScheduler):
    """Tune's side of a ``Ladder``: pauses trials at rungs and resumes the promoted ones."""

    def __init__(
        self,
        rungs: list[int],
        reduction_factor: int,
        metric: str,
        mode: str,
        time_attr: str = "epoch",
        earlier: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.ladder = Ladder(rungs, reduction_factor, mode)
        self.ladder.carry(earlier or {})  # an autopilot's earlier rounds (Ladder.carry)
        self._metric, self._time_attr = metric, time_attr
        self._gated: Any = None  # the searcher (or its ConcurrencyLimiter) whose cap moves
        self._concurrency = 1
        self._total: int | None = None
        self._seen: set[str] = set()

    def bind(self, search_alg: Any, concurrency: int, total: int) -> None:
        """The searcher whose ``max_concurrent`` this scheduler moves, the trials allowed to
        run at once, and how many trials the sweep has in all (when the last one has been
        started and nothing runs, the paused ones are drained)."""
        self._gated, self._concurrency, self._total = search_alg, concurrency, total
        self._regate()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Accept Tune's metric and mode unchanged."""
        return True  # metric and mode came with the config

    def _regate(self) -> None:
        if self._gated is not None:
            self._gated.max_concurrent = self.ladder.gate(self._concurrency)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        """Count the trial as started (for when every configuration has been)."""
        self._seen.add(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        """CONTINUE or PAUSE, as the ladder decides for the epoch just reported."""
        epoch, value = result.get(self._time_attr), result.get(self._metric)
        if epoch is None or value is None:
            return TrialScheduler.CONTINUE
        decision = self.ladder.on_result(trial.trial_id, int(epoch), float(value))
        self._regate()
        return TrialScheduler.PAUSE if decision == PAUSE else TrialScheduler.CONTINUE

    def _ended(self, trial: Trial) -> None:
        self.ladder.forget(trial.trial_id)
        self._regate()

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        """A finished trial waits for nothing."""
        self._ended(trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        """A failed trial waits for nothing."""
        self._ended(trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        """A removed (stopped) trial waits for nothing."""
        self._ended(trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A promoted paused trial first, then a new one; once all have started and none
        runs, the paused ones are drained (the best promoted, the rest stopped)."""
        trials = tune_controller.get_trials()
        by_id = {t.trial_id: t for t in trials}
        # 1. a paused trial that has earned its next rung
        for tid in self.ladder.promotable():
            if by_id.get(tid) is not None and by_id[tid].status == Trial.PAUSED:
                self.ladder.promote(tid)
                self._regate()
                return by_id[tid]
        # 2. a new configuration
        for t in trials:
            if t.status == Trial.PENDING:
                return t
        # 3. paused before a resumed sweep's driver started: the ladder has not seen them
        for t in trials:
            if t.status == Trial.PAUSED and t.trial_id not in self.ladder.waiting:
                return t
        # 4. every configuration started and nothing runs: drain the paused ones
        busy = any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
        if busy or self._total is None or len(self._seen) < self._total:
            return None
        while True:
            best, losers = self.ladder.drain()
            if best is not None:
                self.ladder.promote(best)
                self._regate()
                return by_id[best]
            if not losers:
                return None
            for tid in losers:
                self.ladder.forget(tid)
                tune_controller.stop_trial(by_id[tid])
            self._regate()

    def debug_string(self) -> str:
        """Tune's status line: trials per rung and how many are paused."""
        sizes = ", ".join(f"{r}: {len(self.ladder.scores[r])}" for r in self.ladder.rungs)
        return f"ASHA by promotion; trials per rung {{{sizes}}}; paused {len(self.ladder.waiting)}"

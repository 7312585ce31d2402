"""ASHA by promotion (Li et al. 2020, "A System for Massively Parallel Hyperparameter
Tuning", algorithm 2): the bookkeeping, with no Ray in it.

Tune's ``ASHAScheduler`` is the *stopping* variant: a trial reaching a rung goes on if it
ranks in the top 1/rf of the trials seen there so far, else it stops. The first trial has
nobody to lose to, so it runs its whole budget, and so do the next few that beat it: with
few trials at once, most of the budget goes to whichever configurations came first.

The published algorithm *promotes* instead. A trial reaching a rung pauses there. A paused
trial resumes only once it ranks in the top ``floor(n / rf)`` of the ``n`` trials that have
reached its rung; until then the free worker starts a new configuration. No trial trains
past a rung before ``rf`` trials have been compared there. When no new configuration is
left, each rung that never promoted anyone promotes its best, so the sweep still ends with
at least one trial at full budget; every other paused trial is stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONTINUE, PAUSE = "continue", "pause"


@dataclass
class Ladder:
    """One sweep's rungs: each rung's scores, the trials it sent on and those paused at it."""

    rungs: list[int]  # epochs at which trials are compared, ascending, below the budget
    reduction_factor: int
    mode: str  # "min" or "max": of the ranked value
    scores: dict[int, dict[str, float]] = field(default_factory=dict)  # rung -> trial -> value
    promoted: dict[int, set[str]] = field(default_factory=dict)  # rung -> trials sent on
    waiting: dict[str, int] = field(default_factory=dict)  # paused trial -> its rung

    def __post_init__(self) -> None:
        for r in self.rungs:
            self.scores.setdefault(r, {})
            self.promoted.setdefault(r, set())

    def carry(self, earlier: dict[str, list[float]]) -> None:
        """Rank against trials of an earlier sweep over the same epochs (an autopilot's
        earlier rounds): ``earlier`` maps a trial (an id no trial of this sweep has) to its
        ranked value at each epoch it trained, the first epoch first. Each takes its place
        at every rung it reached, as sent on where it trained past it. A new trial then goes
        on only if it beats the earlier trials there too: a round of a few trials would
        otherwise compare them only with each other, and send its first on whatever it
        scored."""
        for trial, values in earlier.items():
            for rung in self.rungs:
                if len(values) >= rung:
                    self.scores[rung][trial] = float(values[rung - 1])
                    if len(values) > rung:
                        self.promoted[rung].add(trial)

    def _key(self, value: float) -> float:
        if not math.isfinite(value):
            return math.inf  # a diverged trial ranks last
        return value if self.mode == "min" else -value

    def top(self, rung: int) -> list[str]:
        """The trials that rank in the top floor(n / rf) at this rung, best first."""
        ranked = sorted(self.scores[rung], key=lambda t: self._key(self.scores[rung][t]))
        return ranked[: len(ranked) // self.reduction_factor]

    def on_result(self, trial: str, epoch: int, value: float) -> str:
        """CONTINUE or PAUSE for a trial that has just finished ``epoch``."""
        reached = [r for r in self.rungs if r <= epoch]
        if not reached or trial in self.scores[reached[-1]]:
            return CONTINUE  # between rungs, or an epoch replayed after a resume
        rung = reached[-1]
        self.scores[rung][trial] = value
        if trial in self.top(rung):  # good enough already: no pause and resume
            self.promoted[rung].add(trial)
            return CONTINUE
        self.waiting[trial] = rung
        return PAUSE

    def promotable(self) -> list[str]:
        """Paused trials that have earned their next rung: the highest rung first (closest
        to a finished trial), the best first."""
        out = []
        for rung in reversed(self.rungs):
            out += [
                t
                for t in self.top(rung)
                if t not in self.promoted[rung] and self.waiting.get(t) == rung
            ]
        return out

    def promote(self, trial: str) -> None:
        """Send a paused trial on past its rung."""
        self.promoted[self.waiting.pop(trial)].add(trial)

    def forget(self, trial: str) -> None:
        """A trial that ended (stopped, failed) no longer waits for anything."""
        self.waiting.pop(trial, None)

    def drain(self) -> tuple[str | None, list[str]]:
        """No new configuration will come: (a trial to promote, or None; trials to stop).

        The highest rung with paused trials promotes its best if it never promoted as many
        as floor(n / rf) (at least one); otherwise its paused trials have lost for good."""
        for rung in reversed(self.rungs):
            left = sorted(
                (t for t, r in self.waiting.items() if r == rung),
                key=lambda t: self._key(self.scores[rung][t]),
            )
            if not left:
                continue
            if len(self.promoted[rung]) < max(1, len(self.scores[rung]) // self.reduction_factor):
                return left[0], []
            return None, left
        return None, []

    def gate(self, concurrency: int) -> int:
        """How many trials the searcher may have alive (running, pending or paused): room
        for ``concurrency`` running ones, none new while a paused trial is due to resume."""
        return concurrency + len(self.waiting) - len(self.promotable())

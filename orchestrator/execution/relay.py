"""The one-producer bridge from a multi-worker Train run's reports to its Tune trial. Pure code.

Why the project owns this bridge instead of using Ray's ``TuneReportCallback``
(``ray/tune/integration/ray_train.py`` with ``ray/train/_internal/session.py``, Ray 2.60):

Ray's bridge has two producers for the trial's one-slot result queue. The Train controller's
callback puts each report into an inter-actor queue; the trial's *main* thread, inside
``_TrainSession.get_next``, takes an item from it, releases ``continue_lock`` and calls
``report`` itself, which puts the item into ``result_queue`` (size 1) and waits on the lock.
Meanwhile the trial's *training* thread, once ``TorchTrainer.fit()`` returns, reports
``RESULT_DUPLICATE`` into the same ``result_queue``. When the controller's last report is
still in the inter-actor queue as ``fit()`` returns (the controller put it, then shut the
worker group down), the training thread's ``RESULT_DUPLICATE`` fills the queue (and takes the
lock release meant for the relayed report); the main thread then relays the last epoch into
the full queue and blocks on itself: it is the queue's only consumer. The trial stays
RUNNING forever, its last result one epoch short. Timing decides it: about one sweep in ten
with 2-worker trials hung on a 2-core machine.

Here the controller's callback (``ray_train.ReportRelay``) puts each report into a queue the
project owns; ``fit()`` runs in a thread of its own; the trial's training thread is the only
caller of ``tune.report`` (``relay`` below), and it returns only once ``fit()`` has returned
*and* the queue is empty. ``fit()`` cannot return before the callback's last ``put`` did (the
callback runs inside the controller's run), so "fit done, then drain" relays every report,
and ``RESULT_DUPLICATE`` is reported after the last of them by the same thread: one producer,
in order, nothing left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

POLL_S = 0.2  # how often the relay looks at whether fit() has returned while nothing arrives


def relay(
    take: Callable[[float], dict[str, Any] | None],
    done: Callable[[], bool],
    report: Callable[[dict[str, Any]], None],
    poll_s: float = POLL_S,
) -> int:
    """Hand every report ``take`` yields to ``report``, in order, until ``done()`` and the
    queue is drained. ``take(timeout)`` returns the next report or None when none came in
    ``timeout`` seconds. Returns how many reports were relayed."""
    n = 0
    while True:
        item = take(poll_s)
        if item is not None:
            report(item)
            n += 1
            continue
        if done():
            # fit() has returned, so every put has happened: what is left is all there is
            while (item := take(0.0)) is not None:
                report(item)
                n += 1
            return n

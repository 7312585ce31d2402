"""The trial's own Train-to-Tune relay and the stall watchdog's decision. Fast tier: threads
and a plain queue stand in for the Train controller and Ray's queue actor."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from orchestrator.analysis import progress
from orchestrator.execution import relay


def _take(q: queue.Queue, delay: float = 0.0) -> Any:
    def take(timeout: float) -> dict[str, Any] | None:
        time.sleep(delay)
        try:
            return q.get(block=timeout > 0, timeout=timeout if timeout > 0 else None)
        except queue.Empty:
            return None

    return take


def test_every_report_is_relayed_in_order_even_when_taken_after_fit_returned() -> None:
    # the controller puts its last reports and fit() returns at once; the relay lags behind
    # (the interleaving that hung Ray's bridge): nothing may be lost or reordered
    q: queue.Queue = queue.Queue(maxsize=1)
    fit = threading.Thread(target=lambda: [q.put({"epoch": e}) for e in range(1, 6)])
    fit.start()
    got: list[int] = []
    n = relay.relay(
        _take(q, delay=0.05),
        lambda: not fit.is_alive(),
        lambda row: got.append(row["epoch"]),
        poll_s=0.01,
    )
    assert got == [1, 2, 3, 4, 5] and n == 5
    assert q.empty()


def test_a_report_landing_between_the_last_poll_and_the_done_check_is_drained() -> None:
    q: queue.Queue = queue.Queue()
    calls = {"n": 0}

    def take(timeout: float) -> dict[str, Any] | None:
        calls["n"] += 1
        if calls["n"] == 1:  # the poll sees nothing; the last report arrives right after
            q.put({"epoch": 7})
            return None
        return q.get_nowait() if not q.empty() else None

    got: list[dict[str, Any]] = []
    relay.relay(take, lambda: True, got.append, poll_s=0.01)
    assert got == [{"epoch": 7}]


def test_the_relay_waits_while_fit_runs_and_nothing_arrives() -> None:
    q: queue.Queue = queue.Queue()
    done = threading.Event()
    got: list[int] = []

    def late() -> None:
        time.sleep(0.3)
        q.put({"epoch": 1})
        done.set()

    threading.Thread(target=late).start()
    relay.relay(_take(q), done.is_set, lambda row: got.append(row["epoch"]), poll_s=0.02)
    assert got == [1]


def test_stalled_names_the_longest_silent_trial_only_past_the_timeout() -> None:
    seen = {"a": 100.0, "b": 40.0, "c": 90.0}
    assert progress.stalled(seen, now=130.0, timeout=100.0) is None
    assert progress.stalled(seen, now=150.0, timeout=100.0) == ("b", 110.0)
    assert progress.stalled({}, now=1e9, timeout=1.0) is None


def test_stall_message_says_which_trial_its_values_and_where_it_stopped() -> None:
    text = progress.stall_message("f00d_00003", {"model.dropout": 0.25}, 11, 12, 660.0, 600)
    assert "trial f00d_00003" in text and "model.dropout=0.2500" in text
    assert "epoch 11 of 12" in text and "11.0 min" in text and "sweep.stall_timeout" in text
    assert "no result yet" in progress.stall_message("t", {}, 0, 12, 700.0, 600)

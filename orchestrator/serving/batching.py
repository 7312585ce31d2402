"""Micro-batching for the model server: the rows of concurrent requests go through the model
as one forward pass.

One forward pass over 64 rows costs little more than over one (the weights are read once,
the matrix products are wider), so under concurrency the server's throughput is bounded by
HTTP, not by the model. The policy is the adaptive one of inference servers (Triton's
dynamic batcher, Ray Serve's ``@serve.batch``):

- an idle model waits at most ``window_s`` for company, then runs what it has; a batch that
  reaches ``max_rows`` goes at once;
- while a pass runs, requests queue up; when it ends, everything queued (up to ``max_rows``)
  goes at once. Under load the batch therefore grows to whatever arrived during one pass, so
  a slow model gets big, efficient batches and a fast one small, low-latency ones.

Forward passes run one at a time. A slow one (on average over ``inline_below_s``) runs on a
dedicated thread (torch releases the GIL there), so the event loop keeps parsing the next
requests while the model computes. A fast one runs on the event loop itself: handing it to
a thread costs more than the pass, and under load the thread then waits for the GIL.

Rows travel as numpy arrays (cheaper to join and split than tensors); ``fn`` does the
conversion to the model's device and back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

INLINE_BELOW_S = float(os.environ.get("ORCHESTRATOR_INLINE_BELOW_S", "0.001"))
SIZES_KEPT = 10_000  # batch sizes remembered; past it the oldest half goes, so memory stays bounded


@dataclass
class BatchStats:
    """What /metrics reports about batching."""

    batches: int = 0
    rows: int = 0
    sizes: list[int] = field(default_factory=list)  # rows per batch, the last 10,000

    def add(self, rows: int) -> None:
        """Count one forward pass of ``rows`` rows."""
        self.batches += 1
        self.rows += rows
        self.sizes.append(rows)
        if len(self.sizes) > SIZES_KEPT:
            del self.sizes[:5_000]


class MicroBatcher:
    """Gathers the rows of concurrent requests into one forward pass of ``fn``, one pass at
    a time (the policy is in the module's docstring)."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        window_s: float = 0.002,
        max_rows: int = 1024,
        inline_below_s: float = INLINE_BELOW_S,
    ) -> None:
        self.fn, self.window_s, self.max_rows = fn, window_s, max_rows
        self.inline_below_s = inline_below_s
        self.pass_s = 0.0  # moving average of a forward pass, to choose where it runs
        self.stats = BatchStats()
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._rows = 0
        self._timer: asyncio.Handle | None = None
        self._busy = False
        self._task: asyncio.Task | None = None  # held so the running pass is not collected
        # one thread: forward passes never overlap (the model is used by one at a time)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's output for ``x`` (rows x features), computed with others' rows."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((x, future))
        self._rows += len(x)
        if not self._busy:  # while busy, the end of the pass starts the next one
            if self._rows >= self.max_rows:
                self._start()
            elif self._timer is None:  # 0: after the requests that are ready now
                self._timer = (
                    loop.call_later(self.window_s, self._start)
                    if self.window_s > 0
                    else loop.call_soon(self._start)
                )
        return await future

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy or not self._pending:
            return
        # whole requests, up to max_rows (a single request may be bigger: it goes alone)
        take, rows = 0, 0
        while take < len(self._pending) and (
            take == 0 or rows + len(self._pending[take][0]) <= self.max_rows
        ):
            rows += len(self._pending[take][0])
            take += 1
        batch, self._pending = self._pending[:take], self._pending[take:]
        self._rows -= rows
        self._busy = True
        self._task = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            xs = np.concatenate([x for x, _ in batch]) if len(batch) > 1 else batch[0][0]
            if self.pass_s < self.inline_below_s:
                out = self._forward(xs)
            else:
                out = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._forward, xs
                )
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
        else:
            self.stats.add(len(xs))
            start = 0
            for x, future in batch:
                if not future.done():  # its client may have gone
                    future.set_result(out[start : start + len(x)])
                start += len(x)
        finally:
            self._busy = False
            if self._pending:  # they queued during this pass: they have waited enough
                self._start()

    def _forward(self, xs: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.fn(xs)
        took = time.perf_counter() - start
        self.pass_s = took if not self.pass_s else 0.8 * self.pass_s + 0.2 * took
        return out

    def close(self) -> None:
        """Shut the forward thread down without waiting; passes not yet started are cancelled."""
        self._pool.shutdown(wait=False, cancel_futures=True)

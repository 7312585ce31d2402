"""Micro-batching for the model server: the rows of concurrent requests, gathered for a
short window, go through the model as one forward pass.

One forward pass over 64 rows costs little more than over one (the weights are read once,
the matrix products are wider), so under concurrency the server's throughput is bounded by
HTTP, not by the model. A request waits at most ``window_s`` for company; a batch that
reaches ``max_rows`` goes at once. Forward passes run one at a time on a dedicated thread
(torch releases the GIL there), so the event loop keeps parsing the next requests while the
model computes: the next batch fills during the current pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class BatchStats:
    """What /metrics reports about batching."""

    batches: int = 0
    rows: int = 0
    sizes: list[int] = field(default_factory=list)  # rows per batch, the last 10,000

    def add(self, rows: int) -> None:
        self.batches += 1
        self.rows += rows
        self.sizes.append(rows)
        if len(self.sizes) > 10_000:
            del self.sizes[:5_000]


class MicroBatcher:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], window_s: float = 0.002,
                 max_rows: int = 1024) -> None:
        self.fn, self.window_s, self.max_rows = fn, window_s, max_rows
        self.stats = BatchStats()
        self._pending: list[tuple[torch.Tensor, asyncio.Future]] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Task | None = None
        # one thread: forward passes never overlap (the model is used by one at a time)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")

    async def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` (rows x features), computed with others' rows."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((x, future))
        self._rows += len(x)
        if self._rows >= self.max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._rows = self._pending, [], 0
        previous = self._running
        self._running = asyncio.get_running_loop().create_task(self._run(batch, previous))

    async def _run(self, batch: list[tuple[torch.Tensor, asyncio.Future]],
                   previous: asyncio.Task | None) -> None:
        if (previous is not None and not previous.done()
                and previous.get_loop() is asyncio.get_running_loop()):
            await asyncio.shield(previous)  # in order, one pass at a time
        xs = torch.cat([x for x, _ in batch]) if len(batch) > 1 else batch[0][0]
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._pool, self._forward, xs)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        self.stats.add(len(xs))
        start = 0
        for x, future in batch:
            if not future.done():  # its client may have gone
                future.set_result(out[start:start + len(x)])
            start += len(x)

    def _forward(self, xs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(xs)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


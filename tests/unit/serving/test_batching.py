"""The micro-batcher: concurrent requests share forward passes, each gets its own rows back."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from orchestrator.serving.batching import MicroBatcher

W = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)


def _model(x: np.ndarray) -> np.ndarray:
    return np.tanh(x @ W)


@pytest.mark.parametrize("inline_below_s", [0.0, 1.0])  # on the forward thread, on the loop
def test_concurrent_requests_share_a_pass_and_get_their_own_rows(inline_below_s: float) -> None:
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return _model(x)

    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(40)]

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(fn, window_s=0.05, inline_below_s=inline_below_s)
        try:
            return await asyncio.gather(*(batcher(x) for x in xs))
        finally:
            batcher.close()

    outs = asyncio.run(main())
    for x, out in zip(xs, outs, strict=True):
        assert np.allclose(out, _model(x), atol=1e-6)
    assert sum(calls) == sum(len(x) for x in xs) and len(calls) <= 3  # not 40 passes


def test_requests_that_arrive_during_a_pass_go_together_in_the_next() -> None:
    calls: list[int] = []

    def slow(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        time.sleep(0.3)
        return x

    async def main() -> None:
        batcher = MicroBatcher(slow, window_s=0.001, inline_below_s=0.0)
        first = asyncio.ensure_future(batcher(np.ones((1, 2))))
        await asyncio.sleep(0.05)  # the first pass is running now
        later = []
        for _ in range(10):  # spread over 0.1 s: ten windows' worth, yet one batch
            later.append(asyncio.ensure_future(batcher(np.ones((2, 2)))))
            await asyncio.sleep(0.01)
        await asyncio.gather(first, *later)
        batcher.close()

    asyncio.run(main())
    assert calls == [1, 20]


def test_a_full_batch_goes_without_waiting_out_the_window() -> None:
    async def main() -> float:
        batcher = MicroBatcher(lambda x: x * 2, window_s=10.0, max_rows=4)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(batcher(np.ones((2, 1))) for _ in range(2)))
        batcher.close()
        return loop.time() - start

    assert asyncio.run(main()) < 5.0


def test_no_pass_takes_more_than_max_rows_of_whole_requests() -> None:
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(fn, window_s=0.05, max_rows=5)
        try:
            return await asyncio.gather(*(batcher(np.full((2, 1), i)) for i in range(6)))
        finally:
            batcher.close()

    outs = asyncio.run(main())
    assert all(np.all(out == i) for i, out in enumerate(outs))
    assert max(calls) <= 5 and sum(calls) == 12


@pytest.mark.parametrize("inline_below_s", [0.0, 1.0])
def test_a_failing_pass_fails_every_request_in_it(inline_below_s: float) -> None:
    def fn(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    async def main() -> list:
        batcher = MicroBatcher(fn, window_s=0.01, inline_below_s=inline_below_s)
        try:
            return await asyncio.gather(
                *(batcher(np.ones((1, 2))) for _ in range(3)), return_exceptions=True
            )
        finally:
            batcher.close()

    results = asyncio.run(main())
    assert len(results) == 3 and all(isinstance(r, RuntimeError) for r in results)


def test_a_slow_model_moves_to_the_forward_thread() -> None:
    import threading

    where: list[str] = []

    def fn(x: np.ndarray) -> np.ndarray:
        where.append(threading.current_thread().name)
        time.sleep(0.02)
        return x

    async def main() -> None:
        batcher = MicroBatcher(fn, window_s=0.001, inline_below_s=0.005)
        for _ in range(3):
            await batcher(np.ones((1, 1)))
        batcher.close()

    asyncio.run(main())
    # the first pass runs inline (nothing measured yet); once it is known to be slow, no more
    assert where[0] == "MainThread" and all(w.startswith("forward") for w in where[1:])


def test_stats_count_batches_and_rows() -> None:
    async def main() -> MicroBatcher:
        batcher = MicroBatcher(lambda x: x, window_s=0.02)
        await asyncio.gather(*(batcher(np.ones((2, 1))) for _ in range(5)))
        batcher.close()
        return batcher

    b = asyncio.run(main())
    assert b.stats.rows == 10 and 1 <= b.stats.batches < 5 and sum(b.stats.sizes) == 10


def test_a_zero_window_still_batches_what_is_ready_at_once() -> None:
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x

    async def main() -> None:
        batcher = MicroBatcher(fn, window_s=0.0)
        await asyncio.gather(*(batcher(np.ones((1, 1))) for _ in range(32)))
        await batcher(np.ones((1, 1)))  # alone: goes without waiting for company
        batcher.close()

    asyncio.run(main())
    assert calls == [32, 1]

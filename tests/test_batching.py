"""The micro-batcher: concurrent requests share forward passes, each gets its own rows back."""

from __future__ import annotations

import asyncio

import torch

from orchestrator.batching import MicroBatcher


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_concurrent_requests_share_a_pass_and_get_their_own_rows() -> None:
    net = _model().eval()
    calls: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return net(x)

    xs = [torch.randn(1 + i % 3, 8) for i in range(40)]

    async def main() -> list[torch.Tensor]:
        batcher = MicroBatcher(fn, window_s=0.05)
        try:
            return await asyncio.gather(*(batcher(x) for x in xs))
        finally:
            batcher.close()

    outs = asyncio.run(main())
    with torch.no_grad():
        for x, out in zip(xs, outs, strict=True):
            assert torch.allclose(out, net(x), atol=1e-6)
    assert sum(calls) == sum(len(x) for x in xs) and len(calls) <= 3  # not 40 passes


def test_a_full_batch_goes_without_waiting_out_the_window() -> None:
    async def main() -> float:
        batcher = MicroBatcher(lambda x: x * 2, window_s=10.0, max_rows=4)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(batcher(torch.ones(2, 1)) for _ in range(2)))
        batcher.close()
        return loop.time() - start

    assert asyncio.run(main()) < 5.0


def test_a_failing_pass_fails_every_request_in_it() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    async def main() -> list:
        batcher = MicroBatcher(fn, window_s=0.01)
        try:
            return await asyncio.gather(*(batcher(torch.ones(1, 2)) for _ in range(3)),
                                        return_exceptions=True)
        finally:
            batcher.close()

    results = asyncio.run(main())
    assert len(results) == 3 and all(isinstance(r, RuntimeError) for r in results)


def test_stats_count_batches_and_rows() -> None:
    async def main() -> MicroBatcher:
        batcher = MicroBatcher(lambda x: x, window_s=0.02)
        await asyncio.gather(*(batcher(torch.ones(2, 1)) for _ in range(5)))
        batcher.close()
        return batcher

    b = asyncio.run(main())
    assert b.stats.rows == 10 and 1 <= b.stats.batches < 5 and sum(b.stats.sizes) == 10

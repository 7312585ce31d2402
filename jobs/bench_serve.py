"""`python -m jobs.bench serve`: the model server under 64 concurrent clients on loopback.

Three servers, each in its own process (uvicorn, one worker, one torch thread), loaded in
turn by the same client (asyncio + aiohttp, 64 connections, a fixed time each):
(a) naive: one ``torch.tensor`` and one forward pass per request, as in the common FastAPI
example; (b) ours (``orchestrator.serve.create_app``: micro-batching); (c) the HTTP ceiling:
the same JSON parsed and validated, a constant returned. Two models: an MLP
64-2048-2048-10, whose forward pass dominates (``throughput_ratio`` = ours / naive), and the
digits champion's shape (64-256-256-10), where HTTP dominates (``ceiling_fraction`` = ours /
ceiling).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from orchestrator.serve import PredictRequest  # module level: FastAPI resolves it by name

CLIENTS = int(os.environ.get("BENCH_CLIENTS", 64))
SECONDS = float(os.environ.get("BENCH_SECONDS", 8))
MODELS = {"big": [2048, 2048], "small": [256, 256]}


def _net(hidden: list[int]) -> Any:
    import numpy as np
    import torch

    from orchestrator import config, model

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    net = model.build(config.ModelConfig(hidden=hidden), x.mean(0), x.std(0), 10)
    return model.WithProbabilities(net).eval()


def app(kind: str, size: str) -> Any:
    """The server under test (run in a subprocess)."""
    import torch
    from fastapi import FastAPI

    from orchestrator import serve

    torch.set_num_threads(1)
    net = _net(MODELS[size])
    if kind == "ours":
        served = serve.Served(net, list(range(10)), 64, f"bench:{size}", "1", "")
        return serve.create_app(served, max_batch=1024)
    naive = FastAPI()

    if kind == "naive":
        @naive.post("/predict")
        def predict(req: PredictRequest) -> dict[str, Any]:
            with torch.no_grad():
                probs = net(torch.tensor(req.features, dtype=torch.float32))
            return {"predictions": probs.argmax(1).tolist(), "probabilities": probs.tolist()}
    else:  # the ceiling: parse and validate the same JSON, answer a constant
        answer = {"predictions": [0], "probabilities": [[0.1] * 10]}

        @naive.post("/predict")
        def predict_ceiling(req: PredictRequest) -> dict[str, Any]:
            return answer
    return naive


async def _load(port: int) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms) over SECONDS with CLIENTS connections."""
    import aiohttp

    row = [float(i % 17) for i in range(64)]
    body = {"features": [row]}
    latencies: list[float] = []
    deadline = time.perf_counter() + SECONDS
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{port}/predict", json=body) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - start)
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    latencies.sort()
    return (len(latencies) / SECONDS, statistics.median(latencies) * 1000,
            latencies[int(0.99 * (len(latencies) - 1))] * 1000)


def _measure(kind: str, size: str) -> tuple[float, float, float]:
    import socket

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-m", "jobs.bench_serve", "_server", kind, size,
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break  # it answers (the naive servers have no /health)
            except requests.RequestException:
                assert time.time() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.3)
        return asyncio.run(_load(port))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_serve() -> dict[str, float]:
    figures: dict[str, float] = {}
    print(f"serving benchmark: {CLIENTS} concurrent clients, {SECONDS:.0f} s each, "
          f"{os.cpu_count()} CPUs, one torch thread per server")
    results = {}
    for size in ("big", "small"):
        for kind in ("naive", "ours", "ceiling"):
            rps, p50, p99 = _measure(kind, size)
            results[(kind, size)] = rps
            print(f"  {size:5s} {kind:7s}: {rps:8.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
            figures[f"{size}_{kind}_rps"] = round(rps, 1)
            figures[f"{size}_{kind}_p50_ms"] = round(p50, 2)
            figures[f"{size}_{kind}_p99_ms"] = round(p99, 2)
    figures["throughput_ratio"] = round(results[("ours", "big")] / results[("naive", "big")], 3)
    figures["ceiling_fraction"] = round(results[("ours", "small")]
                                        / results[("ceiling", "small")], 3)
    print(f"  ours / naive (big model): {figures['throughput_ratio']:.2f}x; ours / ceiling "
          f"(small model): {figures['ceiling_fraction']:.2f}")
    return figures


if __name__ == "__main__" and sys.argv[1:2] == ["_server"]:
    import uvicorn

    kind, size, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
    uvicorn.run(app(kind, size), host="127.0.0.1", port=port, log_level="error")

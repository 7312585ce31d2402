"""`python -m jobs.bench serve`: the model server under 64 concurrent clients on loopback.

Three servers, each in its own process (uvicorn, one worker, one torch thread), loaded in
turn by the same client with 64 connections for a fixed time each: ``wrk`` (C, one thread;
``apt-get install wrk``) when it is on the PATH, else an asyncio + aiohttp client, which
needs most of a core itself and so understates every server alike. The servers:
(a) naive: a pydantic ``list[list[float]]`` body, one ``torch.tensor`` and one forward pass
per request, as in the common FastAPI example, written with ``def`` and with ``async def``
(the faster of the two is the baseline); (b) ours (``orchestrator.serving.serve.create_app``:
micro-batching); (c) the HTTP ceiling: the same JSON parsed and checked the way ours does
(``serve.parse_features``), a constant returned. All three run with the HTTP limits of
``orchestrator serve`` (``serve.limits``). Two models: an MLP
64-2048-2048-10, whose forward pass dominates (``throughput_ratio`` = ours / naive), and the
digits champion's shape (64-256-256-10), where HTTP dominates (``ceiling_fraction`` = ours /
ceiling).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Request  # module level, as PredictRequest: annotations are resolved here
from pydantic import BaseModel, Field

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class PredictRequest(BaseModel):
    """The naive servers' body: rows of finite floats, as the common FastAPI example takes it."""

    features: list[list[FiniteFloat]] = Field(..., min_length=1)


CLIENTS = int(os.environ.get("BENCH_CLIENTS", 64))
SECONDS = float(os.environ.get("BENCH_SECONDS", 6))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
MODELS = {"big": [2048, 2048], "small": [256, 256]}


def _net(hidden: list[int]) -> Any:
    import numpy as np
    import torch

    from orchestrator import config
    from orchestrator.core import model

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    net = model.build(config.ModelConfig(hidden=hidden), x.mean(0), x.std(0), 10)
    return model.WithProbabilities(net).eval()


def app(kind: str, size: str) -> Any:
    """The server under test (run in a subprocess)."""
    import torch
    from fastapi import FastAPI, Response

    from orchestrator.serving import serve

    torch.set_num_threads(1)
    net = _net(MODELS[size])
    if kind == "ours":
        served = serve.Served(net, list(range(10)), 64, f"bench:{size}", "1", "")
        return serve.create_app(served, max_batch=1024)
    naive = FastAPI()

    if kind == "naive_sync":

        @naive.post("/predict")
        def predict(req: PredictRequest) -> dict[str, Any]:
            with torch.no_grad():
                probs = net(torch.tensor(req.features, dtype=torch.float32))
            return {"predictions": probs.argmax(1).tolist(), "probabilities": probs.tolist()}
    elif kind == "naive_async":

        @naive.post("/predict")
        async def predict_async(req: PredictRequest) -> dict[str, Any]:
            with torch.no_grad():
                probs = net(torch.tensor(req.features, dtype=torch.float32))
            return {"predictions": probs.argmax(1).tolist(), "probabilities": probs.tolist()}
    else:  # the ceiling: parse and check the same JSON as ours, answer a constant
        answer = json.dumps({"predictions": [0], "probabilities": [[0.1] * 10]}).encode()

        @naive.post("/predict")
        async def predict_ceiling(request: Request) -> Response:
            serve.parse_features(await request.body(), 64, 1024)
            return Response(answer, media_type="application/json")

    return naive


BODY = {"features": [[float(i % 17) for i in range(64)]]}


def _wrk(port: int) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms) over SECONDS with CLIENTS connections, by wrk."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f"wrk.method = 'POST'\nwrk.body = '{json.dumps(BODY)}'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
        )
    try:
        out = subprocess.run(
            # a long timeout: the naive async server keeps some clients waiting for seconds,
            # and a request wrk gave up on would not count for it
            [
                "wrk",
                "-t1",
                f"-c{CLIENTS}",
                f"-d{SECONDS:g}s",
                "--timeout",
                "60s",
                "--latency",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}/predict",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=SECONDS + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    assert "Non-2xx" not in out and "Socket errors" not in out, out

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, ms("50%"), ms("99%")


async def _load(port: int) -> tuple[float, float, float]:
    """The same with an asyncio + aiohttp client (where wrk is not installed)."""
    import aiohttp

    body = BODY
    latencies: list[float] = []
    deadline = time.perf_counter() + SECONDS
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{port}/predict", json=body) as r:
                    await r.read()
                    assert r.status == HTTPStatus.OK, r.status
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    latencies.sort()
    return (
        len(latencies) / SECONDS,
        statistics.median(latencies) * 1000,
        latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    )


def _start(kind: str, size: str) -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.bench_serve", "_server", kind, size, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def _wait(proc: subprocess.Popen, port: int) -> None:
    import requests

    deadline = time.time() + 120
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return  # it answers (the naive servers have no /health)
        except requests.RequestException:
            assert time.time() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.3)


KINDS = ("naive_sync", "naive_async", "ours", "ceiling")


def bench_serve() -> dict[str, float]:
    """Every server kind, both models, best of ``ROUNDS``: req/s, latencies and the ratios."""
    figures: dict[str, float] = {}
    client = "wrk" if shutil.which("wrk") else "aiohttp (no wrk on the PATH: figures understated)"
    print(
        f"serving benchmark: {CLIENTS} concurrent clients ({client}), {SECONDS:g} s per "
        f"load, best of {ROUNDS} rounds, {os.cpu_count()} CPUs, one torch thread per server"
    )
    load = _wrk if shutil.which("wrk") else (lambda port: asyncio.run(_load(port)))
    results: dict[tuple[str, str], float] = {}
    for size in ("big", "small"):
        # all four servers up at once (an idle one costs no CPU), loaded in turn, round after
        # round: a slow stretch of the machine then hits every kind alike, and the best round
        # of each is kept
        servers = {kind: _start(kind, size) for kind in KINDS}
        best: dict[str, tuple[float, float, float]] = {}
        try:
            for proc, port in servers.values():
                _wait(proc, port)
            for _ in range(ROUNDS):
                for kind, (_, port) in servers.items():
                    got = load(port)
                    if got[0] > best.get(kind, (0.0, 0.0, 0.0))[0]:
                        best[kind] = got
        finally:
            for proc, _ in servers.values():
                proc.terminate()
            for proc, _ in servers.values():
                proc.wait(timeout=30)
        for kind in KINDS:
            rps, p50, p99 = best[kind]
            results[(kind, size)] = rps
            print(f"  {size:5s} {kind:11s}: {rps:8.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
            figures[f"{size}_{kind}_rps"] = round(rps, 1)
            figures[f"{size}_{kind}_p50_ms"] = round(p50, 2)
            figures[f"{size}_{kind}_p99_ms"] = round(p99, 2)
        # the naive handler both ways FastAPI examples write it: `def` (a thread per request
        # from the pool) and `async def` (on the event loop); the faster is the baseline
        results[("naive", size)] = max(
            results[("naive_sync", size)], results[("naive_async", size)]
        )
        figures[f"{size}_naive_rps"] = round(results[("naive", size)], 1)
    figures["throughput_ratio"] = round(results[("ours", "big")] / results[("naive", "big")], 3)
    figures["ceiling_fraction"] = round(
        results[("ours", "small")] / results[("ceiling", "small")], 3
    )
    print(
        f"  ours / naive (big model): {figures['throughput_ratio']:.2f}x; ours / ceiling "
        f"(small model): {figures['ceiling_fraction']:.2f}"
    )
    return figures


if __name__ == "__main__" and sys.argv[1:2] == ["_server"]:
    import uvicorn

    from orchestrator import config
    from orchestrator.serving import serve

    kind, size, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
    # every server with the limits `orchestrator serve` runs with (header cap and read
    # deadlines, connection cap, keep-alive), so the ratios compare like with like
    uvicorn.run(
        app(kind, size),
        host="127.0.0.1",
        port=port,
        log_level="error",
        **serve.limits(config.ServeConfig()).uvicorn(),
    )

"""`orchestrator serve --ray --replicas N`: the model server of ``serve.create_app`` as a Ray
Serve deployment, scaled across the cluster's nodes.

Each replica loads the model itself (in its ``__init__``, on its own node, from MLflow) and
builds the same FastAPI app as the single-process server, late-bound through
``__serve_build_asgi_app__``: the app holds a live model and a thread pool, which are not
pickled from the driver. Batching is Ray Serve's ``@serve.batch`` (requests gathered per
replica for at most ``serve.window_ms``) instead of our micro-batcher; everything else
(validation, API key, /metrics, alias polling) is the same code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ray import serve
from starlette.types import ASGIApp

from orchestrator import config as config_mod
from orchestrator.config import ServeConfig
from orchestrator.execution import runtime
from orchestrator.serving import serve as serve_mod
from orchestrator.tracking import location

APP_NAME = "orchestrator"
MAX_REQUESTS_PER_BATCH = 256


class RayBatcher:
    """The ``serve.Batcher`` protocol on Ray Serve's ``@serve.batch``."""

    def __init__(
        self, forward: Callable[[np.ndarray], np.ndarray], window_s: float, max_rows: int
    ) -> None:
        # one thread: the replica's event loop keeps taking requests during a pass, and
        # passes never overlap (serve.batch runs one batch at a time by default)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")
        pool = self._pool

        @serve.batch(
            max_batch_size=min(MAX_REQUESTS_PER_BATCH, max_rows), batch_wait_timeout_s=window_s
        )
        async def infer(xs: list[np.ndarray]) -> list[np.ndarray]:
            joined = np.concatenate(xs) if len(xs) > 1 else xs[0]
            out = await asyncio.get_running_loop().run_in_executor(pool, forward, joined)
            return np.split(out, np.cumsum([len(x) for x in xs])[:-1])

        self._infer = infer

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's output for ``x``, computed in a batch that ``@serve.batch`` gathered."""
        return await self._infer(x)

    def close(self) -> None:
        """Shut the forward thread down without waiting; passes not yet started are cancelled."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@serve.ingress()  # late-bound: __serve_build_asgi_app__ builds the app on the replica
class ModelServer:
    """One Ray Serve replica: loads the model on its own node and serves it with the app of
    ``serve.create_app``."""

    def __init__(
        self, model_uri: str, tracking_uri: str, opts: ServeConfig, api_key_sha256: str | None
    ) -> None:
        serve_mod.no_pickles()  # also in the replica's runtime_env: before anything imports
        self.served = serve_mod.load(model_uri, tracking_uri, opts.max_model_mb, opts.factories)
        self.opts, self.api_key_sha256 = opts, api_key_sha256

    def __serve_build_asgi_app__(self) -> ASGIApp:
        served, opts = self.served, self.opts
        return serve_mod.create_app(
            served,
            opts.max_batch,
            opts.window_ms,
            reload=serve_mod.reloader(
                served.model_uri, served.version, opts.max_model_mb, opts.factories
            ),
            poll_s=opts.poll_s,
            make_batcher=RayBatcher,
            api_key_sha256=self.api_key_sha256,
        )


def application(
    model_uri: str, tracking_uri: str, opts: ServeConfig, api_key: str | None = None
) -> Any:
    """The bound Ray Serve application (for ``serve.run``). Ray keeps a deployment's
    arguments in its own store (and shows its config): the replicas get the API key's
    digest, never the key, and the tracking URI without ``user:password@`` (MLflow's client
    reads ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` from the node's
    environment instead)."""
    deployment = serve.deployment(
        name="model",
        num_replicas=opts.replicas,
        ray_actor_options={
            "num_cpus": opts.replica_cpus,
            "num_gpus": opts.replica_gpus,
            # MLflow's switch set before the replica imports anything (a second lock: the
            # replica loads only the pickle-free form)
            "runtime_env": {"env_vars": {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}},
        },
        # a replica batches what it holds: let it hold enough for full batches
        max_ongoing_requests=512,
    )(ModelServer)
    bare, _, _ = config_mod.split_credentials(tracking_uri)
    return deployment.bind(
        model_uri,
        bare,
        opts.model_copy(update={"api_key": None}),
        serve_mod.key_sha256(api_key) if api_key else None,
    )


def run(
    model_uri: str, opts: ServeConfig, tracking_uri: str | None, api_key: str | None = None
) -> None:
    """Start Ray Serve's HTTP proxy on ``opts.host:opts.port``, deploy ``opts.replicas``,
    and serve until SIGINT/SIGTERM. ``serve.Refused`` before anything starts when the
    version is not servable."""
    import ray

    serve_mod.no_pickles()
    # without its credentials, which go to MLflow's variables: a Ray started here passes this
    # environment on to the replicas (on a cluster, the nodes' own environment holds them)
    uri = location.bare_uri(tracking_uri) if tracking_uri else location.resolve_uri(None)
    replicas, cpus = opts.replicas, opts.replica_cpus
    runtime.init_ray()
    if (
        ray.available_resources().get("CPU", 0) + 1e-9 < replicas * cpus
        and ray.cluster_resources().get("CPU", 0) + 1e-9 < replicas * cpus
    ):
        raise SystemExit(
            f"serve.replicas: {replicas} replicas x {cpus} CPU do not fit "
            f"the cluster's {ray.cluster_resources().get('CPU', 0):g} CPUs; lower "
            "--replicas or serve.replica_cpus"
        )
    # the same checks the replicas make, here first: a refused version is a clear error
    # now, not replicas failing to start over and over
    served = serve_mod.load(model_uri, uri, opts.max_model_mb, opts.factories)
    # Ray Serve's proxy is its own uvicorn: of our HTTP limits it takes only these two
    # (no header cap, no read deadlines, no connection cap: see docs/serving.md)
    serve.start(
        http_options={
            "host": opts.host,
            "port": opts.port,
            "request_timeout_s": opts.body_timeout_s,
            "keep_alive_timeout_s": max(1, round(opts.keepalive_s)),
        }
    )
    stop = {"now": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        serve.run(application(model_uri, uri, opts, api_key), name=APP_NAME, route_prefix="/")
        print(
            f"serving {model_uri} (version {served.version or '?'}) on Ray Serve, {replicas} "
            "replicas, on "
            f"http://{opts.host}:{opts.port}  POST /predict /reload  GET /health /ready "
            "/metadata /metrics" + ("  (API key required)" if api_key else ""),
            flush=True,
        )
        while not stop["now"]:
            time.sleep(0.5)
    finally:
        serve.shutdown()
        if os.environ.get("RAY_ADDRESS") in (None, "", "local"):
            ray.shutdown()

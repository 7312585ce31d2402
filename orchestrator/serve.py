"""HTTP serving of a registered model: FastAPI on uvicorn, 127.0.0.1 by default."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from orchestrator.batching import MicroBatcher
from orchestrator.metrics_text import ServerMetrics

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class PredictRequest(BaseModel):
    features: list[list[FiniteFloat]] = Field(
        ..., min_length=1, description="rows of raw feature values, as in the training Parquet")


class PredictResponse(BaseModel):
    predictions: list[Any]
    probabilities: list[list[float]]


@dataclass
class Served:
    net: torch.nn.Module  # raw features in, class probabilities out
    classes: list
    num_features: int
    model_uri: str
    version: str = ""
    run_id: str = ""


def load(model_uri: str, tracking_uri: str | None = None) -> Served:
    """The model behind ``model_uri``, rebuilt from its plain weights and config (``torch.load
    (weights_only=True)``: no code is unpickled). A model logged before the weights were
    (no ``extra_files/model.json``) loads its torch.export program instead, which holds no
    pickled code either."""
    import mlflow

    from orchestrator import model, tracking

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    version, run_id = resolve(model_uri)
    # a fixed version, so the weights and the version reported are the same model even if
    # the alias moves meanwhile
    fixed = _fixed(model_uri, version)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=fixed))
    extra = folder / "extra_files"
    if (extra / tracking.MODEL_FILE).is_file():
        net, spec = tracking.load_weights(extra)
        return Served(model.WithProbabilities(net).eval(), list(spec["classes"]),
                      int(spec["num_features"]), model_uri, version, run_id)
    meta = mlflow.models.get_model_info(fixed).metadata or {}
    net = mlflow.pytorch.load_model(fixed, map_location="cpu")
    return Served(net, list(meta["classes"]), int(meta["num_features"]), model_uri, version,
                  run_id)


def resolve(model_uri: str) -> tuple[str, str]:
    """(version, run id) that ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names now;
    ("", "") for other URIs."""
    from mlflow.tracking import MlflowClient

    if not model_uri.startswith("models:/"):
        return "", ""
    ref = model_uri[len("models:/"):]
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, number = ref.rsplit("/", 1)
        mv = client.get_model_version(name, number)
    return str(mv.version), str(mv.run_id or "")


def _fixed(model_uri: str, version: str) -> str:
    if version and "@" in model_uri:
        return f"{model_uri.split('@', 1)[0]}/{version}"
    return model_uri


def reloader(model_uri: str, current: str) -> Callable[[], Served | None]:
    """For ``create_app``: the model again when its alias has moved to another version."""
    seen = {"version": current}

    def reload() -> Served | None:
        version, _ = resolve(model_uri)
        if not version or version == seen["version"]:
            return None
        served = load(model_uri)
        seen["version"] = served.version
        return served
    return reload


@dataclass
class State:
    """What the app serves now: swapped whole when the alias moves (requests in flight
    finish on the model they started with)."""

    served: Served
    batcher: MicroBatcher
    version: str


def _state(served: Served, window_s: float, max_rows: int, metrics: ServerMetrics) -> State:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = served.net.to(device).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = net(x.to(device, non_blocking=True)).float().cpu()
        metrics.batch(len(x))
        return out

    version = served.model_uri.rsplit("/", 1)[-1]
    return State(served, MicroBatcher(forward, window_s, max_rows), served.version or version)


def create_app(served: Served, max_batch: int = 1024, window_ms: float = 2.0,
               api_key: str | None = None, max_body_bytes: int | None = None,
               reload: Callable[[], Served | None] | None = None,
               poll_s: float = 0.0) -> FastAPI:
    """The model server. ``reload`` returns a newer model (or None when the alias has not
    moved): called by ``POST /reload`` and, every ``poll_s`` seconds when set, in the
    background. ``api_key`` guards everything but ``/health``."""
    metrics = ServerMetrics()
    # a row of digits' 64 features is ~600 bytes of JSON; be generous, but bounded
    limit = max_body_bytes or max(1 << 20, max_batch * served.num_features * 32)
    box = {"state": _state(served, window_ms / 1000, max_batch * 4, metrics)}

    async def swap() -> bool:
        if reload is None:
            return False
        newer = await asyncio.get_running_loop().run_in_executor(None, reload)
        if newer is None:
            return False
        old = box["state"]
        box["state"] = _state(newer, window_ms / 1000, max_batch * 4, metrics)
        metrics.reloads += 1
        old.batcher.close()
        return True

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        task = None
        if poll_s > 0 and reload is not None:
            async def poll() -> None:
                while True:
                    await asyncio.sleep(poll_s)
                    try:
                        await swap()
                    except Exception as e:  # noqa: BLE001 - keep serving the model we have
                        print(f"serve: reload failed, still serving the old model: {e}",
                              flush=True)
            task = asyncio.create_task(poll())
        yield
        if task is not None:
            task.cancel()
        box["state"].batcher.close()

    app = FastAPI(title="orchestrator model server", version="1", lifespan=lifespan)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable) -> Any:
        start = time.perf_counter()
        path = request.url.path
        if api_key and path != "/health" and not _authorized(request, api_key):
            response: Any = JSONResponse({"detail": "missing or wrong API key (X-API-Key)"},
                                         status_code=401)
        elif _too_big(request, limit) or (  # read here only when no length was declared
                request.method == "POST" and "content-length" not in request.headers
                and len(await request.body()) > limit):
            response = JSONResponse({"detail": f"body: more than {limit} bytes"},
                                    status_code=413)
        else:
            try:
                response = await call_next(request)
            except Exception as e:  # noqa: BLE001 - a bug answers 500 once, the server stays up
                response = JSONResponse({"detail": f"internal error: {type(e).__name__}"},
                                        status_code=500)
        metrics.request(path if path in KNOWN else "other", response.status_code,
                        time.perf_counter() - start)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes the bad input back; NaN/Infinity there cannot be JSON-encoded and
        # would turn a 422 into a 500. Answer with the field path and message only.
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
                  for e in exc.errors()]
        where = ".".join(detail[0]["loc"][1:]) if detail else "body"
        return JSONResponse({"detail": f"{where}: {detail[0]['msg'] if detail else 'invalid'}",
                             "errors": detail}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready", "model": box["state"].served.model_uri,
                "version": box["state"].version}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        st = box["state"]
        return {"model_uri": st.served.model_uri, "version": st.version,
                "run_id": st.served.run_id, "classes": st.served.classes,
                "input": {"features": st.served.num_features, "dtype": "float32",
                          "max_rows": max_batch},
                "output": {"probabilities": len(st.served.classes)},
                "batching": {"window_ms": window_ms}}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.text(box["state"].version)

    @app.post("/reload")
    async def reload_now() -> dict[str, Any]:
        moved = await swap()
        return {"reloaded": moved, "version": box["state"].version}

    @app.post("/predict", response_model=PredictResponse)
    async def predict(req: PredictRequest) -> PredictResponse:
        st = box["state"]
        rows = req.features
        if len(rows) > max_batch:
            raise HTTPException(413, f"features: {len(rows)} rows, at most {max_batch} per request")
        for i, row in enumerate(rows):
            if len(row) != st.served.num_features:
                raise HTTPException(422, f"features[{i}]: {len(row)} values, the model takes "
                                         f"{st.served.num_features}")
        probs = await st.batcher(torch.tensor(rows, dtype=torch.float32))
        pred = probs.argmax(dim=1).tolist()
        return PredictResponse(predictions=[st.served.classes[i] for i in pred],
                               probabilities=probs.tolist())

    return app


KNOWN = {"/predict", "/health", "/ready", "/metadata", "/metrics", "/reload"}


def _too_big(request: Request, limit: int) -> bool:
    return int(request.headers.get("content-length") or 0) > limit


def _authorized(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key") or request.headers.get(
        "authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), key.encode())


def run(model_uri: str, host: str, port: int, tracking_uri: str | None = None,
        max_batch: int = 1024, window_ms: float = 2.0, api_key: str | None = None,
        poll_s: float = 0.0) -> None:
    import uvicorn

    from orchestrator import config as config_mod
    from orchestrator import tracking

    uri = tracking_uri or tracking.resolve_uri(config_mod.Config())
    served = load(model_uri, uri)
    print(f"serving {model_uri} (version {served.version or '?'}, {len(served.classes)} "
          f"classes, {served.num_features} features) on http://{host}:{port}  POST /predict "
          f"/reload  GET /health /ready /metadata /metrics"
          + ("  (API key required)" if api_key else ""), flush=True)
    app = create_app(served, max_batch, window_ms, api_key,
                     reload=reloader(model_uri, served.version), poll_s=poll_s)
    uvicorn.run(app, host=host, port=port, log_level="warning")

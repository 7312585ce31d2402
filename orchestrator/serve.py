"""HTTP serving of a registered model: FastAPI on uvicorn, 127.0.0.1 by default."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

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


def load(model_uri: str, tracking_uri: str | None = None) -> Served:
    """The model behind ``model_uri``, rebuilt from its plain weights and config (``torch.load
    (weights_only=True)``: no code is unpickled). A model logged before the weights were
    (no ``extra_files/model.json``) loads its torch.export program instead, which holds no
    pickled code either."""
    import mlflow

    from orchestrator import model, tracking

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    extra = folder / "extra_files"
    if (extra / tracking.MODEL_FILE).is_file():
        net, spec = tracking.load_weights(extra)
        return Served(model.WithProbabilities(net).eval(), list(spec["classes"]),
                      int(spec["num_features"]), model_uri)
    meta = mlflow.models.get_model_info(model_uri).metadata or {}
    net = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    return Served(net, list(meta["classes"]), int(meta["num_features"]), model_uri)


def create_app(served: Served, max_batch: int = 1024) -> FastAPI:
    app = FastAPI(title="orchestrator model server", version="1")
    lock = threading.Lock()  # torch modules are not guaranteed thread-safe under concurrency

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes the bad input back; NaN/Infinity there cannot be JSON-encoded and
        # would turn a 422 into a 500. Answer with the field path and message only.
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")}
                  for e in exc.errors()]
        where = ".".join(detail[0]["loc"][1:]) if detail else "body"
        return JSONResponse({"detail": f"{where}: {detail[0]['msg'] if detail else 'invalid'}",
                             "errors": detail}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict", response_model=PredictResponse)
    def predict(req: PredictRequest) -> PredictResponse:
        rows = req.features
        if len(rows) > max_batch:
            raise HTTPException(413, f"features: {len(rows)} rows, at most {max_batch} per request")
        for i, row in enumerate(rows):
            if len(row) != served.num_features:
                raise HTTPException(422, f"features[{i}]: {len(row)} values, the model takes "
                                         f"{served.num_features}")
        x = torch.tensor(rows, dtype=torch.float32)
        with lock, torch.inference_mode():
            probs = served.net(x)
        pred = probs.argmax(dim=1).tolist()
        return PredictResponse(predictions=[served.classes[i] for i in pred],
                               probabilities=probs.tolist())

    return app


def run(model_uri: str, host: str, port: int, tracking_uri: str | None = None,
        max_batch: int = 1024) -> None:
    import uvicorn

    from orchestrator import config as config_mod
    from orchestrator import tracking

    uri = tracking_uri or tracking.resolve_uri(config_mod.Config())
    served = load(model_uri, uri)
    print(f"serving {model_uri} ({len(served.classes)} classes, {served.num_features} features) "
          f"on http://{host}:{port}  POST /predict  GET /health", flush=True)
    uvicorn.run(create_app(served, max_batch), host=host, port=port, log_level="warning")

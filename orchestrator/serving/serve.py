"""HTTP serving of a registered model: FastAPI on uvicorn, 127.0.0.1 by default."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import hmac
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import mlflow
import numpy as np
import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.config import ConfigError, ServeConfig
from orchestrator.core import model, modelfile
from orchestrator.core import task as task_mod
from orchestrator.serving import records
from orchestrator.serving.batching import MicroBatcher
from orchestrator.serving.http_limits import Limits
from orchestrator.serving.metrics_text import ServerMetrics
from orchestrator.tracking import location, registry
from orchestrator.tracking.registry import Refused


class PredictResponse(BaseModel):
    """The answer of /predict, for its OpenAPI schema (the handler writes the JSON itself):
    per row, a class and the class probabilities (classification), 0/1 per label and each
    label's probability (multilabel), or the predicted value(s) (regression)."""

    predictions: list[Any]
    probabilities: list[list[float]] | None = None


@dataclass
class Served:
    """A model ready to serve: the network, its classes and feature count, the registry
    version and run it came from, and its spec (the input schema and the task)."""

    net: torch.nn.Module  # raw encoded rows in, the task's outputs out
    classes: list
    num_features: int
    model_uri: str
    version: str = ""
    run_id: str = ""
    spec: modelfile.Spec | None = None  # None: a classifier of numbers only

    @property
    def task(self) -> str:
        """The task's kind."""
        if self.spec is not None:
            return self.spec.task.kind
        return task_mod.BINARY if len(self.classes) == 2 else task_mod.MULTICLASS  # noqa: PLR2004


MAX_MODEL_MB = 1024.0  # default cap on weights.pt (serve.max_model_mb)


def no_pickles() -> None:
    """MLflow's own switch, as a second lock: this process never unpickles a model even if a
    code path reached MLflow's loaders (``load`` does not call them)."""
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"


def load(
    model_uri: str,
    tracking_uri: str | None = None,
    max_model_mb: float = MAX_MODEL_MB,
    factories: tuple[str, ...] | list[str] = (),
) -> Served:
    """The model behind ``model_uri``, rebuilt from its pickle-free form only: the plain
    tensors of ``extra_files/weights.pt`` (``torch.load(weights_only=True)``) and the
    checked spec of ``extra_files/model.json``. Nothing else of the version is downloaded,
    and MLflow's model loaders (which unpickle) are never called; a model factory is
    imported from this environment only when ``factories`` (``serve.factories``) names it.
    A version without that form, with a bad spec, an untrusted factory or over the size
    caps is ``Refused``."""
    if tracking_uri:
        mlflow.set_tracking_uri(location.bare_uri(tracking_uri))
    net, spec, version, run_id = registry.load(model_uri, int(max_model_mb * (1 << 20)), factories)
    return Served(
        model.Outputs(net, spec.task).eval(),
        spec.classes,
        spec.num_features,
        model_uri,
        version,
        run_id,
        spec,
    )


def reloader(
    model_uri: str,
    current: str,
    max_model_mb: float = MAX_MODEL_MB,
    factories: tuple[str, ...] | list[str] = (),
) -> Callable[[], Served | None]:
    """For ``create_app``: the model again when its alias has moved to another version.
    A version it refused is not downloaded again: the same ``Refused`` is raised until the
    alias moves on."""
    seen = {"version": current}
    refused: dict[str, Refused] = {}

    def reload() -> Served | None:
        version, _ = registry.resolve(model_uri)
        if not version or version == seen["version"]:
            return None
        if version in refused:
            raise refused[version]
        try:
            served = load(model_uri, max_model_mb=max_model_mb, factories=factories)
        except Refused as e:
            refused[e.version] = e
            raise
        seen["version"] = served.version
        return served

    return reload


@dataclass
class State:
    """What the app serves now: swapped whole when the alias moves (requests in flight
    finish on the model they started with)."""

    served: Served
    batcher: Batcher
    version: str


class Batcher(Protocol):
    """Rows in, the model's rows out, computed together with other requests' rows."""

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's output for ``x`` (rows x features), once its batch has gone through."""
        ...

    def close(self) -> None:
        """Release the batcher's forward thread: the app calls it when the model is swapped out
        or the server stops."""
        ...


# (forward, window_s, max_rows) -> a batcher; Ray Serve passes one built on @serve.batch
BatcherFactory = Callable[[Callable[[np.ndarray], np.ndarray], float, int], Batcher]


def _state(
    served: Served,
    window_s: float,
    max_rows: int,
    metrics: ServerMetrics,
    make_batcher: BatcherFactory,
) -> State:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = served.net.to(device).eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = net(torch.from_numpy(x).to(device, non_blocking=True)).float().cpu()
        metrics.batch(len(x))
        return out.numpy()

    version = served.model_uri.rsplit("/", 1)[-1]
    return State(served, make_batcher(forward, window_s, max_rows), served.version or version)


class BadInput(ValueError):
    """A /predict body that is not the model's input: the status to answer and the message
    naming the offending field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


FLOAT32_MAX = float(np.finfo(np.float32).max)
MATRIX = 2  # dimensions of a well-formed batch: rows x features


def parse_input(body: bytes, served: Served, max_rows: int) -> np.ndarray:
    """A /predict body as the model's encoded float32 matrix: a ``features`` matrix (a
    model of numbers only), or named records in one of MLflow's scoring formats
    (``records.FORMATS``) checked against the input schema. ``BadInput`` names the field."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadInput(422, f"body: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BadInput(422, "body: an object with features or named records")
    enc = served.spec.encoding if served.spec is not None else None
    if "features" in doc or enc is None:
        if enc is not None and not enc.numeric():
            raise BadInput(
                422,
                "features: this model takes named columns (text categories or lists): send "
                f"records as one of {', '.join(records.FORMATS)} (see /metadata)",
            )
        return _features(doc, body, served.num_features, max_rows)
    try:
        return records.encode(enc, doc, max_rows)
    except records.BadRecords as e:
        raise BadInput(e.status, e.message) from None


def parse_features(body: bytes, num_features: int, max_rows: int) -> np.ndarray:
    """The ``features`` of a /predict body as a float32 matrix, or ``BadInput`` naming the
    first offending field (``features[3][7]: ...``)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadInput(422, f"body: not valid JSON ({e})") from None
    return _features(doc, body, num_features, max_rows)


def _features(doc: Any, body: bytes, num_features: int, max_rows: int) -> np.ndarray:
    """The common case costs one ``orjson.loads`` and one ``np.array`` (both in C): per-value
    Python checks (pydantic's ``list[list[float]]``) cost more than the model's forward pass
    for small models. Only a body that fails those fast checks is walked value by value, to
    say where it is wrong."""
    if not isinstance(doc, dict) or "features" not in doc:
        raise BadInput(422, "features: required, a list of rows of numbers")
    rows = doc["features"]
    if not isinstance(rows, list) or not rows:
        raise BadInput(422, "features: a non-empty list of rows of numbers")
    if len(rows) > max_rows:
        raise BadInput(413, f"features: {len(rows)} rows, at most {max_rows} per request")
    try:
        x = np.array(rows)
    except (ValueError, TypeError):  # ragged rows
        x = None
    matrix = x is not None and x.ndim == MATRIX and x.dtype.kind in "fiu"
    if not matrix or b"true" in body or b"false" in body:  # numpy takes a boolean for 1 or 0
        _locate(rows, num_features)
    if x is None or not matrix:  # e.g. integers past int64
        x = np.array(rows, dtype=np.float64)  # _locate found every value a number
    if x.shape[1] != num_features:
        raise BadInput(422, f"features[0]: {x.shape[1]} values, the model takes {num_features}")
    if not np.all(np.abs(x) <= FLOAT32_MAX):  # also false for NaN
        _locate(rows, num_features)
    return x.astype(np.float32)


def _locate(rows: list, n: int) -> None:
    """Raise ``BadInput`` for the first value of ``rows`` that is not a finite float32."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise BadInput(422, f"features[{i}]: a list of {n} numbers, not {records.kind_of(row)}")
        if len(row) != n:
            raise BadInput(422, f"features[{i}]: {len(row)} values, the model takes {n}")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise BadInput(422, f"features[{i}][{j}]: a number, not {records.kind_of(v)}")
            try:
                f = float(v)
            except OverflowError:  # an integer past float64
                f = math.inf
            if not math.isfinite(f) or abs(f) > FLOAT32_MAX:
                raise BadInput(422, f"features[{i}][{j}]: {v!r} is not a finite float32")


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


class Guard:
    """Pure ASGI middleware (Starlette's ``@app.middleware("http")`` costs a task and a
    stream per request): the API key, the body limit, a 500 for bugs, and the request
    metrics. A body without a declared length is counted as it arrives and refused once it
    passes the limit, so nothing unbounded is ever read."""

    def __init__(
        self, app: ASGIApp, key_digest: bytes | None, limit: int, metrics: ServerMetrics
    ) -> None:
        self.app, self.key_digest, self.limit, self.metrics = app, key_digest, limit, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer here what is refused (401, 415, 413) or breaks (500), pass the rest on, and
        count every HTTP request in the metrics."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        status = [0]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        declared = kind = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"content-type":
                kind = value
        if self.key_digest and path != "/health" and not _authorized(scope, self.key_digest):
            await _json(
                {"detail": "missing or wrong API key (X-API-Key or Authorization: Bearer)"}, 401
            )(scope, receive, send_status)
        elif path == "/predict" and scope["method"] == "POST" and not _is_json(kind):
            # a cross-site page may POST text/plain without asking (no CORS preflight); a
            # JSON body has to ask, and this server answers no preflight
            await _json(
                {
                    "detail": "content-type: /predict takes application/json, not "
                    f"{(kind or b'none').decode('latin-1')!r}"
                },
                415,
            )(scope, receive, send_status)
        elif declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_big(scope, receive, send_status)
        else:
            # HTTP framing holds a body to its declared length; an undeclared one (chunked)
            # is counted as it arrives
            seen = [0]

            async def counted() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > self.limit:
                        raise _TooBig
                return message

            try:
                await self.app(scope, receive if declared is not None else counted, send_status)
            except _TooBig:
                if not status[0]:
                    await self._too_big(scope, receive, send_status)
            except ClientDisconnect:  # gone mid-body (or cut off by a read deadline)
                status[0] = status[0] or CLIENT_GONE
            except Exception as e:  # noqa: BLE001 - a bug answers 500 once, the server stays up
                if not status[0]:
                    await _json({"detail": f"internal error: {type(e).__name__}"}, 500)(
                        scope, receive, send_status
                    )
        self.metrics.request(
            path if path in KNOWN else "other", status[0] or 500, time.perf_counter() - start
        )

    async def _too_big(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _json({"detail": f"body: more than {self.limit} bytes"}, 413)(scope, receive, send)


class _TooBig(Exception):
    pass


CLIENT_GONE = 499  # nginx's status for "the client closed the request", in /metrics only


def _records_body(enc: Any, max_batch: int) -> dict[str, Any]:
    """The JSON schema of ``dataframe_records`` for the model's input columns (the other
    scoring shapes carry the same fields: /metadata)."""
    from orchestrator.core import features

    nullable = enc.missing == "impute"

    def field(c: features.Column) -> dict[str, Any]:
        number = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
        if c.kind == features.LIST:
            out: dict[str, Any] = {
                "type": "array",
                "items": number,
                "minItems": c.width,
                "maxItems": c.width,
            }
        elif c.kind == features.BOOLEAN:
            out = {"type": "boolean"}
        elif c.kind == features.CATEGORY:
            text = c.dtype in ("string", "large_string")
            out = {"type": "string" if text else "integer"}
            if enc.unknown_category == "error" and len(c.values) <= features.SCHEMA_VALUES:
                out["enum"] = list(c.values)
        else:
            out = number
        return {"anyOf": [out, {"type": "null"}]} if nullable else out

    return {
        "type": "object",
        "required": ["dataframe_records"],
        "description": "named records (also accepted: dataframe_split, instances, inputs)",
        "properties": {
            "dataframe_records": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_batch,
                "items": {
                    "type": "object",
                    "required": enc.names,
                    "properties": {c.name: field(c) for c in enc.columns},
                },
            }
        },
    }


def _schemas(num_features: int, max_batch: int, served: Served | None = None) -> dict[str, Any]:
    """OpenAPI for /predict, written out: the body is parsed by ``parse_input``, not by
    a pydantic model, but clients and fuzzers still get the exact shape (a model of numbers:
    the ``features`` matrix; one with text categories or lists: named records)."""
    error = {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["detail"],
                "properties": {"detail": {"type": "string"}},
            }
        }
    }
    body = {
        "type": "object",
        "required": ["features"],
        "properties": {
            "features": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_batch,
                "description": "rows of raw feature values, as in the training Parquet",
                "items": {
                    "type": "array",
                    "minItems": num_features,
                    "maxItems": num_features,
                    "items": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
                },
            }
        },
    }
    if served is not None and served.spec is not None and not served.spec.encoding.numeric():
        body = _records_body(served.spec.encoding, max_batch)
    return {
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}}
        },
        "responses": {
            401: {"description": "missing or wrong API key", "content": error},
            413: {"description": "body or batch too big", "content": error},
            415: {"description": "the body is not application/json", "content": error},
            422: {"description": "not the model's input", "content": error},
        },
    }


_Box = dict[str, State]  # {"state": the State served now}, swapped whole by a reload
_Swap = Callable[[], Awaitable[bool]]


def create_app(  # noqa: PLR0913 - each is one serve.* setting that tests set on their own
    served: Served,
    max_batch: int = 1024,
    window_ms: float = 2.0,
    api_key: str | None = None,
    max_body_bytes: int | None = None,
    reload: Callable[[], Served | None] | None = None,
    poll_s: float = 0.0,
    make_batcher: BatcherFactory | None = None,
    api_key_sha256: str | None = None,
) -> FastAPI:
    """The model server. ``reload`` returns a newer model (or None when the alias has not
    moved): called by ``POST /reload`` and, every ``poll_s`` seconds when set, in the
    background. ``api_key`` guards everything but ``/health``; ``api_key_sha256`` (its
    ``key_sha256``) does the same without the key itself (Ray Serve replicas get only
    that). ``make_batcher`` replaces the micro-batcher (Ray Serve brings its own)."""
    digest = _key_digest(api_key, api_key_sha256)
    metrics = ServerMetrics()
    # a row of digits' 64 features is ~600 bytes of JSON; be generous, but bounded
    limit = max_body_bytes or max(1 << 20, max_batch * served.num_features * 32)
    new_state = functools.partial(
        _state,
        window_s=window_ms / 1000,
        max_rows=max_batch * 4,
        metrics=metrics,
        make_batcher=make_batcher or MicroBatcher,
    )
    box: _Box = {"state": new_state(served)}
    swap = _swapper(box, reload, new_state, metrics)
    poll = poll_s if reload is not None else 0.0
    app = FastAPI(
        title="orchestrator model server", version="1", lifespan=_lifespan(box, swap, poll)
    )
    app.add_middleware(Guard, key_digest=digest, limit=limit, metrics=metrics)
    # first: the router tries routes in order, and this is the hot one
    _add_predict(app, box, served, max_batch)
    _add_validation_handler(app)
    _add_health(app, box)
    _add_metadata(app, box, max_batch, window_ms)
    _add_metrics(app, box, metrics)
    _add_reload(app, box, swap)
    return app


def _key_digest(api_key: str | None, api_key_sha256: str | None) -> bytes | None:
    """The SHA-256 of the API key to require, or None when none is."""
    if api_key is not None and not api_key.strip():
        raise ValueError(
            "api_key: empty; an empty key is not a way to turn authentication off (pass None)"
        )
    if api_key is not None:
        api_key_sha256 = key_sha256(api_key)
    return bytes.fromhex(api_key_sha256) if api_key_sha256 else None


def _swapper(
    box: _Box,
    reload: Callable[[], Served | None] | None,
    new_state: Callable[[Served], State],
    metrics: ServerMetrics,
) -> _Swap:
    async def swap() -> bool:
        """Whether a newer version was swapped in; ``Refused`` (logged once per version, and
        shown in /metrics) when the alias names one that is not served."""
        if reload is None:
            return False
        try:
            newer = await asyncio.get_running_loop().run_in_executor(None, reload)
        except Refused as e:
            if metrics.refusal(e.version, e.reason):
                print(
                    f"serve: refused model version {e.version}, still serving version "
                    f"{box['state'].version}: {e.reason}",
                    flush=True,
                )
            raise
        if newer is None:
            return False
        old = box["state"]
        box["state"] = new_state(newer)
        metrics.reloads += 1
        old.batcher.close()
        return True

    return swap


def _lifespan(
    box: _Box, swap: _Swap, poll_s: float
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything alive now (torch, the model, FastAPI) lives as long as the server: out
        # of the collector's sight, a full collection no longer walks it. Without this, the
        # cyclic GC took a quarter of the event loop's time under load (requests in flight
        # survive into older generations and trigger full collections).
        gc.collect()
        gc.freeze()
        task = asyncio.create_task(_poll(swap, poll_s)) if poll_s > 0 else None
        yield
        if task is not None:
            task.cancel()
        box["state"].batcher.close()

    return lifespan


async def _poll(swap: _Swap, poll_s: float) -> None:
    while True:
        await asyncio.sleep(poll_s)
        try:
            await swap()
        except Refused:
            pass  # logged and counted by swap
        except Exception as e:  # noqa: BLE001 - keep serving the model we have
            print(f"serve: reload failed, still serving the old model: {e}", flush=True)


def _add_predict(app: FastAPI, box: _Box, served: Served, max_batch: int) -> None:
    @app.post(
        "/predict",
        response_model=PredictResponse,
        **_schemas(served.num_features, max_batch, served),
    )
    async def predict(request: Request) -> Response:
        st = box["state"]
        try:
            x = parse_input(await request.body(), st.served, max_batch)
        except BadInput as e:
            return _json({"detail": e.message}, e.status)
        out = await st.batcher(x)
        if not np.isfinite(out).all():  # inputs so far out that the network overflowed
            bad = [int(i) for i in np.flatnonzero(~np.isfinite(out).all(axis=1))[:5]]
            return _json(
                {
                    "detail": f"rows {bad}: the model's output is not a number for "
                    "these rows (values far outside the training data?)"
                },
                422,
            )
        # a Response written here: FastAPI's response_model pass re-validates every float
        return _json(answer(st.served, out))


def answer(served: Served, out: np.ndarray) -> dict[str, Any]:
    """/predict's JSON for the model's outputs: what fits the task."""
    kind = served.task
    if kind == task_mod.REGRESSION:
        values = out[:, 0] if out.shape[1] == 1 else out
        return {"predictions": values}
    if kind == task_mod.MULTILABEL:
        return {"predictions": (out > 0.5).astype(np.int64), "probabilities": out}  # noqa: PLR2004
    classes = served.classes
    return {"predictions": [classes[i] for i in out.argmax(1).tolist()], "probabilities": out}


def _add_validation_handler(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes the bad input back; NaN/Infinity there cannot be JSON-encoded and
        # would turn a 422 into a 500. Answer with the field path and message only.
        detail = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        where = ".".join(detail[0]["loc"][1:]) if detail else "body"
        return JSONResponse(
            {"detail": f"{where}: {detail[0]['msg'] if detail else 'invalid'}", "errors": detail},
            status_code=422,
        )


def _add_health(app: FastAPI, box: _Box) -> None:
    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {
            "status": "ready",
            "model": box["state"].served.model_uri,
            "version": box["state"].version,
        }


def _add_metadata(app: FastAPI, box: _Box, max_batch: int, window_ms: float) -> None:
    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        st = box["state"]
        spec = st.served.spec
        numeric = spec is None or spec.encoding.numeric()
        outputs = spec.task.outputs if spec is not None else len(st.served.classes)
        return {
            "model_uri": st.served.model_uri,
            "version": st.version,
            "run_id": st.served.run_id,
            "task": st.served.task,
            "classes": st.served.classes,
            "input": {
                "features": st.served.num_features,
                "dtype": "float32",
                "max_rows": max_batch,
                "columns": spec.encoding.schema() if spec is not None else None,
                "formats": (["features"] if numeric else []) + list(records.FORMATS),
            },
            "output": (
                {"values": outputs}
                if st.served.task == task_mod.REGRESSION
                else {"probabilities": len(st.served.classes) or outputs}
            ),
            "batching": {"window_ms": window_ms},
            # which process answered: tells replicas apart behind a load balancer
            "server": {"host": socket.gethostname(), "pid": os.getpid()},
        }


def _add_metrics(app: FastAPI, box: _Box, metrics: ServerMetrics) -> None:
    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.text(box["state"].version)


def _add_reload(app: FastAPI, box: _Box, swap: _Swap) -> None:
    @app.post(
        "/reload",
        responses={
            409: {
                "description": "the alias names a version that is refused; the current one is kept"
            }
        },
    )
    async def reload_now() -> Response:
        try:
            moved = await swap()
        except Refused as e:
            return _json(
                {
                    "reloaded": False,
                    "version": box["state"].version,
                    "refused": {"version": e.version, "reason": e.reason},
                },
                409,
            )
        return _json({"reloaded": moved, "version": box["state"].version})


KNOWN = {"/predict", "/health", "/ready", "/metadata", "/metrics", "/reload"}


def key_sha256(api_key: str) -> str:
    """What a server needs to check ``api_key`` without holding it (a key is long and
    random, so its SHA-256 does not give it away)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def _authorized(scope: Scope, digest: bytes) -> bool:
    """``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (the scheme in any case, as
    RFC 9110 has it), compared by digest in constant time."""
    headers = dict(scope["headers"])
    given = headers.get(b"x-api-key")
    if given is None:
        scheme, _, token = headers.get(b"authorization", b"").strip().partition(b" ")
        given = token.strip() if scheme.lower() == b"bearer" else b""
    return hmac.compare_digest(hashlib.sha256(given.strip()).digest(), digest)


def _is_json(kind: bytes | None) -> bool:
    return kind is not None and kind.split(b";", 1)[0].strip().lower() == b"application/json"


LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a name other than localhost
    counts as beyond it: what it resolves to can change)."""
    import ipaddress

    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def required_key(
    configured: str | None, environ: Mapping[str, str], host: str, allow_unauthenticated: bool
) -> str | None:
    """The API key to require: ``serve.api_key``, else ``$ORCHESTRATOR_API_KEY``, else none.
    An empty key is an error (not "auth off"), and so is no key on an address beyond
    loopback unless ``serve.allow_unauthenticated`` (``--allow-unauthenticated``) says so."""
    key, where = configured, "serve.api_key"
    if key is None and "ORCHESTRATOR_API_KEY" in environ:
        key, where = environ["ORCHESTRATOR_API_KEY"], "ORCHESTRATOR_API_KEY"
    if key is not None and not key.strip():
        raise ConfigError(
            where,
            "is empty: an empty key would not turn authentication off, so it is refused",
            "set a key, or unset it to serve without one",
        )
    if key is not None and key != key.strip():
        raise ConfigError(
            where,
            "has leading or trailing whitespace (headers are trimmed, so "
            "no request could match it)",
            "remove the whitespace",
        )
    if key is None and not allow_unauthenticated and not is_loopback(host):
        raise ConfigError(
            "serve.host",
            f"{host} is reachable beyond this machine, and no API "
            "key is set: anyone who reaches the port could predict, reload, and "
            "read /metadata and /metrics",
            "set serve.api_key (or "
            "$ORCHESTRATOR_API_KEY), or pass --allow-unauthenticated "
            "(serve.allow_unauthenticated: true) if a proxy in front checks",
        )
    return key


def run(
    model_uri: str, opts: ServeConfig, tracking_uri: str | None = None, api_key: str | None = None
) -> None:
    """Serve ``model_uri`` on ``opts.host:opts.port`` until stopped; ``Refused`` (before
    binding) when the version is not servable."""
    import uvicorn

    no_pickles()
    uri = tracking_uri or location.resolve_uri(None)
    served = load(model_uri, uri, opts.max_model_mb, opts.factories)
    what = (
        f"{len(served.classes)} classes" if served.classes else served.task
    ) + f", {served.num_features} features"
    print(
        f"serving {model_uri} (version {served.version or '?'}, {what}) on "
        f"http://{opts.host}:{opts.port}  "
        "POST /predict /reload  GET /health /ready /metadata /metrics"
        + ("  (API key required)" if api_key else ""),
        flush=True,
    )
    app = create_app(
        served,
        opts.max_batch,
        opts.window_ms,
        api_key,
        reload=reloader(model_uri, served.version, opts.max_model_mb, opts.factories),
        poll_s=opts.poll_s,
    )
    uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning", **limits(opts).uvicorn())


def limits(opts: ServeConfig) -> Limits:
    """The HTTP limits of ``serve.*`` (``orchestrator/http_limits.py``)."""
    return Limits(
        max_header_bytes=opts.max_header_bytes,
        header_timeout_s=opts.header_timeout_s,
        body_timeout_s=opts.body_timeout_s,
        max_connections=opts.max_connections,
        keepalive_s=opts.keepalive_s,
    )

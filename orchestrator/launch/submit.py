"""`orchestrator submit CONFIG --address http://HOST:8265`: `ray job submit` of a sweep (or a
training run), with the checks that make it work the first time.

Before anything is uploaded, each check fails with the key at fault and the fix:
- the config itself (every key, as `orchestrator sweep` checks it);
- ``auth``: the cluster wants a token (Ray's token auth) and one is found here, and accepted;
- ``scaling.*``: the cluster's alive nodes can hold one trial (its workers, placed the way the
  trial will be);
- ``tracking.uri`` / ``data.path``: a file on this machine (a SQLite store, a relative path)
  is refused for a cluster elsewhere, since its nodes cannot read it; on a cluster on this
  machine a relative path is made absolute (the job runs in a copy of the working directory);
  a tracking server must answer from here (the job checks again from the cluster first thing);
- ``working_dir``: the upload, zipped exactly as Ray zips it (its excludes, ``.gitignore``,
  ours: ``.git``, ``.venv``, MLflow stores, data, results), fits Ray's limit;
- secrets (``config.secret_fields``: ``serve.api_key``, the ``user:password@`` of
  ``tracking.uri``): never sent. The job's entrypoint and runtime env are stored by Ray and
  shown by its dashboard and `ray job status`, so a secret goes as ``***`` and the job reads
  it from the cluster's own environment (a Kubernetes Secret, the nodes' environment):
  ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, ``ORCHESTRATOR_API_KEY``. A
  config file holding one in plain text is refused: it would be uploaded with the job.

Then it submits ``python -m jobs.sweep CONFIG ...`` with the working directory as its runtime
env, streams the job's logs, and exits 0 when the job succeeded, 1 when it failed or stopped.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator import config as config_mod
from orchestrator.config import Config, ConfigError
from orchestrator.core import placement
from orchestrator.core.storage import is_uri, public_options
from orchestrator.launch import probe
from orchestrator.tracking import location

LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "mlflow.db",
    "*.db",
    "mlruns",
    "mlartifacts",
    "data/",
    "results/",
    ".ray-local",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.parquet",
    "mlflow-journal*",
    "*.egg-info",
]
ENTRYPOINTS = {"sweep": "jobs.sweep", "train": "jobs.train"}


def find_token() -> str | None:
    """The Ray auth token this machine would send: $RAY_AUTH_TOKEN, the file in
    $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (Ray's own order)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray/auth_token")):
        if path and Path(path).is_file():
            return Path(path).read_text().strip() or None
    return None


def _request(address: str, path: str, token: str | None) -> Any:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return requests.get(f"{address.rstrip('/')}{path}", headers=headers, timeout=15)
    except requests.RequestException as e:
        raise ConfigError(
            "--address",
            f"no Ray dashboard answers at {address} ({type(e).__name__})",
            "start a cluster (`orchestrator cluster up`) or check the address; "
            "the dashboard listens on port 8265 by default",
        ) from None


def check_auth(address: str) -> str | None:
    """The token to send (None when the cluster does not want one)."""
    probe = "/api/v0/nodes?limit=1"
    if _request(address, probe, None).status_code != HTTPStatus.UNAUTHORIZED:
        return None
    token = find_token()
    if token is None:
        raise ConfigError(
            "auth",
            f"the cluster at {address} requires a token (Ray token auth) "
            "and none was found in $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or "
            "~/.ray/auth_token",
            "copy the cluster's token (`ray get-auth-token` "
            "on the head) to ~/.ray/auth_token, or set RAY_AUTH_TOKEN_PATH",
        )
    if _request(address, probe, token).status_code in (
        HTTPStatus.UNAUTHORIZED,
        HTTPStatus.FORBIDDEN,
    ):
        raise ConfigError(
            "auth",
            f"the cluster at {address} refused this machine's token",
            "use the token of that cluster (`ray get-auth-token` on its head)",
        )
    return token


def cluster_nodes(address: str, token: str | None) -> list[dict[str, Any]]:
    """Every node the dashboard knows (``state`` ALIVE or DEAD, ``resources_total``)."""
    r = _request(address, "/api/v0/nodes?detail=1&limit=10000", token)
    if r.status_code != HTTPStatus.OK:
        raise ConfigError(
            "--address",
            f"the dashboard at {address} answered "
            f"{r.status_code} to a node listing: {r.text[:200]}",
            "check that this is a Ray dashboard (port 8265 by default)",
        )
    return list(r.json()["data"]["result"]["result"])


def check_fits(cfg: Config, nodes: list[dict[str, Any]]) -> int:
    """How many trials the alive nodes hold at once (ConfigError when not one)."""

    alive = [dict(n.get("resources_total") or {}) for n in nodes if n.get("state") == "ALIVE"]
    if not alive:
        raise ConfigError("--address", "the cluster has no alive node", "start its nodes")
    total = {k: sum(n.get(k, 0.0) for n in alive) for k in ("CPU", "GPU")}
    loader = "stream" if cfg.data.loader == "stream" else "memory"
    return placement.trial_concurrency(cfg, total, loader, nodes=alive)


def is_local(address: str) -> bool:
    """``address`` is on this machine (a loopback host): the cluster shares its disk."""
    return (urlparse(address).hostname or "") in LOOPBACK


def resolve_paths(cfg: Config, local_cluster: bool) -> list[str]:
    """Overrides that carry this machine's view of ``tracking.uri`` and ``data.path`` into
    the job (absolute where the cluster shares this machine's disk); ConfigError for what a
    cluster elsewhere cannot reach."""

    overrides = []
    uri = location.configured_uri(cfg)
    scheme = urlparse(uri).scheme
    if scheme in ("", "file", "sqlite"):
        if not local_cluster:
            raise ConfigError(
                "tracking.uri",
                f"{uri} is a file on this machine; the cluster's nodes cannot write to it",
                "run `orchestrator tracking serve --host 0.0.0.0` where the "
                "cluster reaches it and pass tracking.uri=http://THAT-HOST:5000",
            )
    elif scheme in ("http", "https"):
        host = urlparse(uri).hostname or ""
        if host in LOOPBACK and not local_cluster:
            raise ConfigError(
                "tracking.uri",
                f"{uri} names this machine's loopback; on the cluster it would be each node's own",
                "use an address the cluster reaches, e.g. tracking.uri=http://mlflow.internal:5000",
            )
        _check_tracking_server(uri)
    # the credentials stay here: the job reads them from the cluster's environment
    overrides.append(f"tracking.uri={config_mod.redact_uri(uri)}")
    path = cfg.data.path
    if "://" not in path:
        if not local_cluster and not Path(path).is_absolute():
            raise ConfigError(
                "data.path",
                f"{path!r} is relative to this machine's working "
                "directory, and data is not uploaded with the job",
                "put it on s3:// (or gs://), or on storage mounted at the same "
                "absolute path on every node, and pass that path",
            )
        if local_cluster:
            absolute = Path(path).absolute()
            if not absolute.exists():
                raise ConfigError(
                    "data.path", f"{absolute} does not exist", "export it first, e.g. `make data`"
                )
            path = str(absolute)
        overrides.append(f"data.path={path}")
    storage = cfg.sweep.storage_path
    if not is_uri(storage) and not Path(storage).is_absolute():
        if local_cluster:  # the job runs in a copy of the working directory, deleted after
            overrides.append(f"sweep.storage_path={Path(storage).absolute()}")
        elif storage != "results" or os.environ.get("ORCHESTRATOR_STORAGE_PATH"):
            raise ConfigError(
                "sweep.storage_path",
                f"{storage!r} is relative: each node would keep its checkpoints on its own disk",
                "pass a folder every node mounts, e.g. sweep.storage_path=/mnt/shared/results",
            )
        # else: left to the cluster's own $ORCHESTRATOR_STORAGE_PATH (cluster/*.yaml set it)
    return overrides


def _check_tracking_server(uri: str) -> None:
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=10)
    except requests.RequestException as e:
        raise ConfigError(
            "tracking.uri",
            f"no MLflow server answers at {config_mod.redact_uri(uri)} ({type(e).__name__})",
            "start it (`orchestrator tracking serve`) or fix the address",
        ) from None


def check_upload(workdir: Path, excludes: Sequence[str] = EXCLUDES) -> int:
    """The working directory zipped as Ray will zip it; its size in bytes (ConfigError when
    over Ray's limit, naming what is biggest)."""
    from ray._private.runtime_env import packaging

    limit = packaging.GCS_STORAGE_MAX_SIZE
    with tempfile.TemporaryDirectory() as d:
        target = Path(d) / "upload.zip"
        packaging._zip_files(str(workdir), list(excludes), str(target), include_gitignore=True)
        size = target.stat().st_size
        if size < limit:
            return size
        with zipfile.ZipFile(target) as z:
            biggest = sorted(z.infolist(), key=lambda i: -i.compress_size)[:5]
        names = ", ".join(f"{i.filename} ({i.compress_size / 2**20:.0f} MiB)" for i in biggest)
    raise ConfigError(
        "working_dir",
        f"{workdir} zips to {size / 2**20:.0f} MiB, over Ray's "
        f"upload limit of {limit / 2**20:.0f} MiB; biggest: {names}",
        "move large files out, list them in .gitignore or .rayignore, or put "
        "data on s3:// and pass data.path",
    )


def preflight(
    config_path: str,
    overrides: Sequence[str],
    address: str,
    workdir: Path,
    out: Callable[[str], None] = print,
) -> tuple[list[str], str | None]:
    """Every check; returns (the overrides to pass on, the auth token)."""
    cfg = config_mod.load(config_path, overrides)
    rel = Path(config_path).absolute()
    if not rel.is_relative_to(workdir.absolute()):
        raise ConfigError(
            "<file>",
            f"{config_path} is outside the working directory "
            f"{workdir}, so the job would not have it",
            "keep the config inside the project (e.g. jobs/configs/)",
        )
    check_secrets(config_path, cfg, out)
    token = check_auth(address)
    out(
        f"preflight: {address} "
        + ("wants a token; ours is accepted" if token else "takes requests without a token")
    )
    nodes = cluster_nodes(address, token)
    fits = check_fits(cfg, nodes)
    alive = sum(1 for n in nodes if n.get("state") == "ALIVE")
    out(f"preflight: {alive} alive node(s) hold {fits} trial(s) at once")
    extra = resolve_paths(cfg, is_local(address))
    out(f"preflight: {' '.join(extra)}")  # redacted already
    size = check_upload(workdir)
    out(f"preflight: the working directory zips to {size / 2**20:.1f} MiB")
    return [*overrides, *extra], token


def check_secrets(config_path: str, cfg: Config, out: Callable[[str], None] = print) -> None:
    """Refuse a config file that holds a secret (it is uploaded with the working directory)
    and say where the job finds each secret the config sets."""
    import yaml

    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    for dotted, meta in config_mod.secret_fields().items():
        node: Any = raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and config_mod.redacted_value(meta[config_mod.SECRET], node) != node:
            raise ConfigError(
                dotted,
                f"{config_path} holds it in plain text, and the file is "
                "uploaded with the job (Ray keeps the upload on every node)",
                f"remove it from the file and set {' / '.join(meta['env'])} in "
                "the cluster's environment (a Kubernetes Secret, the nodes' env)",
            )
    needed = dict(config_mod.secrets_set(cfg))

    uri = location.configured_uri(cfg)
    creds = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    # credentials in MLflow's own variables here are not sent either: the nodes need theirs
    if config_mod.redact_uri(uri) != uri or (
        urlparse(uri).scheme in ("http", "https") and any(os.environ.get(v) for v in creds)
    ):
        needed["tracking.uri"] = creds
    for dotted, env in needed.items():
        out(
            f"preflight: {dotted} is secret: sent as {config_mod.REDACTED}; the job reads it "
            f"from {' / '.join(env)} in the cluster's environment (set them there: a "
            "Kubernetes Secret, the nodes' environment)"
        )


def job_spec(
    config_path: str, passed: Sequence[str], workdir: Path, what: str = "sweep"
) -> tuple[str, dict[str, Any]]:
    """The job's entrypoint and runtime env, as Ray stores them (and its dashboard and `ray
    job status` show them): secrets redacted, none in ``env_vars``."""
    redacted = []
    secret_keys = config_mod.secret_fields()
    for item in passed:
        key, sep, value = item.partition("=")
        if sep and key in secret_keys:
            kind = secret_keys[key][config_mod.SECRET]
            value = (
                config_mod.redact_uri(value) if kind == "uri" else (value and config_mod.REDACTED)
            )
        redacted.append(f"{key}{sep}{value}")
    entry = " ".join(
        shlex.quote(a)
        for a in [
            "python",
            "-m",
            ENTRYPOINTS[what],
            str(Path(config_path).absolute().relative_to(workdir)),
            *redacted,
        ]
    )
    # only what the job needs to reach this cluster's own services, no secret
    env_vars = {k: os.environ[k] for k in ("RAY_AUTH_MODE",) if k in os.environ}
    return entry, {"working_dir": str(workdir), "excludes": EXCLUDES, "env_vars": env_vars}


def submit(
    config_path: str,
    overrides: Sequence[str],
    address: str,
    what: str = "sweep",
    workdir: Path | None = None,
    wait: bool = True,
    out: Callable[[str], None] = print,
) -> int:
    """Pre-flight, submit, stream the logs; the exit code (0 succeeded, 1 failed/stopped)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    workdir = (workdir or Path.cwd()).absolute()
    passed, token = preflight(config_path, overrides, address, workdir, out)
    entry, runtime_env = job_spec(config_path, passed, workdir, what)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = JobSubmissionClient(address, headers=headers)
    # the config as preflight read it (secrets as given here), with storage as the job gets it
    moved = [o for o in passed if o.startswith("sweep.storage_path=")]
    probe_storage(client, config_mod.load(config_path, [*overrides, *moved]), runtime_env, out)
    job_id = client.submit_job(entrypoint=entry, runtime_env=runtime_env)
    out(f"submitted {job_id}: {entry}")
    if not wait:
        out(f"  follow it: ray job logs --address {address} --follow {job_id}")
        return 0
    try:
        asyncio.run(_tail(client, job_id))
    except KeyboardInterrupt:
        out(
            f"\nstopped following; the job goes on. Stop it: ray job stop --address "
            f"{address} {job_id}"
        )
        return 130
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can end a moment before the status
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    info = client.get_job_info(job_id)
    out(f"job {job_id}: {status.value}" + (f" ({info.message})" if info.message else ""))
    return 0 if status == JobStatus.SUCCEEDED else 1


PROBE_TIMEOUT_S = 300.0  # the probe job: the working directory's upload and one task per node


def probe_storage(
    client: Any,
    cfg: Config,
    runtime_env: dict[str, Any],
    out: Callable[[str], None] = print,
    timeout: float = PROBE_TIMEOUT_S,
) -> None:
    """Every alive node of the cluster writes and deletes a probe object under
    ``sweep.storage_path`` (``orchestrator.launch.probe``, as a job of its own with the
    job's runtime env); ConfigError naming the key, the node and the fix when one cannot, or
    when the probe does not finish within ``timeout``."""
    import json

    from ray.job_submission import JobStatus

    where = cfg.sweep.storage_path
    entry = " ".join(
        shlex.quote(a)
        for a in [
            "python",
            "-m",
            probe.__name__,
            where,
            json.dumps(public_options(cfg.sweep.storage_filesystem)),
        ]
    )
    job_id = client.submit_job(entrypoint=entry, runtime_env=runtime_env)
    deadline = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise ConfigError(
                "sweep.storage_path",
                f"the storage probe ({job_id}) did not finish in {timeout:g} s",
                f"see `ray job logs {job_id}`; check that the cluster has free nodes and "
                "reaches the storage",
            )
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    answer = next(
        (json.loads(line) for line in reversed(logs.splitlines()) if line.startswith('{"ok"')),
        None,
    )
    if status == JobStatus.SUCCEEDED and answer is not None:
        out(f"preflight: {len(answer['ok'])} node(s) can write {where}")
        return
    if answer is None:
        raise ConfigError(
            "sweep.storage_path",
            f"the storage probe ({job_id}) ended {status.value} without an answer: "
            f"{logs.strip().splitlines()[-1] if logs.strip() else 'no output'}",
            f"see `ray job logs {job_id}`",
        )
    failed = "; ".join(f"{node}: {error}" for node, error in answer["failed"].items())
    raise ConfigError(
        "sweep.storage_path",
        f"{where} cannot be written from every node ({failed or 'no node answered'})",
        "give each node access: for object storage the credentials (AWS_* variables, "
        "an instance role, IRSA / workload identity, GOOGLE_APPLICATION_CREDENTIALS) and the "
        "endpoint (AWS_ENDPOINT_URL or sweep.storage_filesystem.endpoint_override) in the "
        "nodes' environment; for a folder, the same shared mount on every node",
    )


async def _tail(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)

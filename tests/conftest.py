"""Shared fixtures, and the tiers: ``tests/unit`` (no Ray, no servers: seconds),
``tests/integration`` (one part with the real things: a local Ray, an MLflow store or
server, HTTP on loopback) and ``tests/e2e`` (the real CLI end to end). Each test gets its
folder's marker; integration and e2e are also ``slow``, the multi-node cluster ``cluster``."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator import config
from orchestrator.core import data

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, from the folder it lives in (``-m unit`` etc.)."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        tier = parts[0] if parts[0] in TIERS else None
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/{{{','.join(TIERS)}}}/")
        item.add_marker(tier)
        if tier != "unit":
            item.add_marker("slow")


# Ray >= 2.59 enables token auth for local clusters; be explicit, like the Makefile.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# The secrets the local cluster's nodes hold in their environment (as a Kubernetes Secret
# would give them), made fresh each session: a literal here would be in every job's upload.
CLUSTER_SECRETS = {
    "MLFLOW_TRACKING_USERNAME": "admin",
    "MLFLOW_TRACKING_PASSWORD": f"pw-{secrets.token_hex(8)}",
    "ORCHESTRATOR_API_KEY": f"key-{secrets.token_hex(8)}",
}


@pytest.fixture(scope="session")
def digits_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data.export_digits(tmp_path_factory.mktemp("data") / "digits.parquet")


def make_cfg(data_path: str = "x.parquet", **over: Any) -> config.Config:
    """A validated config from dotted overrides, e.g. ``make_cfg(**{"train.epochs": 2})``."""
    raw: dict[str, Any] = {"data": {"path": data_path}}
    for dotted, v in over.items():
        config.set_dotted(raw, dotted, v)
    return config.from_dict(raw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until GET ``url`` answers 200; fails with the server's output if it dies first."""
    import requests

    deadline = time.time() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.time() < deadline, f"{url} did not come up in {timeout:g} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    """A real S3-compatible server (moto's) on loopback, with the standard AWS variables
    pointing at it for this module (and the processes it starts); started and stopped (by
    pid) by ``jobs.bench.moto_s3``. Yields its endpoint; tests make their own buckets."""
    from jobs import bench

    with bench.moto_s3() as endpoint:
        yield endpoint


def s3_keys(bucket: str, prefix: str = "") -> list[str]:
    """Every object key under ``prefix`` in ``bucket`` on the module's moto server (folder
    markers left out)."""
    import boto3

    client = boto3.client("s3")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        # pyarrow leaves empty "folder/" markers where it deleted a folder's last object
        keys.extend(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    return keys


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`orchestrator cluster up --workers 2`: a head (no CPUs for trials) and two 1-CPU worker
    nodes on loopback, token auth on, CLUSTER_SECRETS in the nodes' environment; stopped (only
    what it started) after the module."""

    from orchestrator.launch import cluster

    state_dir = tmp_path_factory.mktemp("cluster") / ".ray-local"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "cluster",
            "up",
            "--workers",
            "2",
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, **CLUSTER_SECRETS},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = cluster.load(state_dir)
    assert state is not None
    try:
        yield {"state": state, "state_dir": state_dir, "up": proc.stdout}
    finally:
        down = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "cluster",
                "down",
                "--state-dir",
                str(state_dir),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert down.returncode == 0, down.stderr
        for pid in [state.head_pid, *state.workers]:  # only what it started, and all of it
            assert not running(pid), pid


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone but for its exit status
        return f.read().split()[2] != "Z"


def files_holding(root: Path, *needles: str) -> list[str]:
    """Files under ``root`` holding any of ``needles`` (as bytes: pickles and SQLite too)."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                data = p.read_bytes()
            except OSError:
                continue  # a socket or a file removed meanwhile
            hits += [f"{p}: {n}" for n in needles if n.encode() in data]
    return hits


@pytest.fixture
def basic_auth_server(tmp_path: Path) -> Iterator[dict]:
    """`orchestrator tracking serve` with MLflow's basic-auth app (user admin, the password
    of CLUSTER_SECRETS), the backend in $MLFLOW_BACKEND_STORE_URI; stopped by its process
    group. Its output goes to ``server.log`` (a pipe nobody reads would fill and block it)."""
    import requests

    password = CLUSTER_SECRETS["MLFLOW_TRACKING_PASSWORD"]
    auth = tmp_path / "auth"
    auth.mkdir()
    (auth / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{auth}/auth.db\nadmin_username = admin\n"
        f"admin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth / "basic_auth.ini"),
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/server.db",
        # the auth app's CSRF key, the same in every server worker
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "tracking",
                "serve",
                "--port",
                str(port),
                "--artifacts",
                str(tmp_path / "artifacts"),
                "--workers",
                "1",
                "--",
                "--app-name",
                "basic-auth",
            ],
            cwd=tmp_path,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.time() < deadline, "mlflow server did not come up"
            time.sleep(0.5)
        yield {"port": port, "proc": proc, "tmp": tmp_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def numeric_spec(cfg: Any, x: Any, classes: list) -> Any:
    """The ``modelfile.Spec`` of a classifier of ``classes`` on the numbers of ``x``."""
    from orchestrator.core import features, modelfile
    from orchestrator.core.task import Task

    kind = "binary" if len(classes) == 2 else "multiclass"  # noqa: PLR2004
    return modelfile.spec_of(cfg, features.numeric_encoding(x), Task(kind, list(classes)))


def served_model(seed: int, version: str) -> Any:
    """A small untrained 3-class model on 4 features, as the server holds it (a ``Served``)."""
    import numpy as np
    import torch

    from orchestrator.core import model
    from orchestrator.serving import serve

    torch.manual_seed(seed)
    x = np.random.default_rng(seed).normal(size=(50, 4)).astype(np.float32)
    net = model.build(config.ModelConfig(hidden=[8]), x.mean(0), x.std(0), 3)
    return serve.Served(
        model.WithProbabilities(net).eval(),
        ["cat", "dog", "eel"],
        4,
        "models:/t@champion",
        version,
        f"run{version}",
    )


def sweep_on_disk(tmp: Path) -> Path:
    """A finished sweep of three trials (overfit, the sweet spot, underfit) written by hand
    into a real MLflow SQLite store under ``tmp``, with its folder and state file: what
    ``diagnose`` and ``report`` read, without training anything."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from orchestrator.core import state
    from orchestrator.tracking import schema

    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = config.from_dict(
        {
            "experiment": "rev",
            "data": {"path": str(tmp / "x.parquet")},
            "tracking": {"uri": uri},
            "train": {"epochs": 6},
            "sweep": {
                "space": {"train.weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}
            },
        }
    )
    client = MlflowClient(uri)
    exp = client.create_experiment("rev")
    parent = client.create_run(
        exp,
        tags={schema.ROLE: "sweep", "orchestrator.baseline": "loss=2.3026 accuracy=0.1000 (...)"},
    ).info.run_id
    curves = {  # weight decay -> (train, val) per epoch
        # overfit: validation turns up at epoch 3 while training goes to zero
        1.2e-4: ([1.0, 0.3, 0.05, 0.01, 0.005, 0.003], [1.0, 0.4, 0.35, 0.5, 0.6, 0.7]),
        # the sweet spot
        3e-3: ([1.0, 0.3, 0.15, 0.10, 0.08, 0.07], [1.0, 0.35, 0.2, 0.18, 0.17, 0.16]),
        # underfit: training loss stays at 82% of the baseline's
        8e-2: ([2.2, 2.0, 1.9, 1.9, 1.9, 1.9], [2.2, 2.0, 1.95, 1.9, 1.9, 1.9]),
    }
    for i, (wd, (train, val)) in enumerate(curves.items()):
        run = client.create_run(
            exp,
            tags={
                schema.ROLE: "trial",
                "mlflow.parentRunId": parent,
                "orchestrator.trial_id": f"t{i}",
            },
        ).info.run_id
        client.log_batch(
            run,
            params=[Param("train.weight_decay", str(wd))],
            metrics=[
                Metric(k, v, 0, e)
                for e, (t, v_) in enumerate(zip(train, val, strict=True), 1)
                for k, v in (("train_loss", t), ("val_loss", v_))
            ],
        )
    folder = tmp / "results" / "rev-20260101-000000"
    folder.mkdir(parents=True)
    state.write(
        folder,
        cfg,
        state.DONE,
        stamp="20260101-000000",
        parent_run_id=parent,
        experiment_id=exp,
        fingerprint="f",
    )
    return folder


# Counts, once the page has loaded, its images and those the browser decoded and laid out.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-rendered',
    imgs.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0)
        .length);
});</script></body>"""


def rendered_in_browser(page: Path, tmp: Path) -> tuple[int, int]:
    """(images, images rendered) as headless Chromium sees the page."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make browser` installs it"
    probed = tmp / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE))
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'<body data-images="(\d+)" data-rendered="(\d+)"', dom)
    assert found, dom[:2000]
    return int(found[1]), int(found[2])


class Payload(torch.nn.Module):
    """A model whose unpickling runs a shell command (creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))

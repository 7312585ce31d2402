"""Pre-flight checks of `orchestrator submit`, without a cluster: each refusal names the key
and the fix. (The real cluster is in test_cluster.py.)"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, make_cfg
from orchestrator import config
from orchestrator.config import ConfigError
from orchestrator.launch import submit


def _cfg(**over: Any) -> config.Config:
    return make_cfg("data/digits.parquet", **over)


def test_a_local_sqlite_store_is_refused_for_a_remote_cluster_with_the_fix() -> None:
    with pytest.raises(ConfigError) as e:
        submit.resolve_paths(_cfg(**{"tracking.uri": "sqlite:///mlflow.db"}), local_cluster=False)
    assert e.value.key == "tracking.uri" and "tracking serve" in e.value.fix


def test_a_loopback_tracking_server_is_refused_for_a_remote_cluster() -> None:
    with pytest.raises(ConfigError) as e:
        submit.resolve_paths(_cfg(**{"tracking.uri": "http://127.0.0.1:5000"}), local_cluster=False)
    assert e.value.key == "tracking.uri" and "loopback" in e.value.problem


def test_an_unreachable_tracking_server_is_refused() -> None:

    with pytest.raises(ConfigError) as e:
        submit.resolve_paths(
            _cfg(**{"tracking.uri": f"http://127.0.0.1:{free_port()}"}), local_cluster=True
        )
    assert e.value.key == "tracking.uri" and "no MLflow server answers" in e.value.problem


def test_a_relative_data_path_is_refused_remote_and_made_absolute_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(**{"tracking.uri": "sqlite:///mlflow.db"})
    with pytest.raises(ConfigError) as e:
        submit.resolve_paths(cfg, local_cluster=False)
    assert e.value.key == "tracking.uri"  # the first thing a remote cluster cannot reach
    with pytest.raises(ConfigError) as e:
        submit.resolve_paths(cfg, local_cluster=True)
    assert e.value.key == "data.path" and "does not exist" in e.value.problem
    (tmp_path / "data").mkdir()
    (tmp_path / "data/digits.parquet").write_bytes(b"x")
    assert submit.resolve_paths(cfg, local_cluster=True) == [
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"data.path={tmp_path}/data/digits.parquet",
        f"sweep.storage_path={tmp_path}/results",
    ]  # not the job's throwaway copy
    remote = _cfg(**{"tracking.uri": "https://mlflow.example.invalid"})
    with pytest.raises(ConfigError) as e:  # the server check comes first; it does not answer
        submit.resolve_paths(remote, local_cluster=False)
    assert e.value.key == "tracking.uri"


def test_s3_data_passes_untouched() -> None:
    cfg = _cfg(
        **{
            "data.path": "s3://bucket/digits.parquet",
            "tracking.uri": "sqlite:////abs/mlflow.db",
            "sweep.storage_path": "/mnt/shared/results",
        }
    )
    assert submit.resolve_paths(cfg, local_cluster=True) == [
        "tracking.uri=sqlite:////abs/mlflow.db"
    ]


def test_checkpoint_storage_must_be_shared_on_a_remote_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(submit, "_check_tracking_server", lambda uri: None)
    base = {"data.path": "s3://b/d.parquet", "tracking.uri": "http://mlflow.internal:5000"}
    with pytest.raises(ConfigError) as e:
        submit.resolve_paths(_cfg(**base, **{"sweep.storage_path": "ckpt"}), local_cluster=False)
    assert e.value.key == "sweep.storage_path" and "/mnt/shared" in e.value.fix
    # left unset, the cluster's own $ORCHESTRATOR_STORAGE_PATH decides
    monkeypatch.delenv("ORCHESTRATOR_STORAGE_PATH", raising=False)
    assert submit.resolve_paths(_cfg(**base), local_cluster=False) == [
        "tracking.uri=http://mlflow.internal:5000"
    ]
    # object storage every node reaches: passed on as it is
    remote = _cfg(**base, **{"sweep.storage_path": "s3://bucket/results"})
    assert not any("storage_path" in o for o in submit.resolve_paths(remote, local_cluster=False))


def test_a_trial_that_no_node_holds_is_refused_before_submitting() -> None:
    nodes = [
        {"state": "ALIVE", "resources_total": {"CPU": 1}},
        {"state": "ALIVE", "resources_total": {"CPU": 1}},
        {"state": "DEAD", "resources_total": {"CPU": 64}},
    ]  # dead nodes do not count
    assert submit.check_fits(_cfg(**{"scaling.num_workers": 2}), nodes) == 1
    with pytest.raises(ConfigError) as e:
        submit.check_fits(_cfg(**{"scaling.num_workers": 3}), nodes)
    assert e.value.key == "scaling.num_workers"
    with pytest.raises(ConfigError):
        submit.check_fits(_cfg(), nodes[2:])


def test_the_upload_leaves_out_venv_data_results_and_mlflow(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs/x.py").write_text("print(1)\n")
    for junk in (
        ".venv/lib/big.bin",
        "data/d.parquet",
        "results/r.bin",
        "mlruns/0/m",
        ".git/objects/o",
        "mlflow.db",
    ):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_bytes(b"\0" * 200_000)
    size = submit.check_upload(tmp_path)
    assert 0 < size < 10_000


def test_an_upload_over_rays_limit_is_refused_naming_the_biggest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from ray._private.runtime_env import packaging

    monkeypatch.setattr(packaging, "GCS_STORAGE_MAX_SIZE", 50_000)
    (tmp_path / "model_dump.bin").write_bytes(os.urandom(80_000))  # incompressible
    with pytest.raises(ConfigError) as e:
        submit.check_upload(tmp_path)
    assert e.value.key == "working_dir" and "model_dump.bin" in e.value.problem


def test_the_token_comes_from_the_environment_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert submit.find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray/auth_token").write_text("home-token\n")
    assert submit.find_token() == "home-token"
    (tmp_path / "t").write_text("path-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert submit.find_token() == "path-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert submit.find_token() == "env-token"


@pytest.fixture
def dashboard() -> Iterator[str]:
    """A stand-in for a token-auth Ray dashboard (real HTTP on loopback): 401 without a
    token, 403 with a wrong one, the node listing with the right one."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            auth = self.headers.get("Authorization", "")
            status = 401 if not auth else 200 if auth == "Bearer right" else 403
            body = json.dumps({"data": {"result": {"result": []}}}).encode()
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_token_cluster_without_a_token_here_is_refused(
    dashboard: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    with pytest.raises(ConfigError) as e:
        submit.check_auth(dashboard)
    assert e.value.key == "auth" and "requires a token" in e.value.problem
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    with pytest.raises(ConfigError) as e:
        submit.check_auth(dashboard)
    assert "refused" in e.value.problem
    monkeypatch.setenv("RAY_AUTH_TOKEN", "right")
    assert submit.check_auth(dashboard) == "right"


def test_no_dashboard_at_the_address_is_said_plainly() -> None:

    with pytest.raises(ConfigError) as e:
        submit.check_auth(f"http://127.0.0.1:{free_port()}")
    assert e.value.key == "--address" and "no Ray dashboard answers" in e.value.problem


def test_a_config_outside_the_working_directory_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {path: s3://b/d.parquet}\n")
    (tmp_path / "project").mkdir()
    with pytest.raises(ConfigError) as e:
        submit.preflight(str(cfg), [], "http://127.0.0.1:1", tmp_path / "project")
    assert "outside the working directory" in e.value.problem


def test_a_bad_config_key_fails_before_any_request() -> None:
    with pytest.raises(ConfigError) as e:
        submit.preflight(
            "jobs/configs/quickstart.yaml", ["train.epochs=0"], "http://127.0.0.1:1", Path(".")
        )
    assert e.value.key == "train.epochs"


def test_the_storage_probe_names_every_node_apart() -> None:
    from orchestrator.launch import probe

    nodes = [
        {"NodeID": "aaaa1111ff", "NodeManagerAddress": "127.0.0.1", "Resources": {"CPU": 1}},
        {"NodeID": "bbbb2222ff", "NodeManagerAddress": "127.0.0.1", "Resources": {"CPU": 1}},
        {
            "NodeID": "cccc3333ff",
            "NodeManagerAddress": "127.0.0.1",
            "Resources": {"node:__internal_head__": 1.0},
        },
    ]
    names = [probe.node_name(n) for n in nodes]  # one machine: the address alone would clash
    assert len(set(names)) == 3 and names[2].startswith("head ")
    assert all(n.startswith("worker ") for n in names[:2])

"""Secrets (``serve.api_key``, the ``user:password@`` of ``tracking.uri``): marked in the
config schema, redacted wherever a config is written or shown (MLflow params, config.yaml,
the sweep folder's state files, printed lines, a job's entrypoint), read back from the
environment when a saved config is used again. Fast tier: fakes for MLflow's client and for
``exec``; the real server, sweep, resume and cluster are in test_secrets_e2e.py and
test_cluster.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

from conftest import ROOT, make_cfg, numeric_spec
from orchestrator import cli, config
from orchestrator.config import ConfigError
from orchestrator.core import state
from orchestrator.launch import submit
from orchestrator.tracking import champions, location, writer

PASSWORD, API_KEY = "pw-Zq81xKr", "key-Hf27dLp"
URI = f"http://admin:{PASSWORD}@mlflow.internal:5000"


def _cfg(**over: Any) -> config.Config:
    return make_cfg(
        "data/digits.parquet", **{"tracking.uri": URI, "serve.api_key": API_KEY, **over}
    )


def _leaks(text: str) -> bool:
    return PASSWORD in text or API_KEY in text


def test_the_schema_marks_the_secret_fields_and_a_new_one_inherits_the_rule() -> None:
    assert set(config.secret_fields()) == {
        "tracking.uri",
        "serve.api_key",
        "sweep.storage_filesystem",
    }

    class Storage(config.schema.Section):  # a later key, e.g. storage credentials:
        region: str = "eu"  # the mark is all it needs
        secret_key: str | None = pydantic.Field(
            default=None, json_schema_extra=config.secret(env=("STORAGE_SECRET_KEY",))
        )

    assert set(config.secret_fields(Storage)) == {"secret_key"}
    assert config.redacted_value("value", "abc") == config.REDACTED


@pytest.mark.parametrize(
    "uri, shown",
    [
        (URI, "http://***@mlflow.internal:5000"),
        ("postgresql://mlflow:p@ss/w0rd@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("https://token@host/path?x=1", "https://***@host/path?x=1"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        (
            f"failed: {URI}/api/2.0/runs and {URI}",
            "failed: http://***@mlflow.internal:5000/api/"
            "2.0/runs and http://***@mlflow.internal:5000",
        ),
    ],
)
def test_a_uri_keeps_its_scheme_and_host_and_loses_its_credentials(uri: str, shown: str) -> None:
    assert config.redact_uri(uri) == shown


def test_redact_hides_every_secret_and_leaves_the_rest() -> None:
    cfg = _cfg()
    out = config.redact(cfg)
    assert out.tracking.uri == "http://***@mlflow.internal:5000"
    assert out.serve.api_key == config.REDACTED
    assert cfg.serve.api_key == API_KEY  # a copy: the running config keeps its secrets
    assert out.model_copy(update={"tracking": cfg.tracking, "serve": cfg.serve}) == cfg
    unset = config.redact(make_cfg("x.parquet"))
    assert unset.serve.api_key is None and unset.tracking.uri is None


class _Recorder:
    """What MLflow's client would be sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def log_batch(self, run_id: str, params: Any = (), **kw: Any) -> None:
        self.sent += [f"{p.key}={p.value}" for p in params]

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.sent.append(text)


def test_mlflow_params_config_yaml_and_the_config_hash_hold_no_secret() -> None:
    rec = _Recorder()
    writer.log_params(rec, "run", _cfg())  # type: ignore[arg-type]
    text = "\n".join(rec.sent)
    assert "serve.api_key=***" in text and "tracking.uri=http://***@mlflow.internal:5000" in text
    assert "api_key: '***'" in text  # config.yaml
    assert not _leaks(text)
    other = _cfg(**{"tracking.uri": URI.replace(PASSWORD, "other"), "serve.api_key": "other"})
    # the hash is of the redacted config: no oracle for guessing the password
    assert config.config_hash(other) == config.config_hash(_cfg())
    assert not _leaks(config.to_yaml(_cfg())) and not _leaks(json.dumps(config.flatten(_cfg())))


def test_the_sweep_state_file_and_a_kept_champion_hold_no_secret(tmp_path: Path) -> None:
    from orchestrator.core import model

    cfg = _cfg(**{"model.hidden": [4]})
    state.write(
        tmp_path,
        cfg,
        state.RUNNING,
        stamp="s",
        parent_run_id="p",
        experiment_id="1",
        fingerprint="f",
    )
    x = np.zeros((2, 3), np.float32)
    net = model.from_data(cfg, x, 2)
    champions.keep_champion(
        tmp_path, cfg, "p", net, x, numeric_spec(cfg, x, [0, 1]), {"test_accuracy": 1.0}, "t"
    )
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {state.STATE_FILE, "champion.json"}
    for p in files:
        assert not _leaks(p.read_bytes().decode("latin-1")), p
    saved = json.loads((tmp_path / state.STATE_FILE).read_text())
    assert saved["config"]["serve"]["api_key"] == config.REDACTED


def test_a_saved_config_gets_its_secrets_back_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved = config.from_dict(config.to_dict(config.redact(_cfg())))
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "ORCHESTRATOR_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError) as e:
        config.restore(saved)
    assert e.value.key == "tracking.uri" and "MLFLOW_TRACKING_USERNAME" in e.value.fix
    assert not _leaks(str(e.value))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    with pytest.raises(ConfigError) as e:
        config.restore(saved)
    assert e.value.key == "serve.api_key" and "ORCHESTRATOR_API_KEY" in e.value.fix
    assert config.restore(saved, keys=["tracking.uri"]).tracking.uri == URI
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", API_KEY)
    assert config.restore(saved) == _cfg()
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "p@ss:/word")  # quoted into the URI
    assert (
        config.restore(saved).tracking.uri == "http://admin:p%40ss%3A%2Fword@mlflow.internal:5000"
    )


def test_a_job_given_redacted_overrides_reads_the_secrets_from_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `orchestrator submit` sends is what `python -m jobs.sweep` loads on the cluster."""
    over = [
        "data.path=x.parquet",
        "tracking.uri=http://***@mlflow.internal:5000",
        "serve.api_key=***",
    ]
    monkeypatch.delenv("ORCHESTRATOR_API_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    with pytest.raises(ConfigError) as e:
        config.load(None, over)
    assert e.value.key == "serve.api_key"
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", API_KEY)
    cfg = config.load(None, over)
    assert (cfg.tracking.uri, cfg.serve.api_key) == (URI, API_KEY)
    assert config.load(None, ["serve.api_key=***"], only="serve").serve.api_key == API_KEY


# ---------------------------------------------------------------- orchestrator tracking serve


class _Exec(Exception):
    pass


def _serve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[list[str], dict[str, str], str]:
    seen: dict[str, Any] = {}

    def fake_exec(path: str, args: list[str], env: dict[str, str] | None = None) -> None:
        seen.update(args=list(args), env=dict(env if env is not None else os.environ))
        raise _Exec

    monkeypatch.setattr(os, "execv", fake_exec)
    monkeypatch.setattr(os, "execve", fake_exec)
    with pytest.raises(_Exec):
        cli.main(["tracking", "serve", *argv])
    captured = capsys.readouterr()
    return seen["args"], seen["env"], captured.out + captured.err


def test_tracking_serve_passes_the_backend_in_the_environment_and_prints_it_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = f"postgresql://mlflow:{PASSWORD}@db:5432/mlflow"
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    argv, env, printed = _serve(monkeypatch, capsys, "--backend", backend)
    assert not any(PASSWORD in a for a in argv) and "--backend-store-uri" not in argv
    assert env["MLFLOW_BACKEND_STORE_URI"] == backend
    assert "postgresql://***@db:5432/mlflow" in printed and PASSWORD not in printed
    # the way to keep it off orchestrator's own command line too: the variable
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", backend)
    argv, env, printed = _serve(monkeypatch, capsys)
    assert env["MLFLOW_BACKEND_STORE_URI"] == backend and PASSWORD not in " ".join(argv)
    assert PASSWORD not in printed


def test_tracking_serve_leaves_mlflows_job_runner_off_unless_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    _, env, _ = _serve(monkeypatch, capsys, "--backend", "sqlite:///x.db")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    _, env, _ = _serve(monkeypatch, capsys, "--backend", "sqlite:///x.db")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"


def test_a_bad_backend_is_refused_without_quoting_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["tracking", "serve", "--backend", f"mongodb://u:{PASSWORD}@h/db"]) == 2
    err = capsys.readouterr().err
    assert "--backend" in err and "mongodb://***@h/db" in err and PASSWORD not in err


# ---------------------------------------------------------------- orchestrator submit


def test_submit_sends_secrets_redacted_and_says_where_the_job_finds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(submit, "_check_tracking_server", lambda uri: None)
    cfg = _cfg(**{"data.path": "s3://b/d.parquet", "sweep.storage_path": "/mnt/shared/r"})
    passed = [
        f"serve.api_key={API_KEY}",
        "sweep.num_samples=2",
        *submit.resolve_paths(cfg, local_cluster=False),
    ]
    entry, runtime_env = submit.job_spec(str(ROOT / "jobs/configs/quickstart.yaml"), passed, ROOT)
    assert "tracking.uri=http://***@mlflow.internal:5000" in entry
    assert "serve.api_key=***" in entry and "sweep.num_samples=2" in entry
    assert not _leaks(entry + json.dumps(runtime_env))
    lines: list[str] = []
    submit.check_secrets(str(ROOT / "jobs/configs/quickstart.yaml"), cfg, lines.append)
    text = "\n".join(lines)
    assert "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD" in text
    assert "ORCHESTRATOR_API_KEY" in text and not _leaks(text)


def test_submit_refuses_a_config_file_that_holds_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{path: x.parquet}}\nserve: {{api_key: {API_KEY}}}\n")
    with pytest.raises(ConfigError) as e:
        submit.check_secrets(str(path), config.load(path), print)
    assert e.value.key == "serve.api_key" and "ORCHESTRATOR_API_KEY" in e.value.fix
    assert not _leaks(str(e.value))


def test_the_cluster_configs_give_the_job_its_secrets_from_the_cluster() -> None:
    """KubeRay: every Ray pod takes them from a Secret; the launcher configs source a file
    on each node; nothing holds a secret's value inline."""
    import yaml

    kuberay = ROOT / "cluster/kuberay"
    wanted = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "ORCHESTRATOR_API_KEY"}
    pods = 0
    for name in ("raycluster.yaml", "rayjob.yaml"):
        for doc in yaml.safe_load_all((kuberay / name).read_text()):
            spec = doc.get("spec", {}).get("rayClusterSpec", doc.get("spec", {}))
            groups = [spec.get("headGroupSpec", {}), *spec.get("workerGroupSpecs", [])]
            for group in groups:
                for c in group.get("template", {}).get("spec", {}).get("containers", []):
                    env = {e["name"]: e for e in c.get("env", [])}
                    assert wanted <= set(env), (name, c["name"])
                    for var in wanted:
                        assert "value" not in env[var]
                        assert env[var]["valueFrom"]["secretKeyRef"]["optional"] is True
                    pods += 1
    assert pods >= 4
    for name in ("aws.yaml", "gcp.yaml"):
        text = (ROOT / "cluster" / name).read_text()
        assert ". ~/.orchestrator-secrets.env" in text and "MLFLOW_TRACKING_PASSWORD=" not in text


def test_replay_takes_the_saved_uri_with_the_credentials_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state.write(
        tmp_path,
        _cfg(),
        state.DONE,
        stamp="s",
        parent_run_id="p",
        experiment_id="1",
        fingerprint="f",
    )
    sent: list[str] = []
    monkeypatch.setattr(champions, "replay", lambda folder, uri, **kw: sent.append(uri))
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["tracking", "replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tracking.uri" in err and "MLFLOW_TRACKING_USERNAME" in err and not _leaks(err)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    assert cli.main(["tracking", "replay", str(tmp_path)]) == 0
    # MLflow gets the bare URI; its client reads the credentials from the environment
    assert sent == ["http://mlflow.internal:5000"]
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD


def test_ray_serve_replicas_get_neither_the_api_key_nor_the_tracking_password() -> None:
    # Ray keeps a deployment's arguments (pickled, in its store) and shows its config: what
    # is bound must not hold a secret. The replicas check a digest of the key, and MLflow's
    # client takes the credentials from the node's environment.
    import cloudpickle

    from orchestrator.config import ServeConfig
    from orchestrator.serving import serve_ray

    key, password = "k3y-" + "x" * 28, "pw-" + "y" * 20
    app = serve_ray.application(
        "models:/m@champion",
        f"http://admin:{password}@db:5000",
        ServeConfig(replicas=2, api_key=key),
        key,
    )
    blob = cloudpickle.dumps(app)
    assert key.encode() not in blob and password.encode() not in blob
    args = app._bound_deployment.init_args
    assert args[1] == "http://db:5000" and args[3] == serve_ray.serve_mod.key_sha256(key)
    assert config.split_credentials("https://u%40x:p%3Aw@h:1/p?q=1") == (
        "https://h:1/p?q=1",
        "u@x",
        "p:w",
    )
    assert config.split_credentials("sqlite:///a.db") == ("sqlite:///a.db", None, None)


def test_mlflow_never_gets_the_uri_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # MLflow copies the URI it is given into $MLFLOW_TRACKING_URI (inherited by every
    # process Ray starts) and quotes it in its errors: it gets the bare URI, and the
    # credentials go to the variables its client reads
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://admin:{PASSWORD}@127.0.0.1:{port}"
    assert location.resolve_uri(_cfg(**{"tracking.uri": uri})) == f"http://127.0.0.1:{port}"
    with pytest.raises(ConfigError) as e:
        writer.connect(_cfg(**{"tracking.uri": uri}))
    assert PASSWORD not in str(e.value) and PASSWORD not in os.environ["MLFLOW_TRACKING_URI"]
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
    # a redacted part never overwrites the real credentials
    assert location.bare_uri(f"http://***@127.0.0.1:{port}") == f"http://127.0.0.1:{port}"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
    import mlflow

    mlflow.set_tracking_uri(None)  # leave no tracking URI behind for other tests


def test_storage_options_hide_only_their_secrets_and_take_them_back_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = {
        "endpoint_override": "http://127.0.0.1:9000",
        "access_key": "AKIA-SECRET-ID",
        "secret_key": "s3cr3t-key",
    }
    cfg = make_cfg(
        **{"sweep.storage_path": "s3://bucket/results", "sweep.storage_filesystem": options}
    )
    shown = config.redact(cfg).sweep.storage_filesystem
    assert shown == {
        "endpoint_override": "http://127.0.0.1:9000",
        "access_key": config.REDACTED,
        "secret_key": config.REDACTED,
    }
    written = json.dumps(config.to_dict(config.redact(cfg)))
    assert "s3cr3t-key" not in written and "AKIA-SECRET-ID" not in written
    assert set(config.secrets_set(cfg)) >= {"sweep.storage_filesystem"}
    saved = config.from_dict(config.to_dict(config.redact(cfg)))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env-id")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ConfigError) as e:
        config.restore(saved)
    assert e.value.key == "sweep.storage_filesystem.secret_key"
    assert "AWS_SECRET_ACCESS_KEY" in e.value.fix
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    back = config.restore(saved).sweep.storage_filesystem
    assert back == {
        "endpoint_override": "http://127.0.0.1:9000",
        "access_key": "from-env-id",
        "secret_key": "from-env-secret",
    }


def test_storage_options_are_checked_at_the_door() -> None:
    with pytest.raises(ConfigError) as e:
        make_cfg(**{"sweep.storage_filesystem": {"region": "eu-west-1"}})
    assert e.value.key == "sweep.storage_filesystem" and "folder" in e.value.problem
    with pytest.raises(ConfigError) as e:
        make_cfg(
            **{
                "sweep.storage_path": "s3://bucket/results",
                "sweep.storage_filesystem": {"region": ["eu"]},
            }
        )
    assert e.value.key == "sweep.storage_filesystem.region"

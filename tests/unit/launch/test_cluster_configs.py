"""The cloud and Kubernetes configs in cluster/: the launcher configs pass the schema that
ships inside the `ray` package (what `ray up` checks), and the KubeRay manifests have the
structure and entrypoints the README promises (the entrypoint's config loads and validates)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from conftest import ROOT
from orchestrator import config
from orchestrator.core import placement
from orchestrator.launch import cluster

CLUSTER = ROOT / "cluster"
SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())
IMAGE_ROOT = "/home/ray/orchestrator/"  # where cluster/Dockerfile puts the project


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_passes_rays_own_schema(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(cfg, SCHEMA)
    # what `ray up` runs before it touches the cloud: the provider's defaults merged in, then
    # the schema again plus Ray's own cross-checks (node types, worker counts)
    validate_config(prepare_config(cfg))


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_has_a_cpu_head_gpu_workers_and_the_settings(name: str) -> None:
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # trials stay off the head
    gpu = [t for k, t in types.items() if "gpu" in k]
    assert gpu and all(0 <= t["min_workers"] <= t["max_workers"] for t in gpu)
    assert all(
        t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
        for k, t in types.items()
        if k != cfg["head_node_type"]
    )
    setup = "\n".join(cfg["setup_commands"])
    # the project installs at its pinned versions, and the two settings are exported
    assert "-c constraints.txt" in setup and "pip install" in setup and "-e ." in setup
    assert "MLFLOW_TRACKING_URI=" in setup and "ORCHESTRATOR_STORAGE_PATH=" in setup
    for start in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in "\n".join(start)
    assert "--dashboard-host=127.0.0.1" in "\n".join(cfg["head_start_ray_commands"])
    assert any("auth_token" in remote for remote in cfg["file_mounts"])


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec["template"]["spec"]["containers"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _check_ray_cluster_spec(spec: dict[str, Any], secret: str) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = spec["workerGroupSpecs"]
    gpu = [g for g in groups if "gpu" in g["groupName"]]
    assert gpu, "a GPU worker group"
    for g in gpu:
        limits = _containers(g)[0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert 0 <= g["minReplicas"] <= g["maxReplicas"]
    for pod in [head, *groups]:
        env = _env(_containers(pod)[0])
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"]["secretKeyRef"]["name"] == secret
        assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.")
        assert env["ORCHESTRATOR_STORAGE_PATH"].startswith("/mnt/shared")


def test_the_token_secret_exists_for_everyone_who_names_it() -> None:
    secrets = [d for d in _docs("auth-secret.yaml") if d["kind"] == "Secret"]
    assert len(secrets) == 1 and "token" in secrets[0]["stringData"]


def test_raycluster_has_a_head_gpu_workers_shared_storage_and_token_auth() -> None:
    docs = _docs("raycluster.yaml")
    rc = next(d for d in docs if d["kind"] == "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1" and rc["spec"]["rayVersion"] == ray.__version__
    _check_ray_cluster_spec(rc["spec"], "ray-auth-token")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every node, one folder
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in rc["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    }
    assert claims == {pvc["metadata"]["name"]}


def test_rayjob_runs_a_sweep_whose_config_loads() -> None:
    job = next(d for d in _docs("rayjob.yaml") if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and job["spec"]["shutdownAfterJobFinishes"] is True
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.sweep"]
    assert argv[3].startswith(IMAGE_ROOT)
    path = ROOT / argv[3][len(IMAGE_ROOT) :]
    assert path.is_file(), path
    cfg = config.load(path, argv[4:])  # every override is a real key with a valid value
    assert cfg.scaling.use_gpu and cfg.data.path.startswith("s3://")
    _check_ray_cluster_spec(job["spec"]["rayClusterSpec"], "ray-auth-token")
    submitter = _env(
        _containers(
            job["spec"]["submitterPodTemplate"]
            | {"template": {"spec": job["spec"]["submitterPodTemplate"]["spec"]}}
        )[0]
    )
    assert submitter["RAY_AUTH_MODE"] == "token" and "secretKeyRef" in submitter["RAY_AUTH_TOKEN"]


def test_mlflow_runs_on_postgres_with_s3_artifacts_behind_the_service_ray_uses() -> None:
    docs = _docs("mlflow.yaml")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    container = _containers(deploy["spec"])[0]
    command = " ".join(container["command"] + container.get("args", []))
    assert "orchestrator tracking serve" in command and "--host 0.0.0.0" in command
    assert "--artifacts s3://" in command
    # the database URI (its password) comes from the Secret through the environment, never
    # the command line (shown by `kubectl describe`, `ps` on the node)
    assert "postgres" not in command.lower() and "--backend" not in command
    from orchestrator.cli import build_parser
    from orchestrator.tracking.server import BACKEND_ENV

    args = build_parser().parse_args(container["command"][1:])
    assert args.backend is None and args.artifacts.startswith("s3://")
    backend = _env(container)[BACKEND_ENV]
    assert backend.startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    db = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "mlflow-db")
    assert {"name": "mlflow-db"} in [e["secretRef"] for e in container["envFrom"]]
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(db["stringData"])
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    port = services["mlflow"]["spec"]["ports"][0]["port"]
    rc = next(d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster")
    uri = _env(_containers(rc["spec"]["headGroupSpec"])[0])["MLFLOW_TRACKING_URI"]
    assert uri == f"http://mlflow.orchestrator.svc.cluster.local:{port}"
    pg = next(d for d in docs if d["kind"] == "StatefulSet")
    assert "mlflow-postgres" in services and pg["spec"]["serviceName"] == "mlflow-postgres"


def test_the_image_installs_the_pinned_project() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}" in text
    assert "-c constraints.txt torch==2.13.0" in text and "-c constraints.txt -e ." in text
    assert "WORKDIR " + IMAGE_ROOT.rstrip("/") in text


def test_the_tracking_serve_options_in_the_manifest_exist() -> None:
    from orchestrator.cli import build_parser

    args = build_parser().parse_args(
        [
            "tracking",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "5000",
            "--workers",
            "4",
            "--backend",
            "postgresql://x",
            "--artifacts",
            "s3://b/a",
        ]
    )
    assert args.backend == "postgresql://x" and args.artifacts == "s3://b/a"


def test_the_schema_check_has_teeth() -> None:
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**cfg, "mlflow_uri": "http://x"}, SCHEMA)  # no such key
    bad = json.loads(json.dumps(cfg))
    bad["available_node_types"]["gpu_worker"]["resources"] = {"GPU": -1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


# ---------------------------------------------------------------- what must not leave, or start


# What holds secrets or private data on the machine `ray up` runs from: the local cluster's
# state (its token), MLflow stores, results (checkpoints, journals), data, environments.
KEPT_HOME = {
    cluster.STATE_DIR.name,
    "mlflow.db",
    "*.db",
    "mlruns",
    "mlartifacts",
    "results",
    "data",
    ".venv",
    ".env",
}


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_the_launcher_uploads_no_local_state_stores_or_secrets(name: str) -> None:
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    assert KEPT_HOME <= set(cfg["rsync_exclude"])
    assert cfg["rsync_filter"] == [".gitignore"]  # and whatever else the project ignores
    # the same folders `orchestrator submit` leaves out of a job's working directory
    from orchestrator.launch import submit

    assert {e.rstrip("/") for e in submit.EXCLUDES} >= KEPT_HOME - {".env"}


def _heads() -> list[tuple[str, dict[str, Any]]]:
    rc = next(d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster")
    job = next(d for d in _docs("rayjob.yaml") if d["kind"] == "RayJob")
    return [
        ("raycluster", rc["spec"]["headGroupSpec"]["template"]["spec"]),
        ("rayjob", job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]),
    ]


def _token_check(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod.get("initContainers", []) if c["name"] == "check-ray-token")


def test_the_token_secret_ships_a_placeholder_the_heads_refuse() -> None:
    import secrets as pysecrets

    (secret,) = [d for d in _docs("auth-secret.yaml") if d["kind"] == "Secret"]
    placeholder = secret["stringData"]["token"]
    assert placeholder.startswith("CHANGE-ME")  # a marker anyone reading it recognises
    scripts = set()
    for name, pod in _heads():
        check = _token_check(pod)
        assert check["image"] == pod["containers"][0]["image"], name
        assert check["env"][0]["valueFrom"]["secretKeyRef"] == {
            "name": "ray-auth-token",
            "key": "token",
        }
        scripts.add(tuple(check["command"]))
    (command,) = scripts  # both heads run the same check
    assert command[:2] == ("sh", "-c")

    def run(token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(command),
            env={"RAY_AUTH_TOKEN": token, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=10,
        )

    refused = run(placeholder)  # what applying auth-secret.yaml unchanged gives the head
    assert refused.returncode == 1 and "placeholder" in refused.stderr
    assert run("").returncode == 1 and run("short-token").returncode == 1
    ok = run(pysecrets.token_hex(32))
    assert ok.returncode == 0 and not ok.stderr


def _resources_flag(command: str) -> dict[str, float]:
    """The ``--resources`` JSON of a `ray start` command line ({} when it has none)."""
    for arg in shlex.split(command):
        if arg.startswith("--resources="):
            return dict(json.loads(arg.split("=", 1)[1]))
    return {}


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_only_the_head_has_the_resource_that_keeps_trials_steering_there(name: str) -> None:
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    head = cfg["head_node_type"]
    for kind, node in cfg["available_node_types"].items():
        held = node.get("resources", {}).get(placement.HEAD_RESOURCE, 0)
        assert (held >= placement.HEAD_AMOUNT) == (kind == head), kind
    starts = {"head": cfg["head_start_ray_commands"], "worker": cfg["worker_start_ray_commands"]}
    found = {role: [_resources_flag(c) for c in cmds] for role, cmds in starts.items()}
    assert any(placement.HEAD_RESOURCE in r for r in found["head"])
    assert not any(placement.HEAD_RESOURCE in r for r in found["worker"])


def test_the_kuberay_head_alone_has_the_steering_resource() -> None:
    rc = next(d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster")
    head = rc["spec"]["headGroupSpec"]["rayStartParams"]["resources"]
    # KubeRay passes the value through a shell: one quoted JSON object
    assert json.loads(shlex.split(head)[0]) == {placement.HEAD_RESOURCE: placement.HEAD_AMOUNT}
    for group in rc["spec"]["workerGroupSpecs"]:
        assert "resources" not in group.get("rayStartParams", {})

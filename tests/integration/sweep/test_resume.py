"""A sweep whose driver is SIGKILLed mid-sweep, then `orchestrator resume`: finished trials are
not rerun, unfinished ones continue from their last checkpoint, the searcher keeps its
state, and MLflow ends with exactly one run per trial. Real local Ray, real MLflow SQLite;
checkpoints and state in a local folder, or on S3 (moto's server on loopback), where the
resume starts from the sweep's URI alone, in another folder, after the first driver's local
files and Ray session directory are deleted: a machine that never saw the first driver."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, s3_keys

pytestmark = pytest.mark.slow
EPOCHS = 30


# Single-worker trials (the loop in the Tune trial, restored from Tune's checkpoint). The
# 2-worker case was run by hand: Ray Train's checkpoint-manager snapshot can be left empty
# by a kill mid-write, so it is not yet reliable enough for the suite.
@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_driver_resumes_without_rerunning_or_duplicating(
    digits_path: Path, tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    workers, trials = 1, 6
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"{tmp_path}/results"
    if where == "s3":
        import boto3

        request.getfixturevalue("moto_s3")  # AWS_* point at it, for the drivers too
        boto3.client("s3").create_bucket(Bucket="sweeps")
        storage = "s3://sweeps/results"
    # the first driver's Ray keeps its session here, deleted after the kill (a short path:
    # Ray's sockets live under it)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # Tune saves its experiment state every second here, so the kill finds recent state
    env = {
        **os.environ,
        "RAY_ADDRESS": "local",
        "RAY_TMPDIR": ray_tmp,
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "PYTHONUNBUFFERED": "1",
    }
    args = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "sweep",
        str(ROOT / "jobs/configs/quickstart.yaml"),
        f"data.path={digits_path}",
        f"tracking.uri={uri}",
        f"sweep.storage_path={storage}",
        "experiment=resume",
        "tracking.register_as=resume-digits",
        f"scaling.num_workers={workers}",
        f"scaling.cpus_per_worker={1 / workers}",
        "model.hidden=[512,512]",
        # keep every checkpoint: Tune's retention may otherwise delete the one its last
        # saved state names before the next save (a known gap, see docs/searching.md)
        f"train.keep_checkpoints={EPOCHS}",
        f"sweep.num_samples={trials}",
        f"train.epochs={EPOCHS}",
        "sweep.scheduler=fifo",
    ]
    log = (tmp_path / "driver.err").open("w")
    driver = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log, text=True
    )
    first: list[str] = []
    try:
        assert driver.stdout is not None
        deadline = time.time() + 300
        for line in driver.stdout:  # two trials finished and a later one started
            first.append(line)
            if "trials done 2/" in "".join(first) and "_00003 started" in line:
                break
            assert time.time() < deadline, "".join(first)
        # wait for that trial's first checkpoint, then for Tune's next save of its state
        pattern = (
            "resume-*/trial_fn_*_00003_*/checkpoint_*"
            if workers == 1
            else "resume-*-*_00003/checkpoint_*"
        )
        while not _checkpoints(storage, pattern):
            assert time.time() < deadline and driver.poll() is None, "".join(first)
            time.sleep(0.1)
        time.sleep(1.5)
        started_by_driver = psutil.Process(driver.pid).children(recursive=True)
        killed_at = time.time()
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        # stop the Ray processes that driver started, if its death did not take them along
        for p in locals().get("started_by_driver", []):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    print("".join(first))
    finished = re.findall(r"\[sweep\] trial (\S+) finished;", "".join(first))
    assert len(finished) >= 2
    shutil.rmtree(ray_tmp)  # the first driver's Ray session: gone with its machine
    resume_args = ["resume", "--storage", storage]
    cwd = tmp_path
    if where == "s3":
        # nothing local survives: the sweep's URI, as the driver printed it, is enough
        assert not (tmp_path / "results").exists()
        printed = re.search(r"orchestrator resume (s3://\S+)", "".join(first))
        assert printed, "".join(first)
        resume_args = [printed.group(1)]
        cwd = tmp_path / "elsewhere"
        cwd.mkdir()
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "resume", *resume_args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "restored" in out and f"trials done {trials}/{trials}" in out
    assert "continues from epoch" in out  # an unfinished trial went on from its checkpoint

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags["orchestrator.role"] == "sweep"]
    children = [r for r in runs if r.data.tags["orchestrator.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "orchestrator.resumed" in parents[0].data.tags
    # exactly one run per trial, each with every epoch once
    ids = [r.data.tags["orchestrator.trial_id"] for r in children]
    assert len(ids) == trials and len(set(ids)) == trials
    for r in children:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (ids, steps)
    # the trials that had finished before the kill were not run again
    for trial_id in finished:
        assert f"trial {trial_id} started" not in out
        run = next(r for r in children if r.data.tags["orchestrator.trial_id"] == trial_id)
        assert run.info.end_time < killed_at * 1000
    # the searcher kept its state: six distinct configurations, no more
    configs = {
        json.dumps([r.data.params["train.weight_decay"], r.data.params["model.dropout"]])
        for r in children
    }
    assert len(configs) == trials
    assert str(client.get_model_version_by_alias("resume-digits", "champion").version) == "1"
    assert len(client.search_model_versions("name='resume-digits'")) == 1  # registered once
    if where == "s3":  # the checkpoints and the sweep's state are on S3, nowhere else
        keys = s3_keys("sweeps", "results/")
        assert any(k.endswith("/orchestrator.json") for k in keys)
        assert any("/checkpoint_" in k for k in keys)
        assert not (tmp_path / "results").exists()


def _checkpoints(storage: str, pattern: str) -> list[str]:
    """The checkpoint folders matching ``pattern`` (a glob under the storage path)."""
    if not storage.startswith("s3://"):
        return [str(p) for p in Path(storage).glob(pattern)]
    regex = re.compile(re.escape(pattern).replace(r"\*", "[^/]*"))
    return [k for k in s3_keys("sweeps", "results/") if regex.match(k.removeprefix("results/"))]

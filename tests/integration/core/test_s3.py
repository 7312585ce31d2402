"""Parquet from `s3://` through pyarrow's filesystems, against a real S3-compatible server
(moto's) on loopback, started and stopped (by pid) by this test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import free_port
from orchestrator.config import ConfigError, DataConfig
from orchestrator.core import data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(digits_path: Path) -> Iterator[str]:
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
        )
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    try:
        # any answer means up; its first one can take seconds on a loaded machine (a read
        # timeout is "not yet", as a refused connection is)
        deadline = time.time() + 120
        while True:
            try:
                requests.get(endpoint, timeout=5)
                break
            except requests.RequestException:
                assert time.time() < deadline and server.poll() is None, "moto did not start"
                time.sleep(0.2)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="datasets")
        client.upload_file(str(digits_path), "datasets", "digits/digits.parquet")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_s3_parquet_reads_the_same_rows_as_the_local_file(s3: str, digits_path: Path) -> None:
    remote = data.read(DataConfig(path="s3://datasets/digits/digits.parquet"))
    local = data.read(DataConfig(path=str(digits_path)))
    assert remote.fingerprint == local.fingerprint and remote.table.num_rows == 1797


def test_missing_s3_object_is_a_clear_config_error(s3: str) -> None:
    with pytest.raises(ConfigError) as e:
        data.read(DataConfig(path="s3://datasets/nope.parquet"))
    assert e.value.key == "data.path" and "does not exist" in e.value.problem

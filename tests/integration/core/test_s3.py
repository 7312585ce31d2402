"""Object storage through pyarrow's filesystems, against a real S3-compatible server (moto's)
on loopback, started and stopped (by pid) by the module: Parquet read from `s3://`, and a
sweep's folder there (its state, its append-only logs; the tracking journal's
crash test runs on S3 too, in tests/integration/tracking/test_journal_crash.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import s3_keys
from orchestrator.config import ConfigError, DataConfig
from orchestrator.core import data, storage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(moto_s3: str, digits_path: Path) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=moto_s3)
    client.create_bucket(Bucket="datasets")
    client.upload_file(str(digits_path), "datasets", "digits/digits.parquet")
    return moto_s3


def test_s3_parquet_reads_the_same_rows_as_the_local_file(s3: str, digits_path: Path) -> None:
    remote = data.read(DataConfig(path="s3://datasets/digits/digits.parquet"))
    local = data.read(DataConfig(path=str(digits_path)))
    assert remote.fingerprint == local.fingerprint and remote.table.num_rows == 1797


def test_missing_s3_object_is_a_clear_config_error(s3: str) -> None:
    with pytest.raises(ConfigError) as e:
        data.read(DataConfig(path="s3://datasets/nope.parquet"))
    assert e.value.key == "data.path" and "does not exist" in e.value.problem


# ---------------------------------------------------------------- a sweep's folder on S3


@pytest.fixture
def bucket(moto_s3: str, request: pytest.FixtureRequest) -> str:
    import boto3

    name = "f" + request.node.name.lower().replace("_", "-")[:40].rstrip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_a_folder_on_s3_reads_back_what_it_wrote_and_lists_its_sweeps(bucket: str) -> None:
    root = storage.Folder(f"s3://{bucket}/results")
    assert not root.is_dir() and root.children() == []
    sweep = root / "exp-20260101-000000"
    sweep.write_atomic("orchestrator.json", '{"phase": "running"}')
    assert sweep.read_text("orchestrator.json") == '{"phase": "running"}'
    assert root.children() == ["exp-20260101-000000"] and sweep.is_file("orchestrator.json")
    with pytest.raises(FileNotFoundError):
        sweep.read_bytes("nothing.json")
    storage.probe(root)  # writes and deletes its probe object
    assert s3_keys(bucket) == ["results/exp-20260101-000000/orchestrator.json"]


def test_a_log_on_s3_appends_as_objects_and_a_rewrite_is_never_half_done(bucket: str) -> None:
    import boto3

    folder = storage.Folder(f"s3://{bucket}/sweep")
    folder.append_line("log.jsonl", {"a": 1})
    folder.append_line("log.jsonl", {"a": 2})
    assert folder.read_lines("log.jsonl") == b'{"a": 1}\n{"a": 2}\n'
    folder.rewrite_lines("log.jsonl", '{"b": 1}\n')
    folder.append_line("log.jsonl", {"b": 2})
    assert folder.read_lines("log.jsonl") == b'{"b": 1}\n{"b": 2}\n'
    assert len(s3_keys(bucket, "sweep/log.jsonl.d/")) == 2  # the old generation is gone
    # a rewrite killed after its new generation was written, before the old one went: the
    # reader sees the new content only
    boto3.client("s3").put_object(
        Bucket=bucket, Key="sweep/log.jsonl.d/000000-000000000", Body=b'{"stale": 1}\n'
    )
    assert folder.read_lines("log.jsonl") == b'{"b": 1}\n{"b": 2}\n'
    folder.remove("log.jsonl")
    assert folder.read_lines("log.jsonl") == b"" and s3_keys(bucket, "sweep/") == []

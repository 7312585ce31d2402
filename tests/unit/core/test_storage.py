"""A sweep's folder, local side: the same operations as on object storage (tested against a
real S3 server in tests/integration/core/test_s3.py), with fsync where a crash could lose a
write; and how locations and Ray's checkpoint paths are named."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.core import storage


def test_locations_are_folders_or_uris_and_a_folder_is_made_absolute(tmp_path: Path) -> None:
    assert storage.is_uri("s3://bucket/x") and storage.is_uri("gs://b/x")
    assert not storage.is_uri("results") and not storage.is_uri("file:///tmp/x")
    assert storage.absolute("s3://bucket/results/") == "s3://bucket/results"
    assert storage.absolute("results") == str(Path("results").absolute())
    assert storage.absolute("file:///tmp/x") == "/tmp/x"
    folder = storage.Folder(str(tmp_path)) / "sweep"
    assert folder.local and folder.name == "sweep" and str(folder.parent) == str(tmp_path)


def test_a_checkpoint_on_object_storage_is_named_by_its_uri() -> None:
    assert storage.uri_of(SimpleNamespace(type_name="s3"), "bkt/a/ckpt") == "s3://bkt/a/ckpt"
    assert storage.uri_of(SimpleNamespace(type_name="gcs"), "bkt/a") == "gs://bkt/a"
    assert storage.uri_of(SimpleNamespace(type_name="local"), "/tmp/a") == "/tmp/a"


def test_a_local_log_appends_fsynced_lines_and_a_rewrite_replaces_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    folder = storage.Folder(str(tmp_path))
    folder.append_line("log.jsonl", {"a": 1})
    assert str(tmp_path / "log.jsonl") in synced and str(tmp_path) in synced  # file + entry
    folder.append_line("log.jsonl", {"a": 2}, sync=False)
    assert folder.read_lines("log.jsonl") == b'{"a": 1}\n{"a": 2}\n'
    folder.rewrite_lines("log.jsonl", '{"b": 1}\n')
    assert (tmp_path / "log.jsonl").read_text() == '{"b": 1}\n'
    assert not (tmp_path / "log.jsonl.tmp").exists()  # renamed into place
    folder.remove("log.jsonl")
    assert folder.read_lines("log.jsonl") == b"" and not (tmp_path / "log.jsonl").exists()


def test_a_folder_lists_its_subfolders_and_copies_files_out(tmp_path: Path) -> None:
    root = storage.Folder(str(tmp_path / "results"))
    assert root.children() == []
    (root / "b").mkdir()
    (root / "a").mkdir()
    assert root.children() == ["a", "b"]
    (root / "a" / "kept").mkdir()
    root.write_atomic("a/kept/w.pt", b"weights")
    assert root.is_file("a/kept/w.pt") and root.read_bytes("a/kept/w.pt") == b"weights"
    back = root.download("a/kept", tmp_path / "back")
    assert (back / "w.pt").read_bytes() == b"weights"
    root.remove_tree("a")
    assert root.children() == ["b"]
    with pytest.raises(FileNotFoundError):
        root.read_bytes("a/kept/w.pt")


def test_the_probe_leaves_nothing_and_names_a_folder_it_cannot_write(tmp_path: Path) -> None:
    storage.probe(storage.Folder(str(tmp_path / "not" / "yet")))  # nearest existing parent
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        storage.probe(storage.Folder(str(blocker / "results")))


def test_secret_options_reach_the_environment_never_the_filesystem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    options = {"endpoint_override": "http://127.0.0.1:1", "secret_key": "s3cr3t"}
    assert storage.public_options(options) == {"endpoint_override": "http://127.0.0.1:1"}
    storage.export_secrets(options)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    storage.export_secrets({"secret_key": "***"})  # a redacted one is left to the environment
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    with pytest.raises(ValueError):
        storage.filesystem("hdfs://x/y", {"endpoint_override": "z"})


def test_a_filesystem_ray_may_pickle_carries_no_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pickle

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-FROM-THE-ENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-env")
    options = {"endpoint_override": "http://127.0.0.1:1", "region": "us-east-1"}
    for given in (options, {**options, "secret_key": "secret-from-the-config"}):
        fs, path = storage.filesystem("s3://bucket/results", given)
        raw = pickle.dumps(fs)  # what Tune writes into the sweep's folder
        assert path == "bucket/results"
        for secret in (b"AKIA-FROM-THE-ENV", b"secret-from-the-env", b"secret-from-the-config"):
            assert secret not in raw

"""Ray's start-up as the orchestrator shapes it (no Ray runtime started here)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.execution import runtime


def test_raylet_messages_go_to_a_log_file_not_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray._private.worker as ray_worker

    printed: list[dict] = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, _: printed.append(data))
    node = SimpleNamespace(get_logs_dir_path=lambda: str(tmp_path))
    monkeypatch.setattr(ray_worker, "_global_node", node)
    runtime.quiet_raylet()
    runtime.quiet_raylet()  # twice: still one wrapper
    noise = "12 PYTHON worker processes have been started on node: x. This could be ..."
    ray_worker.print_to_stdstream({"pid": "raylet", "lines": [noise], "is_err": False}, False)
    ray_worker.print_to_stdstream(
        {"pid": 4242, "lines": ["a trial's print"], "is_err": False}, False
    )
    assert (tmp_path / runtime.RAYLET_LOG).read_text() == noise + "\n"
    assert [d["pid"] for d in printed] == [4242]  # a worker's own output is not Ray's noise

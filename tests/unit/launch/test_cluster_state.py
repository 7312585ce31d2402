"""`orchestrator cluster` without Ray: the token file and state folder modes, and `down`
touching only what `up` started. The nodes are real processes (`sleep`) standing in for
`ray start --block`; everything but the spawn and the wait for the dashboard is the real code."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from orchestrator.launch import cluster


@pytest.fixture
def fake_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen]]:
    """`up` spawns `sleep 60` in its own process group instead of a Ray node, and does not
    wait for a dashboard; the sleeps are killed at the end whatever the test did."""
    procs: list[subprocess.Popen] = []

    def spawn(args: list[str], state: cluster.State, log: Path) -> int:
        procs.append(subprocess.Popen(["sleep", "60"], start_new_session=True))
        return procs[-1].pid

    monkeypatch.setattr(cluster, "_spawn", spawn)
    monkeypatch.setattr(cluster, "_wait", lambda *a, **k: None)
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the common default: files 0644, folders 0755
    yield
    os.umask(old)


def test_the_token_is_0600_and_the_state_folder_0700(
    fake_nodes: list, tmp_path: Path, loose_umask: None
) -> None:
    state_dir = tmp_path / ".ray-local"
    state = cluster.up(workers=1, state_dir=state_dir, timeout=5)
    assert _mode(state_dir) == 0o700 and _mode(Path(state.token_path)) == 0o600
    assert len(Path(state.token_path).read_text()) == 64
    cluster.down(state_dir, timeout=10)


def test_an_existing_folder_is_narrowed_to_0700(
    fake_nodes: list, tmp_path: Path, loose_umask: None
) -> None:
    state_dir = tmp_path / ".ray-local"
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)
    cluster.up(workers=0, state_dir=state_dir, timeout=5)
    assert _mode(state_dir) == 0o700
    cluster.down(state_dir, timeout=10)


def test_an_existing_token_others_can_read_is_refused_and_nothing_starts(
    fake_nodes: list, tmp_path: Path
) -> None:
    state_dir = tmp_path / ".ray-local"
    state_dir.mkdir()
    token = state_dir / "auth_token"
    token.write_text("a" * 64)
    token.chmod(0o644)
    with pytest.raises(RuntimeError, match="mode 644.*Delete it"):
        cluster.up(workers=1, state_dir=state_dir, timeout=5)
    assert not fake_nodes and _mode(token) == 0o644  # refused, not quietly fixed
    token.chmod(0o600)  # a private one is used as it is
    state = cluster.up(workers=0, state_dir=state_dir, timeout=5)
    assert Path(state.token_path).read_text() == "a" * 64
    cluster.down(state_dir, timeout=10)


def test_a_link_in_place_of_the_token_is_refused_and_not_written_through(
    fake_nodes: list, tmp_path: Path
) -> None:
    state_dir = tmp_path / ".ray-local"
    state_dir.mkdir()
    target = tmp_path / "elsewhere"
    (state_dir / "auth_token").symlink_to(target)  # dangling: writing would create target
    with pytest.raises(RuntimeError, match="not a plain file"):
        cluster.up(workers=0, state_dir=state_dir, timeout=5)
    assert not target.exists() and not fake_nodes


def _tamper(state_dir: Path, **fields: object) -> None:
    path = state_dir / "cluster.json"
    raw = json.loads(path.read_text())
    raw.update(fields)
    path.write_text(json.dumps(raw))


def test_down_stops_the_processes_up_started_and_deletes_its_temp_folders(
    fake_nodes: list, tmp_path: Path
) -> None:
    state_dir = tmp_path / ".ray-local"
    state = cluster.up(workers=2, state_dir=state_dir, timeout=5)
    for i in range(2):
        Path(f"{state.temp_dir}-w{i}").mkdir()  # as each worker's `ray start` makes it
    assert cluster.is_up(state) and set(state.identities) == {str(p.pid) for p in fake_nodes}
    assert cluster.down(state_dir, timeout=10)
    assert all(p.wait(timeout=10) is not None for p in fake_nodes)
    assert not Path(state.temp_dir).exists() and not Path(f"{state.temp_dir}-w1").exists()
    assert not (state_dir / "cluster.json").exists()


def test_down_leaves_a_reused_pid_alone(
    fake_nodes: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pid that names another process than the one `up` started (as after a reboot) is
    not signalled: here the recorded identities are replaced, the processes are the same."""
    state_dir = tmp_path / ".ray-local"
    cluster.up(workers=1, state_dir=state_dir, timeout=5)
    raw = json.loads((state_dir / "cluster.json").read_text())
    if "identities" in raw:
        _tamper(state_dir, identities={pid: "another-boot/123" for pid in raw["identities"]})
    cluster.down(state_dir, timeout=10)
    assert all(p.poll() is None for p in fake_nodes), "down killed a process it did not start"
    assert capsys.readouterr().err.count("left pid") == 2


def test_down_leaves_the_pids_of_a_state_without_identities_alone(
    fake_nodes: list, tmp_path: Path
) -> None:
    state_dir = tmp_path / ".ray-local"
    cluster.up(workers=0, state_dir=state_dir, timeout=5)
    raw = json.loads((state_dir / "cluster.json").read_text())
    raw.pop("identities", None)  # what an older version wrote: nothing proves whose pid it is
    (state_dir / "cluster.json").write_text(json.dumps(raw))
    cluster.down(state_dir, timeout=10)
    assert fake_nodes[0].poll() is None


def test_up_does_not_start_over_a_live_cluster_of_an_older_state_file(
    fake_nodes: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator import cli

    state_dir = tmp_path / ".ray-local"
    cluster.up(workers=0, state_dir=state_dir, timeout=5)
    raw = json.loads((state_dir / "cluster.json").read_text())
    raw.pop("identities", None)  # what an older version wrote, its head still running
    (state_dir / "cluster.json").write_text(json.dumps(raw))
    assert cli.main(["cluster", "up", "--state-dir", str(state_dir)]) == 1
    assert "already up" in capsys.readouterr().err
    assert len(fake_nodes) == 1  # nothing new was started over it
    assert json.loads((state_dir / "cluster.json").read_text()) == raw


@pytest.mark.parametrize("kind", ["elsewhere", "prefix-under-tmp", "link"])
def test_down_deletes_no_folder_it_did_not_make(
    kind: str, fake_nodes: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / ".ray-local"
    state = cluster.up(workers=0, state_dir=state_dir, timeout=5)
    os.rmdir(state.temp_dir)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    if kind == "elsewhere":
        named = precious
    elif kind == "prefix-under-tmp":  # the right place, but not a name mkdtemp gave `up`
        named = Path(tempfile.mkdtemp(prefix="rayc-important-", dir="/tmp"))
        (named / "keep.txt").write_text("mine")
    else:  # the right place and name, but a link to another folder
        named = Path(tempfile.mktemp(prefix=cluster.TEMP_PREFIX, dir="/tmp"))
        named.symlink_to(precious)
    _tamper(state_dir, temp_dir=str(named))
    try:
        cluster.down(state_dir, timeout=10)
        assert (named / "keep.txt").read_text() == "mine"
        assert (precious / "keep.txt").read_text() == "mine"
        assert f"left {named} alone" in capsys.readouterr().err
    finally:
        if named.is_symlink():
            named.unlink()
        elif kind == "prefix-under-tmp":
            (named / "keep.txt").unlink(missing_ok=True)
            named.rmdir()


def test_identity_is_the_boot_and_start_time_while_the_process_lives() -> None:
    a = subprocess.Popen(["sleep", "30"])
    try:
        found = cluster.identity(a.pid)
        assert found and found == cluster.identity(a.pid)  # stable while it runs
        if Path("/proc/self/stat").is_file():  # Linux: boot id / start time in clock ticks
            boot, ticks = found.split("/")
            assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            assert int(ticks) >= int(cluster.identity(os.getpid()).split("/")[1])  # type: ignore[union-attr]
    finally:
        a.kill()
        a.wait(timeout=10)
    assert cluster.identity(a.pid) is None  # gone (and reaped)


def _local_head_down(state_dir: Path, pid: int, recorded: str) -> subprocess.CompletedProcess:
    state_dir.mkdir(exist_ok=True)
    (state_dir / "head.pid").write_text(f"{pid} {recorded}\n")
    return subprocess.run(
        [str(ROOT / "cluster/local-head.sh"), "down"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STATE_DIR": str(state_dir)},
    )


def test_local_head_sh_stops_its_head_only_while_the_pid_is_still_it(tmp_path: Path) -> None:
    head = subprocess.Popen(["sleep", "60"], start_new_session=True)  # stands in for the head
    try:
        found = cluster.identity(head.pid)
        assert found
        reused = _local_head_down(tmp_path / "s", head.pid, "another-boot/123")
        assert reused.returncode == 0 and "left alone" in reused.stderr
        assert head.poll() is None, "local-head.sh down killed a process it did not start"
        old_format = _local_head_down(tmp_path / "s", head.pid, "")  # a bare pid: unproven
        assert "left alone" in old_format.stderr and head.poll() is None
        (tmp_path / "s" / "head.pid").write_text(f"{head.pid} {found}\n")
        down = subprocess.Popen(
            [str(ROOT / "cluster/local-head.sh"), "down"],
            text=True,
            stdout=subprocess.PIPE,
            env={**os.environ, "STATE_DIR": str(tmp_path / "s")},
        )
        assert head.wait(timeout=30) is not None  # reaped here, so the script sees it gone
        assert "stopped" in down.communicate(timeout=30)[0] and down.returncode == 0
    finally:
        if head.poll() is None:
            head.kill()
        head.wait(timeout=10)

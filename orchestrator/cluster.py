"""`orchestrator cluster up|down|status`: a real multi-node Ray cluster on one machine.

A head and N worker nodes, each its own `ray start --block` process (its own raylet, object
store and workers), all on 127.0.0.1, token auth on, the dashboard on 127.0.0.1. It behaves
like a cluster of N machines for placement (a `STRICT_SPREAD` trial puts its workers on
different nodes), for `ray job submit`, and for failures: stopping one node's process is a
node going away. The head holds no CPUs by default, so trials run on the worker nodes only,
as on a real cluster whose head is kept for the driver and Ray's own services.

The state (pids, ports, the token) lives in a folder (default ``.ray-local``); `down` stops
only the processes recorded there, by process group, and `status` reads the dashboard.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR = Path(".ray-local")
RAY = str(Path(sys.executable).parent / "ray")


@dataclass
class State:
    gcs_port: int
    dashboard_port: int
    temp_dir: str
    token_path: str
    head_pid: int
    workers: list[int] = field(default_factory=list)  # pids of the worker nodes' `ray start`
    cpus_per_worker: int = 1
    gpus_per_worker: int = 0

    @property
    def address(self) -> str:
        """For ``ray job submit --address`` and ``orchestrator submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        """For ``RAY_ADDRESS`` (a driver joining the cluster directly)."""
        return f"127.0.0.1:{self.gcs_port}"


def env(state: State) -> dict[str, str]:
    """The environment a client of this cluster needs (token auth on, its token)."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state.token_path,
            # the job's `python` must be this environment's (ray start puts it on PATH)
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def load(state_dir: Path = STATE_DIR) -> State | None:
    path = state_dir / "cluster.json"
    if not path.is_file():
        return None
    return State(**json.loads(path.read_text()))


def _save(state: State, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "cluster.json.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=1))
    tmp.replace(state_dir / "cluster.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dashboard_port() -> int:
    """Ray's usual 8265 when it is free (what people type), else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8265))
            return 8265
        except OSError:
            return _free_port()


def is_up(state: State) -> bool:
    return _alive(state.head_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _node_ports() -> list[str]:
    """Every port a node would otherwise take at a fixed default (two nodes on one machine
    would collide on them)."""
    return [f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]


def _spawn(args: list[str], state: State, log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args],
                                env=env(state), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: `down` stops it whole
    return proc.pid


def up(workers: int = 2, cpus_per_worker: int = 1, gpus_per_worker: int = 0,
       head_cpus: int = 0, dashboard_port: int | None = None,
       state_dir: Path = STATE_DIR, timeout: float = 180) -> State:
    """Start a head and ``workers`` worker nodes on loopback; returns once all are alive."""
    old = load(state_dir)
    if old is not None and is_up(old):
        raise RuntimeError(f"a cluster from {state_dir} is already up (head pid "
                           f"{old.head_pid}, {old.address}); `orchestrator cluster down` first")
    state_dir.mkdir(parents=True, exist_ok=True)
    token = state_dir.resolve() / "auth_token"
    if not token.is_file():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    # Ray's socket paths must stay short (108 bytes): a folder of our own directly under /tmp
    temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")
    state = State(gcs_port=_free_port(), dashboard_port=dashboard_port or _dashboard_port(),
                  temp_dir=temp_dir, token_path=str(token), head_pid=0,
                  cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    state.head_pid = _spawn(
        ["--head", "--node-ip-address=127.0.0.1", f"--port={state.gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={state.dashboard_port}",
         f"--ray-client-server-port={_free_port()}", f"--num-cpus={head_cpus}", "--num-gpus=0",
         f"--temp-dir={temp_dir}", *_node_ports()], state, state_dir / "head.log")
    _save(state, state_dir)
    _wait(state, 1, timeout, state_dir)
    for _ in range(workers):
        add_worker(state, state_dir, timeout=timeout)
    return state


def add_worker(state: State, state_dir: Path = STATE_DIR, timeout: float = 180) -> int:
    """One more worker node; its pid."""
    expected = 1 + len([p for p in state.workers if _alive(p)]) + 1
    index = len(state.workers)
    # a temp dir of its own: nodes sharing one would share runtime_resources/, and one
    # node's clean-up of a job's working directory would pull it from under another's driver
    pid = _spawn([f"--address={state.gcs}", "--node-ip-address=127.0.0.1",
                  f"--num-cpus={state.cpus_per_worker}", f"--num-gpus={state.gpus_per_worker}",
                  f"--temp-dir={state.temp_dir}-w{index}", *_node_ports()],
                 state, state_dir / f"worker-{index}.log")
    state.workers.append(pid)
    _save(state, state_dir)
    _wait(state, expected, timeout, state_dir)
    return pid


def stop_worker(state: State, pid: int, timeout: float = 60) -> None:
    """Stop one worker node (the node goes away, as when a machine is lost)."""
    _stop(pid, timeout)


def down(state_dir: Path = STATE_DIR, timeout: float = 60) -> bool:
    """Stop what `up` started (by the pids it recorded); False when nothing was up."""
    state = load(state_dir)
    if state is None:
        return False
    for pid in [*state.workers, state.head_pid]:  # workers first: the head outlives them
        _stop(pid, timeout)
    for i in range(len(state.workers)):
        shutil.rmtree(f"{state.temp_dir}-w{i}", ignore_errors=True)
    shutil.rmtree(state.temp_dir, ignore_errors=True)
    (state_dir / "cluster.json").unlink(missing_ok=True)
    return True


def _stop(pid: int, timeout: float) -> None:
    """SIGTERM the process group `ray start --block` leads (it stops its node's processes);
    SIGKILL what is left after ``timeout``."""
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        except ChildProcessError:
            pass
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def nodes(state: State) -> list[dict[str, Any]]:
    """The cluster's nodes as the dashboard sees them (alive and dead)."""
    from orchestrator import submit

    return submit.cluster_nodes(state.address, Path(state.token_path).read_text().strip())


def _wait(state: State, alive: int, timeout: float, state_dir: Path) -> None:
    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        if not _alive(state.head_pid):
            raise RuntimeError(f"the Ray head exited; see {state_dir}/head.log")
        try:
            up_now = sum(1 for n in nodes(state) if n.get("state") == "ALIVE")
            if up_now >= alive:
                return
            last = f"{up_now} of {alive} nodes alive"
        except Exception as e:  # noqa: BLE001 - the dashboard is still starting
            last = str(e)
        time.sleep(1)
    raise RuntimeError(f"the cluster did not come up in {timeout:g} s ({last})")


def status_lines(state: State) -> list[str]:
    lines = [f"Ray cluster on 127.0.0.1: dashboard {state.address}, RAY_ADDRESS={state.gcs}, "
             f"token {state.token_path}"]
    for n in sorted(nodes(state), key=lambda n: (not n.get("is_head_node"), n["node_id"])):
        res = n.get("resources_total") or {}
        lines.append(f"  {'head  ' if n.get('is_head_node') else 'worker'} "
                     f"{n['node_id'][:12]}  {n.get('state', '?'):5s}  "
                     f"{res.get('CPU', 0):g} CPU  {res.get('GPU', 0):g} GPU  "
                     f"{res.get('memory', 0) / 2**30:.1f} GiB")
    return lines

"""`orchestrator cluster up|down|status`: a real multi-node Ray cluster on one machine.

A head and N worker nodes, each its own `ray start --block` process (its own raylet, object
store and workers), all on 127.0.0.1, token auth on, the dashboard on 127.0.0.1. It behaves
like a cluster of N machines for placement (a `STRICT_SPREAD` trial puts its workers on
different nodes), for `ray job submit`, and for failures: stopping one node's process is a
node going away. The head holds no CPUs by default, so trials run on the worker nodes only,
as on a real cluster whose head is kept for the driver and Ray's own services.

The state (pids, ports, the token) lives in a folder (default ``.ray-local``, mode 0700, the
token 0600); `down` stops only the processes recorded there, by process group, and only
while each pid is still the process `up` started (``identity``); `status` reads the
dashboard.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core import placement

STATE_DIR = Path(".ray-local")
# How long a node gets to stop on SIGTERM before its process group is SIGKILLed: what
# `ray stop --grace-period` defaults to. `ray start --block` winds its node down slowly
# (a head with a dashboard and job drivers took 35-100 s here), and nothing on a local
# cluster's nodes outlives it anyway.
GRACE_S = 16.0
RAY = str(Path(sys.executable).parent / "ray")
# Ray's socket paths must stay short (108 bytes): the nodes' temp folders go directly under
# /tmp, named rayc-XXXXXXXX (mkdtemp) and rayc-XXXXXXXX-wN for worker N
TEMP_ROOT, TEMP_PREFIX = Path("/tmp"), "rayc-"
TEMP_NAME = re.compile(rf"{TEMP_PREFIX}[A-Za-z0-9_]{{8}}(-w\d+)?")


@dataclass
class State:
    """What `up` started and where (ports, pids, token, temp folder), saved as cluster.json."""

    gcs_port: int
    dashboard_port: int
    temp_dir: str
    token_path: str
    head_pid: int
    workers: list[int] = field(default_factory=list)  # pids of the worker nodes' `ray start`
    cpus_per_worker: int = 1
    gpus_per_worker: int = 0
    identities: dict[str, str] = field(default_factory=dict)
    """pid -> ``identity`` of the process `up` started under it: after a reboot, or once it
    has exited, the same pid may name someone else's process, which `down` must not kill."""

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
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state.token_path,
        # the job's `python` must be this environment's (ray start puts it on PATH)
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def load(state_dir: Path = STATE_DIR) -> State | None:
    """The cluster recorded in ``state_dir``, or None when nothing was started there."""
    path = state_dir / "cluster.json"
    if not path.is_file():
        return None
    return State(**json.loads(path.read_text()))


def _save(state: State, state_dir: Path) -> None:
    private_dir(state_dir)
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
    """The head `up` started is still running (its pid not taken by another process)."""
    return _ours(state, state.head_pid)


def maybe_up(state: State) -> bool:
    """Up, or perhaps: a state file from before identities were recorded whose head pid is
    alive. `up` refuses to start over either (it would orphan a running cluster)."""
    return is_up(state) or (not state.identities and _alive(state.head_pid))


def identity(pid: int) -> str | None:
    """What tells this process apart from any other that ever has the same pid: the boot's
    id and the process's start time in clock ticks since boot (field 22 of /proc/PID/stat);
    elsewhere than Linux, the start time `ps` shows. None when no such process."""
    proc = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").is_file():
        try:
            text = proc.read_text()
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return None
        # the command name (field 2) is in parentheses and may hold spaces or parentheses
        return f"{boot}/{text[text.rindex(')') + 2 :].split()[19]}"
    out = subprocess.run(
        ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return out or None


def _remember(state: State, pid: int) -> int:
    found = identity(pid)
    if found is not None:  # None: it exited at once; nothing under that pid is ours then
        state.identities[str(pid)] = found
    return pid


def _ours(state: State, pid: int) -> bool:
    """``pid`` is still the process `up` started (a state without identities, from an older
    version, proves nothing: such pids are left alone)."""
    recorded = state.identities.get(str(pid))
    return recorded is not None and identity(pid) == recorded


def private_dir(state_dir: Path) -> None:
    """The state folder, 0700: it holds the token and the logs. One that exists with wider
    permissions (made by an older version, or by hand) is narrowed, which only takes access
    away; the token in it is checked on its own (``token_file``)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = state_dir.stat()
    if st.st_uid != os.getuid():
        raise RuntimeError(
            f"{state_dir} belongs to uid {st.st_uid}, not to this user; use "
            "a state folder of your own (--state-dir)"
        )
    if st.st_mode & 0o077:
        state_dir.chmod(0o700)


def token_file(state_dir: Path) -> Path:
    """The cluster's token, created 0600 in one step (no moment when it is readable by
    others, whatever the umask). An existing one that others could read, or that is not a
    plain file of this user's, is refused rather than fixed: it may have been read already,
    and narrowing its mode would not take the copy back."""
    token = state_dir.resolve() / "auth_token"
    try:
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        st = os.lstat(token)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            kind = "a plain file" if stat.S_ISREG(st.st_mode) else "not a plain file"
            raise RuntimeError(
                f"{token} is {kind} with mode {stat.S_IMODE(st.st_mode):o}, owned by uid "
                f"{st.st_uid}: others may have read the token. Delete it (`up` makes a new "
                "one, readable by you alone) and stop any cluster still using it"
            ) from None
        return token
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return token


def _our_temp_dir(path: str) -> bool:
    """``path`` is a temp folder `up` made: directly under /tmp, named as `up` names them,
    a real folder (not a link) of this user's. cluster.json is only a file: a folder it
    names is not deleted on its word alone."""
    p = Path(path)
    if p.parent != TEMP_ROOT or not TEMP_NAME.fullmatch(p.name):
        return False
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


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
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]


def _spawn(args: list[str], state: State, log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            env=env(state),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # its own group: `down` stops it whole
    return proc.pid


def up(
    workers: int = 2,
    cpus_per_worker: int = 1,
    gpus_per_worker: int = 0,
    head_cpus: int = 0,
    dashboard_port: int | None = None,
    state_dir: Path = STATE_DIR,
    timeout: float = 180,
) -> State:
    """Start a head and ``workers`` worker nodes on loopback; returns once all are alive."""
    old = load(state_dir)
    if old is not None and is_up(old):
        raise RuntimeError(
            f"a cluster from {state_dir} is already up (head pid "
            f"{old.head_pid}, {old.address}); `orchestrator cluster down` first"
        )
    private_dir(state_dir)
    token = token_file(state_dir)
    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=TEMP_ROOT)
    state = State(
        gcs_port=_free_port(),
        dashboard_port=dashboard_port or _dashboard_port(),
        temp_dir=temp_dir,
        token_path=str(token),
        head_pid=0,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
    )
    state.head_pid = _remember(
        state,
        _spawn(
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={state.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={state.dashboard_port}",
                f"--ray-client-server-port={_free_port()}",
                f"--num-cpus={head_cpus}",
                "--num-gpus=0",
                # the trials' steering actors ask for a sliver of it: they stay on the head
                f"--resources={json.dumps({placement.HEAD_RESOURCE: placement.HEAD_AMOUNT})}",
                f"--temp-dir={temp_dir}",
                *_node_ports(),
            ],
            state,
            state_dir / "head.log",
        ),
    )
    _save(state, state_dir)
    _wait(state, 1, timeout, state_dir)
    for _ in range(workers):
        add_worker(state, state_dir, timeout=timeout)
    return state


def add_worker(state: State, state_dir: Path = STATE_DIR, timeout: float = 180) -> int:
    """One more worker node; its pid."""
    expected = 1 + len([p for p in state.workers if _ours(state, p)]) + 1
    index = len(state.workers)
    # a temp dir of its own: nodes sharing one would share runtime_resources/, and one
    # node's clean-up of a job's working directory would pull it from under another's driver
    pid = _remember(
        state,
        _spawn(
            [
                f"--address={state.gcs}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={state.cpus_per_worker}",
                f"--num-gpus={state.gpus_per_worker}",
                f"--temp-dir={state.temp_dir}-w{index}",
                *_node_ports(),
            ],
            state,
            state_dir / f"worker-{index}.log",
        ),
    )
    state.workers.append(pid)
    _save(state, state_dir)
    _wait(state, expected, timeout, state_dir)
    return pid


def stop_worker(state: State, pid: int, timeout: float = 60) -> None:
    """Stop one worker node (the node goes away, as when a machine is lost)."""
    _stop(state, [pid], timeout)


def _warn(line: str) -> None:
    print(f"orchestrator: {line}", file=sys.stderr)


def down(
    state_dir: Path = STATE_DIR, timeout: float = GRACE_S, warn: Callable[[str], None] = _warn
) -> bool:
    """Stop what `up` started (by the pids it recorded, each only while it is still the
    process started) and delete its temp folders (only ones `up` made); False when nothing
    was up."""
    state = load(state_dir)
    if state is None:
        return False
    # the workers together, then the head (it outlives them): each group within one grace
    for group in (state.workers, [state.head_pid]):
        mine = []
        for pid in group:
            if _alive(pid) and not _ours(state, pid):
                warn(
                    f"left pid {pid} alone: it is no longer the process `cluster up` started "
                    "(the pid was reused, e.g. after a reboot)"
                )
                continue
            mine.append(pid)
        _stop(state, mine, timeout)
    for folder in [*(f"{state.temp_dir}-w{i}" for i in range(len(state.workers))), state.temp_dir]:
        if _our_temp_dir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        elif os.path.lexists(folder):
            warn(
                f"left {folder} alone: not a temp folder `cluster up` makes "
                f"({TEMP_ROOT}/{TEMP_PREFIX}*, yours)"
            )
    (state_dir / "cluster.json").unlink(missing_ok=True)
    return True


def _stop(state: State, pids: list[int], timeout: float) -> None:
    """SIGTERM the process groups `ray start --block` leads (each stops its node's
    processes); SIGKILL what is left after ``timeout``. Each signal only while a pid is
    still the process `up` started."""
    left = []
    for pid in pids:
        if not _ours(state, pid):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
            left.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    while left and time.time() < deadline:
        for pid in left:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
            except ChildProcessError:
                pass
        left = [pid for pid in left if _ours(state, pid)]
        if left:
            time.sleep(0.2)
    for pid in left:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def nodes(state: State) -> list[dict[str, Any]]:
    """The cluster's nodes as the dashboard sees them (alive and dead)."""
    from orchestrator.launch import submit

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
    """The cluster's address, token and nodes (each with its state and resources), for a person."""
    lines = [
        f"Ray cluster on 127.0.0.1: dashboard {state.address}, RAY_ADDRESS={state.gcs}, "
        f"token {state.token_path}"
    ]
    for n in sorted(nodes(state), key=lambda n: (not n.get("is_head_node"), n["node_id"])):
        res = n.get("resources_total") or {}
        lines.append(
            f"  {'head  ' if n.get('is_head_node') else 'worker'} "
            f"{n['node_id'][:12]}  {n.get('state', '?'):5s}  "
            f"{res.get('CPU', 0):g} CPU  {res.get('GPU', 0):g} GPU  "
            f"{res.get('memory', 0) / 2**30:.1f} GiB"
        )
    return lines

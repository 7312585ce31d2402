"""The storage probe `orchestrator submit` runs on the cluster before the real job: a
zero-CPU task pinned to each alive node (the head and every worker) writes and deletes a
probe object under ``sweep.storage_path``, with that node's own credentials and network.
A sweep whose workers cannot reach the storage would otherwise fail at its first checkpoint,
after minutes of training.

Run as a Ray job: ``python -m orchestrator.launch.probe LOCATION [OPTIONS_JSON]``. Its last
line is one JSON object: ``{"ok": [...], "failed": {node: error}}``; exit 1 when a node
failed."""

from __future__ import annotations

import json
import sys
from typing import Any

TASK_TIMEOUT_S = 60.0  # one node's probe: a reachable store answers in well under a second


def node_name(node: dict[str, Any]) -> str:
    """How a node is named in the probe's answer: its role, address and id (nodes on one
    machine share the address)."""
    head = any(k.startswith("node:__internal_head__") for k in node.get("Resources", {}))
    role = "head" if head else "worker"
    return f"{role} {node.get('NodeManagerAddress', '?')} ({str(node.get('NodeID', '?'))[:8]})"


def _touch(location: str, options: dict[str, Any]) -> str:
    """On one node: write and delete a probe object; "" or the error."""
    from orchestrator.core import storage

    try:
        storage.probe(storage.Folder(location, options))
    except Exception as e:  # noqa: BLE001 - every failure is the answer, reported by node
        return f"{type(e).__name__}: {e}"[:500]
    return ""


def run(location: str, options: dict[str, Any]) -> dict[str, Any]:
    """Probe ``location`` from every alive node of the cluster this process is joined to."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    touch = ray.remote(num_cpus=0, max_retries=0)(_touch)
    refs = {}
    for node in ray.nodes():
        if node.get("Alive"):
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            refs[node_name(node)] = touch.options(scheduling_strategy=strategy).remote(
                location, options
            )
    ok, failed = [], {}
    for name, ref in refs.items():
        try:
            error = ray.get(ref, timeout=TASK_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            error = f"no answer in {TASK_TIMEOUT_S:g} s (the store, or the node, does not respond)"
        except ray.exceptions.RayError as e:
            error = f"the probe task failed: {str(e).splitlines()[0][:300]}"
        if error:
            failed[name] = error
        else:
            ok.append(name)
    return {"ok": ok, "failed": failed}


def main(argv: list[str]) -> int:
    """Probe, print the answer as one JSON line; 1 when a node cannot write."""
    import ray

    location, *rest = argv[1:]
    options = json.loads(rest[0]) if rest else {}
    ray.init(log_to_driver=False)
    answer = run(location, options)
    print(json.dumps(answer), flush=True)
    return 1 if answer["failed"] or not answer["ok"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Fitting trials to the cluster: how many trials' worker bundles fit on the nodes at once
(bin-packing, as Ray's placement groups place them). Pure code; the node list comes from
Ray in ``orchestrator.execution.trials.alive_nodes``."""

from __future__ import annotations

import math

from orchestrator.config import Config, ConfigError

# The steering actors of a multi-worker trial (its Tune trial actor, which starts the
# TorchTrainer, Train's controller beside it, the report queue) are light, but the trial
# dies with the node they sit on. A custom resource only the head node has keeps them there:
# the head gets HEAD_AMOUNT of it (`cluster up`, the launcher configs, the KubeRay manifest,
# a local Ray), each steering actor asks for STEER_AMOUNT.
HEAD_RESOURCE = "orchestrator_head"
HEAD_AMOUNT = 1000.0
STEER_AMOUNT = 0.01


def steering(cluster: dict[str, float]) -> dict[str, float]:
    """The resources a steering actor asks for: the head's sliver where the cluster has the
    head resource, nothing where it does not (a cluster started without it: anywhere)."""
    return {HEAD_RESOURCE: STEER_AMOUNT} if cluster.get(HEAD_RESOURCE, 0) > 0 else {}


def trial_concurrency(
    cfg: Config,
    cluster: dict[str, float],
    loader: str = "memory",
    nodes: list[dict[str, float]] | None = None,
) -> int:
    """How many trials fit at once, packing each trial's workers onto the nodes; a
    ConfigError naming what is missing when not even one does (rather than trials pending
    forever). A streamed trial also keeps ``scaling.data_cpus`` free for its Ray Data
    tasks: with every CPU held by training workers the read and map tasks would never run."""
    s = cfg.scaling
    bundle = {"CPU": s.cpus_per_worker, **({"GPU": 1.0} if s.use_gpu else {})}
    extra_cpu = s.data_cpus if loader == "stream" else 0.0
    free = [dict(n) for n in (nodes if nodes else [cluster])]
    fits = 0
    strict = {"STRICT_SPREAD": "spread", "STRICT_PACK": "pack"}.get(s.placement_strategy, "")
    while _place(free, bundle, s.num_workers, strict) and _take_cpu(free, extra_cpu):
        fits += 1
        if cfg.sweep.max_concurrent is not None and fits >= cfg.sweep.max_concurrent:
            break
    if fits < 1:
        how = {"spread": " each on its own node", "pack": " all on one node"}.get(strict, "")
        want = f"{s.num_workers} worker(s) x {_show(bundle)}{how}" + (
            f" + {extra_cpu:g} whole CPU(s) left on a node for Ray Data" if extra_cpu else ""
        )
        biggest = max(nodes or [cluster], key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        have = f"{len(nodes)} node(s), the biggest {_show(biggest)}" if nodes else _show(cluster)
        raise ConfigError(
            "scaling.num_workers",
            f"one trial needs {want}; the cluster has {have}",
            "lower scaling.num_workers or scaling.cpus_per_worker, or add nodes",
        )
    return fits


def _place(
    free: list[dict[str, float]], bundle: dict[str, float], count: int, strict: str = ""
) -> bool:
    """Place ``count`` bundles, taking them from ``free``: over as many nodes as needed, or
    (``strict="spread"``) each on a node of its own, or (``"pack"``) all on one node."""
    if strict == "pack":
        whole = {k: v * count for k, v in bundle.items()}
        return _place(free, whole, 1)
    trial = [dict(n) for n in free]
    used: set[int] = set()
    for _ in range(count):
        i = next(
            (
                i
                for i, n in enumerate(trial)
                if (strict != "spread" or i not in used)
                and all(n.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())
            ),
            None,
        )
        if i is None:
            return False
        used.add(i)
        for k, v in bundle.items():
            trial[i][k] = trial[i].get(k, 0.0) - v
    free[:] = trial
    return True


def _take_cpu(free: list[dict[str, float]], cpus: float) -> bool:
    """Take ``cpus`` whole CPUs for Ray Data from wherever they are left. Whole CPUs on
    each node: Ray Data gets only the whole part of what is left on a node (0.5 CPU left on
    each of two nodes is none at all), so fractions do not count."""
    if cpus <= 0:
        return True
    whole = [math.floor(n.get("CPU", 0.0) + 1e-9) for n in free]
    if sum(whole) < cpus:
        return False
    for n, spare in zip(free, whole, strict=True):
        used = min(spare, cpus)
        n["CPU"] = n.get("CPU", 0.0) - used
        cpus -= used
    return True


def _show(res: dict[str, float]) -> str:
    return ", ".join(f"{res.get(k, 0):g} {k}" for k in ("CPU", "GPU"))

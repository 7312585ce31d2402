"""Ray Train edge: the seam for a DDP worker, and a TorchTrainer built from the config."""

from __future__ import annotations

import os
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from orchestrator import config as config_mod
from orchestrator import data, loop
from orchestrator.config import Config


class RaySeam:
    """Rank r of a Ray Train worker group (gloo on CPU, NCCL on GPU)."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap(self, net: nn.Module) -> nn.Module:
        # Moves to the device; wraps in DDP only when world size > 1.
        return ray.train.torch.prepare_model(net)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def report(self, values: dict[str, float], checkpoint_dir: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(values, checkpoint=ckpt)

    def restore(self) -> dict[str, Any] | None:
        # After a worker died and Train restarted the group: the latest reported checkpoint.
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return loop.load_checkpoint(d)


def worker_fn(payload: dict[str, Any]) -> None:
    """What every DDP worker runs: rebuild the config, read the data, run the one loop."""
    cfg = config_mod.from_dict(payload["config"])
    # Ray sets OMP_NUM_THREADS from the worker's CPUs; keep torch to it (2-core machines).
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    splits = data.load_splits(cfg.data)
    if payload.get("refit"):
        splits = data.merge_validation(splits)
    loop.train(cfg, splits, RaySeam())


def make_trainer(cfg: Config, name: str, storage_path: str, callbacks: list[Any] | None = None,
                 refit: bool = False) -> ray.train.torch.TorchTrainer:
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    return ray.train.torch.TorchTrainer(
        worker_fn,
        train_loop_config={"config": config_mod.to_dict(cfg), "refit": refit},
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            # Keep the best N epochs (the champion's weights) and, always, the latest one.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute=cfg.sweep.metric,
                checkpoint_score_order=cfg.sweep.mode,
            ),
        ),
    )

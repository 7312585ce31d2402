"""Ray Train edge: the seam for a DDP worker, and a TorchTrainer built from the config."""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from orchestrator import config as config_mod
from orchestrator.config import Config
from orchestrator.core import checkpoint, data, features, loop, storage
from orchestrator.core import task as task_mod
from orchestrator.execution import relay

CHECKPOINT_PATH = "checkpoint_path"  # the key Ray's own bridge uses, kept for the ledger


class RaySeam:
    """Rank r of a Ray Train worker group (gloo on CPU, NCCL on GPU)."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap(self, net: nn.Module) -> nn.Module:
        """Move to the device; wrap in DDP only when world size > 1."""
        return ray.train.torch.prepare_model(net)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over the worker group, in place (identity for one worker)."""
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def report(self, values: dict[str, float], checkpoint_dir: str | None) -> None:
        """Report the epoch's metrics to Ray Train, with the checkpoint folder when given.

        The checkpoint is uploaded in the background (Train's ASYNC mode), so object storage
        does not hold up the next epoch; Train passes the report on once the upload is done,
        in order, and deletes the folder. The loop's folder goes when this returns, so its
        files move (a rename, no copy) into one of the upload's own first."""
        if not checkpoint_dir:
            ray.train.report(values)
            return
        upload = tempfile.mkdtemp(prefix="orchestrator-checkpoint-")
        for name in os.listdir(checkpoint_dir):
            os.replace(os.path.join(checkpoint_dir, name), os.path.join(upload, name))
        ray.train.report(
            values,
            checkpoint=ray.train.Checkpoint.from_directory(upload),
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
        )

    def restore(self) -> dict[str, Any] | None:
        """After a worker died and Train restarted the group: the latest reported checkpoint."""
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return checkpoint.load_checkpoint(d)


class ReportRelay(ray.train.UserCallback):
    """Runs in the Train controller: every report (rank 0's metrics, the checkpoint's path)
    goes into the trial's own queue. The put blocks while the queue is full, so the Train run
    stays in step with Tune, as with Ray's bridge. See ``orchestrator.execution.relay`` for why."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def after_report(
        self,
        run_context: Any,
        metrics: list[dict[str, Any]],
        checkpoint: ray.train.Checkpoint | None,
    ) -> None:
        """Put rank 0's metrics, with the checkpoint's path, on the trial's queue."""
        row = dict(metrics[0])
        if checkpoint:  # already in storage: Tune gets its location, not a second upload
            row[CHECKPOINT_PATH] = storage.uri_of(checkpoint.filesystem, checkpoint.path)
        self._queue.put(row)


def report_queue() -> Any:
    """The queue between a trial's TorchTrainer and the trial (an actor with no CPUs, owned
    by the trial, so it goes when the trial does; beside it on the head)."""
    from ray.util.queue import Queue

    # Tune's placement group holds it (it captures the trial's child actors): on the trial's
    # node, which the trial's own head-resource sliver keeps on the head
    return Queue(maxsize=1, actor_options={"num_cpus": 0})


def fit_relayed(
    trainer: ray.train.torch.TorchTrainer, queue: Any, report: Callable[[dict[str, Any]], None]
) -> None:
    """``trainer.fit()`` in a thread of its own while this thread relays every report to
    ``report`` (``tune.report``): the trial has one producer of results, this thread, and it
    returns only when fit() has and every report was relayed. fit()'s error is raised here."""
    from ray.util.queue import Empty

    failed: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # raised again in the trial's thread, below
            failed.append(e)

    def take(timeout: float) -> dict[str, Any] | None:
        try:
            item: dict[str, Any] = (
                queue.get(block=False) if timeout <= 0 else queue.get(timeout=timeout)
            )
            return item
        except Empty:
            return None

    thread = threading.Thread(target=fit, name="train-fit", daemon=True)
    thread.start()
    try:
        relay.relay(take, lambda: not thread.is_alive(), report)
    finally:
        if not thread.is_alive():
            queue.shutdown(force=True)
    if failed:
        raise failed[0]


def worker_fn(payload: dict[str, Any]) -> None:
    """What every DDP worker runs: rebuild the config, get its data, run the one loop."""
    cfg = config_mod.from_dict(payload["config"])
    # Ray sets OMP_NUM_THREADS from the worker's CPUs; keep torch to it (2-core machines).
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    seam, goal = RaySeam(), config_mod.goal(cfg)
    if payload.get("stream"):
        loop.train(cfg, stream_feed(cfg, payload["stream"], seam), seam, goal)
        return
    splits = data.load_splits(cfg)
    if payload.get("refit"):
        splits = data.merge_validation(splits)
    loop.train(cfg, splits, seam, goal)


# ---------------------------------------------------------------- streaming (Ray Data)


def _to_xy(
    batch: pa.Table, data_cfg: config_mod.DataConfig, info: dict[str, Any]
) -> dict[str, Any]:
    x, y, split_of = data.encode_batch(
        data_cfg,
        info["kinds"],
        features.from_json(info["encoding"]),
        task_mod.from_json(info["task"]),
        batch,
    )
    return {"x": x, "y": y, "split": split_of}


def _keep(batch: dict[str, np.ndarray], codes: tuple[int, ...]) -> dict[str, np.ndarray]:
    mask = np.isin(batch["split"], codes)
    return {"x": batch["x"][mask], "y": batch["y"][mask]}


STREAM_BLOCK_BYTES = 16 * 2**20


def stream_datasets(cfg: Config, summary: data.Summary) -> dict[str, ray.data.Dataset]:
    """Lazy Ray Datasets of (x, y) per split: Parquet read in blocks, rows assigned to a
    split by their hash, never the whole table in one process."""
    # Small CPU requests: the tasks run beside the training workers in scaling.data_cpus.
    task_cpus = min(0.1, cfg.scaling.data_cpus)
    columns = [*summary.kinds, cfg.data.label]
    table = ray.data.read_parquet(
        cfg.data.path, columns=columns, ray_remote_args={"num_cpus": task_cpus}
    )
    # Blocks of at most STREAM_BLOCK_BYTES (Ray's default is 128 MiB, often a whole Parquet
    # row group): a training process holds a few blocks at a time and a copy of one while
    # it batches and shuffles, so the block size sets its memory, whatever the table's size.
    # The setting is the dataset's own context, shared by the datasets derived below.
    table.context.target_max_block_size = STREAM_BLOCK_BYTES
    xy = table.map_batches(
        functools.partial(_to_xy, data_cfg=cfg.data, info=stream_info(summary)),
        batch_format="pyarrow",
        num_cpus=task_cpus,
    )
    out = {
        name: xy.map_batches(
            functools.partial(_keep, codes=codes), batch_format="numpy", num_cpus=task_cpus
        )
        for name, codes in (
            ("train", (data.TRAIN,)),
            ("val", (data.VAL,)),
            ("test", (data.TEST,)),
            ("train+val", (data.TRAIN, data.VAL)),
        )
    }
    if cfg.data.max_train_rows is not None:
        out["train"] = out["train"].limit(cfg.data.max_train_rows)
    return out


def stream_feed(
    cfg: Config,
    info: dict[str, Any],
    seam: loop.Seam,
    train_shard: Any = None,
    val_shard: Any = None,
) -> loop.Feed:
    """This worker's shards of the streamed splits (Ray Train splits them equally), or the
    whole datasets given (a single-worker trial on Tune's fast path)."""
    train_shard = train_shard or ray.train.get_dataset_shard("train")
    val_shard = val_shard or ray.train.get_dataset_shard("val")

    def train_batches(epoch: int, micro_batch: int) -> Iterator[loop.Batch]:
        for b in train_shard.iter_torch_batches(
            batch_size=micro_batch,
            device=seam.device,
            # a shuffle within a window of rows, seeded by epoch
            local_shuffle_buffer_size=micro_batch * 16,
            local_shuffle_seed=cfg.train.seed * 100_003 + epoch,
        ):
            yield b["x"], b["y"]

    def val_batches() -> Iterator[loop.Batch]:
        for b in val_shard.iter_torch_batches(batch_size=4096, device=seam.device):
            yield b["x"], b["y"]

    return loop.Feed(
        features.from_json(info["encoding"]),
        task_mod.from_json(info["task"]),
        train_batches,
        val_batches,
    )


def stream_info(summary: data.Summary) -> dict[str, Any]:
    """What a streaming worker needs from the driver's scan, as plain values: the columns'
    kinds, the encoders and the task fitted on the training split."""
    return {
        "kinds": summary.kinds,
        "encoding": summary.encoding.to_json(),
        "task": summary.task.to_json(),
    }


def make_trainer(
    cfg: Config,
    name: str,
    storage_path: str,
    callbacks: list[Any] | None = None,
    refit: bool = False,
    summary: data.Summary | None = None,
) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer for the config; with a ``summary`` (from ``data.scan``) it streams.
    ``storage_path`` is a folder or a URI; ``sweep.storage_filesystem``'s options (never
    secrets: those are in the environment) build its filesystem."""
    s = cfg.scaling
    options = cfg.sweep.storage_filesystem
    fs = storage.Folder(storage_path, options).fs if options else None
    payload: dict[str, Any] = {"config": config_mod.to_dict(cfg), "refit": refit}
    datasets: dict[str, Any] | None = None
    if summary is not None:
        group = "train+val" if refit else "train"
        payload["stream"] = stream_info(summary)
        ds = stream_datasets(cfg, summary)
        datasets = {"train": ds[group], "val": ds["val"]}
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    return ray.train.torch.TorchTrainer(
        worker_fn,
        train_loop_config=payload,
        datasets=datasets,
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker=resources,
            placement_strategy=s.placement_strategy,
        ),
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=fs,
            callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            # Keep the best N epochs (the champion's weights) and, always, the latest one.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute=config_mod.rank_metric(cfg)[0],
                checkpoint_score_order=config_mod.rank_metric(cfg)[1],
            ),
        ),
    )

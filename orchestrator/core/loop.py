"""The training loop: one function, read top to bottom, the same in a test and on a DDP worker.

Everything that differs between "a plain process" and "rank r of a Ray Train worker
group" sits behind the small ``Seam`` protocol (rank, device, DDP wrapping, all-reduce,
report). ``LocalSeam`` is the single-process one; ``orchestrator.execution.ray_train`` has Ray's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from orchestrator import config as config_mod
from orchestrator.config import Config, Goal
from orchestrator.core import checkpoint, model
from orchestrator.core import task as task_mod
from orchestrator.core.data import Splits
from orchestrator.core.features import Encoding
from orchestrator.core.task import Task

MATRIX_DIMS = 2  # weight matrices and conv kernels have at least 2 dims; biases have 1


class Seam(Protocol):
    """What the loop needs from where it runs: its rank, its device, DDP and reporting."""

    rank: int
    world_size: int
    device: torch.device

    def wrap(self, net: nn.Module) -> nn.Module:
        """Move to the device; wrap in DDP when there is more than one worker."""
        ...

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all workers (identity for one worker)."""
        ...

    def report(self, values: dict[str, float], checkpoint_dir: str | None) -> None:
        """Hand one epoch's metrics (and rank 0's checkpoint folder) to the outside."""
        ...

    def restore(self) -> dict[str, Any] | None:
        """The checkpoint to resume from (after a crash or restart), or None."""
        ...


@dataclass
class LocalSeam:
    """One process, no Ray: tests, benchmarks and debugging. Keeps what was reported."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    reports: list[dict[str, float]] = field(default_factory=list)
    on_checkpoint: Callable[[str], None] | None = None
    resume_from: str | None = None

    def wrap(self, net: nn.Module) -> nn.Module:
        """Move to the device (one worker: no DDP)."""
        return net.to(self.device)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Identity: one worker's sum is its own."""
        return t

    def report(self, values: dict[str, float], checkpoint_dir: str | None) -> None:
        """Keep the metrics; hand the checkpoint folder to ``on_checkpoint``."""
        self.reports.append(values)
        if checkpoint_dir and self.on_checkpoint:
            self.on_checkpoint(checkpoint_dir)

    def restore(self) -> dict[str, Any] | None:
        """The checkpoint at ``resume_from``, or None."""
        return checkpoint.load_checkpoint(self.resume_from) if self.resume_from else None


@dataclass
class EarlyStopper:
    """Stop after ``patience`` epochs without an improvement of at least ``min_delta``."""

    patience: int
    min_delta: float
    mode: str
    best: float | None = None
    bad_epochs: int = 0

    def update(self, value: float) -> tuple[bool, bool]:
        """Returns (improved, stop now)."""
        gain = (
            math.inf
            if self.best is None
            else (self.best - value if self.mode == "min" else value - self.best)
        )
        improved = math.isfinite(value) and gain > self.min_delta
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return improved, self.patience > 0 and self.bad_epochs >= self.patience


Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Feed:
    """Where a worker's batches come from: its slice of in-memory tensors (``in_memory``) or
    its shard of a Ray Data stream (``orchestrator.execution.ray_train``)."""

    encoding: Encoding  # the fitted encoders: the model's Preprocess
    task: Task
    train_batches: Callable[[int, int], Iterable[Batch]]  # (epoch, micro-batch rows)
    val_batches: Callable[[], Iterable[Batch]]


def in_memory(splits: Splits, seam: Seam, seed: int) -> Feed:
    """Tensors on the device once; each epoch a seeded permutation sharded over the ranks."""
    x_train, y_train = _tensors(splits.x_train, splits.y_train, seam.device)
    x_val, y_val = _tensors(splits.x_val, splits.y_val, seam.device)

    def train_batches(epoch: int, micro_batch: int) -> Iterator[Batch]:
        for idx in shard_batches(len(y_train), micro_batch, seam, seed, epoch):
            yield x_train[idx], y_train[idx]

    def val_batches() -> Iterator[Batch]:
        # each rank scores its own slice, no padding, so every row counts once
        for idx in torch.arange(seam.rank, len(y_val), seam.world_size).split(4096):
            yield x_val[idx], y_val[idx]

    return Feed(splits.encoding, splits.task, train_batches, val_batches)


def train(cfg: Config, data: Splits | Feed, seam: Seam, goal: Goal | None = None) -> str:
    """Train up to ``cfg.train.epochs`` epochs; report train/val loss and the task's metrics
    (``task.METRICS``) every epoch. ``goal`` says what the run is judged by (default:
    ``config.goal(cfg)``). Returns how it ended: ``completed``, ``early_stopped`` or
    ``diverged``."""
    t, goal = cfg.train, goal or config_mod.goal(cfg)
    feed = data if isinstance(data, Feed) else in_memory(data, seam, t.seed)
    run = setup(cfg, feed, seam, goal)
    state = seam.restore()
    if state is not None:  # resume exactly where the checkpoint left off
        if state.get("outcome") in ("early_stopped", "diverged"):
            return str(state["outcome"])  # it had ended: a resumed sweep must not train on
        resume(run, state, cfg)
    outcome = "completed"
    for epoch in range(run.start, t.epochs):
        # Dropout and augmentation draw from an RNG that is a function of (seed, epoch, rank),
        # so a resumed run replays exactly what an uninterrupted one would have drawn.
        torch.manual_seed(t.seed * 1_000_003 + epoch * 1009 + seam.rank)
        epoch_start = time.perf_counter()
        train_m = train_epoch(run, feed, epoch, cfg)
        val_m = evaluate(run.net, feed.val_batches(), feed.task, run.loss_fn, seam, "val")
        values = {
            "epoch": float(epoch + 1),
            **train_m,
            **val_m,
            # throughput of this worker's training + evaluation, and a wall clock for
            # the driver's view (benchmarks take steady-state rates from these)
            "epoch_seconds": time.perf_counter() - epoch_start,
            "wall_time": time.time(),
        }
        # Generalization gap: how much worse the model does on rows it did not train on.
        values["gap"] = values["val_loss"] - values["train_loss"]
        if goal.gap_penalty is not None:
            values["objective"] = values["val_loss"] + goal.gap_penalty * max(0.0, values["gap"])
        diverged = not math.isfinite(values["train_loss"])  # all-reduced: every rank agrees
        improved, stop = run.stopper.update(values[goal.stop_metric])
        is_best = run.track_best(values[goal.rank_metric], goal.rank_mode)
        es = t.early_stopping
        if improved and es.restore_best and es.patience > 0:
            run.best_weights = {
                k: v.detach().cpu().clone() for k, v in run.net.state_dict().items()
            }
        if diverged:
            outcome, values["diverged"] = "diverged", 1.0
        elif stop:
            outcome, values["early_stopped"] = "early_stopped", 1.0
            if run.best_weights is not None:
                run.net.load_state_dict(run.best_weights)  # end on the best epoch's weights
        run.history.append(values)
        last = diverged or stop or epoch + 1 == t.epochs
        # Every N epochs, every new best (the champion's weights), kept epochs, the last one.
        if seam.rank == 0 and (
            last
            or improved
            or is_best
            or epoch + 1 in goal.keep_epochs
            or (epoch + 1) % t.checkpoint_every == 0
        ):
            with tempfile.TemporaryDirectory() as ckpt:
                checkpoint.save(ckpt, run.state(epoch + 1, values, outcome))
                seam.report(values, ckpt)
        else:
            seam.report(values, None)
        if diverged or stop:
            break
    if seam.device.type == "cuda":
        torch.cuda.empty_cache()  # hand memory back before the next trial on this GPU
    return outcome


# ---------------------------------------------------------------- its steps


@dataclass
class Run:
    """A run's training state: what ``train`` builds once, updates every epoch, and saves."""

    net: nn.Module
    ddp_net: nn.Module  # the same module, DDP-wrapped when there are several workers
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.CosineAnnealingLR
    scaler: torch.amp.GradScaler
    stopper: EarlyStopper
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    feature_std: torch.Tensor  # augmentation noise is relative to each number's spread
    amp_dtype: torch.dtype | None
    micro_batch: int
    seam: Seam
    best_rank: float | None = None  # the best value of what trials are ranked on
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    start: int = 0

    def track_best(self, value: float, mode: str) -> bool:
        """Whether ``value`` is the run's best ranked value yet (ties count: a later equal
        epoch becomes the best, as in the driver's ledger)."""
        if math.isfinite(value) and (
            self.best_rank is None
            or (value <= self.best_rank if mode == "min" else value >= self.best_rank)
        ):
            self.best_rank = value
            return True
        return False

    def state(self, epoch: int, values: dict[str, float], outcome: str) -> dict[str, Any]:
        """What a checkpoint holds: everything ``resume`` needs to go on exactly."""
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "stopper": dataclasses.asdict(self.stopper),
            "best_rank": self.best_rank,
            "best_model": self.best_weights,
            "epoch": epoch,
            "metrics": values,
            "outcome": outcome,
            "history": self.history,
        }


def setup(cfg: Config, feed: Feed, seam: Seam, goal: Goal) -> Run:
    """The network (same initial weights on every rank), its optimizer, schedule and scaler."""
    t = cfg.train
    torch.manual_seed(t.seed)
    net = model.network(cfg, feed.encoding, feed.task)
    ddp_net = seam.wrap(net)
    optimizer = make_optimizer(net, cfg)
    # Cosine decay to zero over the planned epochs: the last epochs settle instead of bouncing.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    stem = net[0]
    assert isinstance(stem, model.Preprocess)
    return Run(
        net=net,
        ddp_net=ddp_net,
        optimizer=optimizer,
        schedule=schedule,
        scaler=torch.amp.GradScaler(seam.device.type, enabled=t.precision == "fp16"),
        stopper=EarlyStopper(t.early_stopping.patience, t.early_stopping.min_delta, goal.stop_mode),
        loss_fn=task_mod.loss_fn(feed.task),
        feature_std=stem.noise_scale().to(seam.device),
        amp_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision),
        micro_batch=max(1, t.batch_size // (seam.world_size * t.grad_accum_steps)),
        seam=seam,
    )


def resume(run: Run, state: dict[str, Any], cfg: Config) -> None:
    """Load a checkpoint's state into ``run``; the epoch after it is the next one."""
    run.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    run.scaler.load_state_dict(state["scaler"])
    run.stopper = EarlyStopper(**state["stopper"])
    run.best_rank = state.get("best_rank")
    run.best_weights, run.start = state.get("best_model"), int(state["epoch"])
    run.history = list(state.get("history", []))
    # The optimizer's state carries its hyperparameters; the config's win (PBT hands a
    # trial another trial's checkpoint together with new values).
    set_hyperparameters(run.optimizer, run.schedule, cfg)


def train_epoch(run: Run, feed: Feed, epoch: int, cfg: Config) -> dict[str, float]:
    """One pass over this rank's training batches, in groups of ``grad_accum_steps``
    micro-batches per optimizer step; the epoch's metrics over all ranks."""
    t, task, seam = cfg.train, feed.task, run.seam
    run.ddp_net.train()
    sums = torch.zeros(2, dtype=torch.float64)  # loss * rows, rows
    counts = torch.zeros(task_mod.tally_size(task), dtype=torch.float64)
    for group in _groups(feed.train_batches(epoch, run.micro_batch), t.grad_accum_steps):
        group_rows = sum(len(yb) for _, yb in group)
        for k, (xb, yb) in enumerate(group):
            if t.augment:
                xb = augment(xb, cfg, run.feature_std)
            # Gradients are all-reduced only on the micro-batch that ends the group.
            with _no_sync(run.ddp_net, sync=k + 1 == len(group)):
                with torch.autocast(
                    seam.device.type,
                    dtype=run.amp_dtype or torch.float32,
                    enabled=run.amp_dtype is not None,
                ):
                    logits = run.ddp_net(xb)
                loss = run.loss_fn(logits.float(), yb)
                # L1 is not an optimizer option: it joins the loss, over weights only.
                penalty = t.l1 * sum(p.abs().sum() for p in weights(run.net)) if t.l1 > 0 else 0.0
                # Weighted by rows, the group's gradient is the one of a single big batch.
                run.scaler.scale((loss + penalty) * (len(yb) / group_rows)).backward()
            sums += torch.tensor([loss.item() * len(yb), len(yb)], dtype=torch.float64)
            counts += task_mod.tally(task, logits.detach().float(), yb)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
    run.schedule.step()
    return summarize(seam, sums, counts, task, "train")


# ---------------------------------------------------------------- the helpers it calls


def weights(net: nn.Module) -> list[nn.Parameter]:
    """Parameters that are weight matrices (L1/L2 apply to these, not to biases)."""
    return [p for p in net.parameters() if p.ndim >= MATRIX_DIMS]


def make_optimizer(net: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW or SGD (``train.optimizer``) with weight decay on the weight matrices only."""
    t = cfg.train
    decay = weights(net)
    no_decay = [p for p in net.parameters() if p.ndim < MATRIX_DIMS]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if t.optimizer == "sgd":
        # torch's SGD couples decay into the gradient; with lr it is the classic L2 step.
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=t.lr)


def set_hyperparameters(
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.CosineAnnealingLR,
    cfg: Config,
) -> None:
    """Apply the config's lr and weight decay to a restored optimizer, keeping the schedule's
    progress (the current lr keeps its fraction of the base lr)."""
    t = cfg.train
    for i, group in enumerate(optimizer.param_groups):
        fraction = group["lr"] / group["initial_lr"] if group.get("initial_lr") else 1.0
        group["initial_lr"], group["lr"] = t.lr, t.lr * fraction
        if i == 0:  # the weight matrices (make_optimizer's first group)
            group["weight_decay"] = t.weight_decay
    schedule.base_lrs = [t.lr for _ in optimizer.param_groups]


def augment(x: torch.Tensor, cfg: Config, feature_std: torch.Tensor) -> torch.Tensor:
    """Random shifts of up to ``augment_shift`` pixels for image-shaped inputs (zero fill);
    Gaussian noise of ``augment_noise`` feature standard deviations for tabular ones."""
    t = cfg.train
    if cfg.data.shape is None:
        return x + t.augment_noise * feature_std * torch.randn_like(x)
    s = t.augment_shift
    if s == 0:
        return x
    c, h, w = cfg.data.shape
    n = x.shape[0]
    padded = F.pad(x.view(n, c, h, w), (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (n, 1), device=x.device) + torch.arange(h, device=x.device)
    dx = torch.randint(0, 2 * s + 1, (n, 1), device=x.device) + torch.arange(w, device=x.device)
    rows = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[rows, chans, dy[:, None, :, None], dx[:, None, None, :]].reshape(n, -1)


def _no_sync(net: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    if not sync and isinstance(net, nn.parallel.DistributedDataParallel):
        return net.no_sync()
    return contextlib.nullcontext()


def shard_batches(rows: int, batch: int, seam: Seam, seed: int, epoch: int) -> list[torch.Tensor]:
    """This rank's shuffled mini-batches, like DistributedSampler: every rank gets the same
    number of batches (DDP needs that), padding by wrapping around when rows don't divide."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(rows, generator=g)
    per_rank = -(-rows // seam.world_size)
    padded = torch.cat([order, order[: per_rank * seam.world_size - rows]])
    mine = padded[seam.rank :: seam.world_size]
    return list(mine.split(batch))


def summarize(
    seam: Seam, sums: torch.Tensor, counts: torch.Tensor, task: Task, prefix: str
) -> dict[str, float]:
    """Add up every rank's loss sums and the task's counts, then turn them into metrics."""
    packed = seam.all_reduce(torch.cat([sums, counts]).to(seam.device)).cpu()
    total_loss, rows = packed[0].item(), packed[1].item()
    scores = task_mod.scores(task, packed[2:], rows)
    return {
        f"{prefix}_loss": total_loss / max(rows, 1.0),
        **{f"{prefix}_{k}": v for k, v in scores.items()},
    }


@torch.no_grad()
def evaluate(
    net: nn.Module,
    batches: Iterable[Batch],
    task: Task,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    seam: Seam,
    prefix: str,
) -> dict[str, float]:
    """Score this rank's batches, then add up all ranks'. The unwrapped module is used, so no
    DDP collective runs on slices of uneven length."""
    net.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    counts = torch.zeros(task_mod.tally_size(task), dtype=torch.float64)
    for x, y in batches:
        logits = net(x).float()
        sums += torch.tensor([loss_fn(logits, y).item() * len(y), len(y)], dtype=torch.float64)
        counts += task_mod.tally(task, logits, y)
    return summarize(seam, sums, counts, task, prefix)


def _groups(batches: Iterable[Batch], n: int) -> Iterator[list[Batch]]:
    """Consecutive runs of ``n`` micro-batches (the last may be shorter)."""
    group: list[Batch] = []
    for b in batches:
        group.append(b)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def _tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    if device.type == "cuda":  # pinned host memory: the copy to the GPU runs asynchronously
        return (
            torch.from_numpy(x).pin_memory().to(device, non_blocking=True),
            torch.from_numpy(y).pin_memory().to(device, non_blocking=True),
        )
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

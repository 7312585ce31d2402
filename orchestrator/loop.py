"""The training loop: one function, read top to bottom, the same in a test and on a DDP worker.

Everything that differs between "a plain process" and "rank r of a Ray Train worker
group" sits behind the small ``Seam`` protocol (rank, device, DDP wrapping, all-reduce,
report). ``LocalSeam`` is the single-process one; ``orchestrator.ray_train`` has Ray's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
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
from orchestrator import metrics, model
from orchestrator.config import Config
from orchestrator.data import Splits

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"  # every epoch's metrics so far, readable without torch


class Seam(Protocol):
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
        return net.to(self.device)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def report(self, values: dict[str, float], checkpoint_dir: str | None) -> None:
        self.reports.append(values)
        if checkpoint_dir and self.on_checkpoint:
            self.on_checkpoint(checkpoint_dir)

    def restore(self) -> dict[str, Any] | None:
        return load_checkpoint(self.resume_from) if self.resume_from else None


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
    its shard of a Ray Data stream (``orchestrator.ray_train``)."""

    num_classes: int
    col_mean: np.ndarray  # the training split's per-column moments, for the model's stem
    col_std: np.ndarray
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

    return Feed(
        splits.num_classes,
        splits.x_train.mean(axis=0),
        splits.x_train.std(axis=0),
        train_batches,
        val_batches,
    )


def train(cfg: Config, data: Splits | Feed, seam: Seam) -> str:
    """Train up to ``cfg.train.epochs`` epochs; report train/val loss, accuracy and F1 every
    epoch. Returns how it ended: ``completed``, ``early_stopped`` or ``diverged``."""
    t = cfg.train
    feed = data if isinstance(data, Feed) else in_memory(data, seam, t.seed)
    num_classes = feed.num_classes
    torch.manual_seed(t.seed)  # same initial weights on every rank
    net = model.from_config(cfg, feed.col_mean, feed.col_std, num_classes)
    ddp_net = seam.wrap(net)
    optimizer = make_optimizer(net, cfg)
    # Cosine decay to zero over the planned epochs: the last epochs settle instead of bouncing.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    scaler = torch.amp.GradScaler(seam.device.type, enabled=t.precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    es = t.early_stopping
    stopper = EarlyStopper(es.patience, es.min_delta, cfg.sweep.mode)
    rank_key, rank_mode = config_mod.rank_metric(cfg)
    best_rank: float | None = None  # the best value of what trials are ranked on
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    start = 0
    state = seam.restore()
    if state is not None:  # resume exactly where the checkpoint left off
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        stopper = EarlyStopper(**state["stopper"])
        best_rank = state.get("best_rank")
        if state.get("outcome") in ("early_stopped", "diverged"):
            return str(state["outcome"])  # it had ended: a resumed sweep must not train on
        best_weights, start = state.get("best_model"), int(state["epoch"])
        history = list(state.get("history", []))
        # The optimizer's state carries its hyperparameters; the config's win (PBT hands a
        # trial another trial's checkpoint together with new values).
        set_hyperparameters(optimizer, schedule, cfg)
    loss_fn = make_loss(num_classes)
    stem = net[0]
    assert isinstance(stem, model.Standardize)
    feature_std = stem.std  # noise is relative to each feature's spread
    accum = t.grad_accum_steps
    micro_batch = max(1, t.batch_size // (seam.world_size * accum))
    outcome = "completed"
    # ASHA by promotion pauses a trial at its rungs; the checkpoint of that very epoch is
    # what it resumes from when promoted (an older one would replay epochs)
    rung_epochs = set(config_mod.rungs(cfg)) if config_mod.asha_promotes(cfg) else set()

    for epoch in range(start, t.epochs):
        # Dropout and augmentation draw from an RNG that is a function of (seed, epoch, rank),
        # so a resumed run replays exactly what an uninterrupted one would have drawn.
        torch.manual_seed(t.seed * 1_000_003 + epoch * 1009 + seam.rank)
        epoch_start = time.perf_counter()
        ddp_net.train()
        sums = torch.zeros(2, dtype=torch.float64)  # loss * rows, rows
        cm = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        for group in _groups(feed.train_batches(epoch, micro_batch), accum):
            group_rows = sum(len(yb) for _, yb in group)
            for k, (xb, yb) in enumerate(group):
                if t.augment:
                    xb = augment(xb, cfg, feature_std)
                # Gradients are all-reduced only on the micro-batch that ends the group.
                with _no_sync(ddp_net, sync=k + 1 == len(group)):
                    with torch.autocast(
                        seam.device.type,
                        dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None,
                    ):
                        logits = ddp_net(xb)
                    loss = loss_fn(logits.float(), yb)
                    # L1 is not an optimizer option: it joins the loss, over weights only.
                    penalty = t.l1 * sum(p.abs().sum() for p in weights(net)) if t.l1 > 0 else 0.0
                    # Weighted by rows, the group's gradient is the one of a single big batch.
                    scaler.scale((loss + penalty) * (len(yb) / group_rows)).backward()
                sums += torch.tensor([loss.item() * len(yb), len(yb)], dtype=torch.float64)
                cm += metrics.confusion(predict(logits.detach()), yb, num_classes).cpu()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        schedule.step()
        train_m = summarize(seam, sums, cm, "train")
        val_m = evaluate(net, feed.val_batches(), num_classes, loss_fn, seam, "val")
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
        if cfg.sweep.objective == "gap_penalized":
            values["objective"] = values["val_loss"] + cfg.sweep.gap_penalty * max(
                0.0, values["gap"]
            )
        diverged = not math.isfinite(values["train_loss"])  # all-reduced: every rank agrees
        improved, stop = stopper.update(values[cfg.sweep.metric])
        value = values[rank_key]
        # ties count: a later equal epoch becomes the best, as in the driver's ledger
        is_best = math.isfinite(value) and (
            best_rank is None or (value <= best_rank if rank_mode == "min" else value >= best_rank)
        )
        if is_best:
            best_rank = value
        if improved and es.restore_best and es.patience > 0:
            best_weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if diverged:
            outcome, values["diverged"] = "diverged", 1.0
        elif stop:
            outcome, values["early_stopped"] = "early_stopped", 1.0
            if best_weights is not None:
                net.load_state_dict(best_weights)  # end on the best epoch's weights
        last = diverged or stop or epoch + 1 == t.epochs
        history.append(values)
        # Every N epochs, every new best (the champion's weights), rungs, and the last one.
        if seam.rank == 0 and (
            last
            or improved
            or is_best
            or epoch + 1 in rung_epochs
            or (epoch + 1) % t.checkpoint_every == 0
        ):
            with tempfile.TemporaryDirectory() as ckpt:
                torch.save(
                    {
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "scaler": scaler.state_dict(),
                        "stopper": dataclasses.asdict(stopper),
                        "best_rank": best_rank,
                        "best_model": best_weights,
                        "epoch": epoch + 1,
                        "metrics": values,
                        "outcome": outcome,
                        "history": history,
                    },
                    os.path.join(ckpt, CHECKPOINT_FILE),
                )
                # A driver that lost some epochs' reports (it was killed while they were in
                # flight) fills them in from here after a resume.
                with open(os.path.join(ckpt, HISTORY_FILE), "w") as f:
                    json.dump(history, f)
                seam.report(values, ckpt)
        else:
            seam.report(values, None)
        if diverged or stop:
            break
    if seam.device.type == "cuda":
        torch.cuda.empty_cache()  # hand memory back before the next trial on this GPU
    return outcome


# ---------------------------------------------------------------- the helpers it calls


def weights(net: nn.Module) -> list[nn.Parameter]:
    """Parameters that are weight matrices (L1/L2 apply to these, not to biases)."""
    return [p for p in net.parameters() if p.ndim >= 2]


def make_optimizer(net: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    decay = weights(net)
    no_decay = [p for p in net.parameters() if p.ndim < 2]
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


def make_loss(num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if num_classes == 2:  # one logit, sigmoid inside BCE-with-logits
        return lambda logits, y: F.binary_cross_entropy_with_logits(
            logits.squeeze(1), y.to(logits.dtype)
        )
    return F.cross_entropy


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


def predict(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return (logits.squeeze(1) > 0).to(torch.int64)
    return logits.argmax(dim=1)


def shard_batches(rows: int, batch: int, seam: Seam, seed: int, epoch: int) -> list[torch.Tensor]:
    """This rank's shuffled mini-batches, like DistributedSampler: every rank gets the same
    number of batches (DDP needs that), padding by wrapping around when rows don't divide."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(rows, generator=g)
    per_rank = -(-rows // seam.world_size)
    padded = torch.cat([order, order[: per_rank * seam.world_size - rows]])
    mine = padded[seam.rank :: seam.world_size]
    return list(mine.split(batch))


def summarize(seam: Seam, sums: torch.Tensor, cm: torch.Tensor, prefix: str) -> dict[str, float]:
    """Add up every rank's loss sums and confusion counts, then turn them into metrics."""
    packed = seam.all_reduce(torch.cat([sums, cm.flatten()]).to(seam.device)).cpu()
    total_loss, rows = packed[0].item(), packed[1].item()
    cm = packed[2:].reshape(cm.shape)
    return {
        f"{prefix}_loss": total_loss / max(rows, 1.0),
        f"{prefix}_accuracy": metrics.accuracy(cm),
        f"{prefix}_f1": metrics.macro_f1(cm),
    }


@torch.no_grad()
def evaluate(
    net: nn.Module,
    batches: Iterable[Batch],
    num_classes: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    seam: Seam,
    prefix: str,
) -> dict[str, float]:
    """Score this rank's batches, then add up all ranks'. The unwrapped module is used, so no
    DDP collective runs on slices of uneven length."""
    net.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for x, y in batches:
        logits = net(x)
        sums += torch.tensor([loss_fn(logits, y).item() * len(y), len(y)], dtype=torch.float64)
        cm += metrics.confusion(predict(logits), y, num_classes).cpu()
    return summarize(seam, sums, cm, prefix)


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


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint folder's contents; tensors only, so no code is unpickled."""
    return torch.load(os.path.join(path, CHECKPOINT_FILE), map_location="cpu", weights_only=True)

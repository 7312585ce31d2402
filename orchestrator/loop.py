"""The training loop: one function, read top to bottom, the same in a test and on a DDP worker.

Everything that differs between "a plain process" and "rank r of a Ray Train worker
group" sits behind the small ``Seam`` protocol (rank, device, DDP wrapping, all-reduce,
report). ``LocalSeam`` is the single-process one; ``orchestrator.ray_train`` has Ray's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from orchestrator import metrics, model
from orchestrator.config import Config
from orchestrator.data import Splits

CHECKPOINT_FILE = "checkpoint.pt"


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


@dataclass
class LocalSeam:
    """One process, no Ray: tests and debugging. Keeps what was reported."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    reports: list[dict[str, float]] = field(default_factory=list)
    on_checkpoint: Callable[[str], None] | None = None

    def wrap(self, net: nn.Module) -> nn.Module:
        return net.to(self.device)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def report(self, values: dict[str, float], checkpoint_dir: str | None) -> None:
        self.reports.append(values)
        if checkpoint_dir and self.on_checkpoint:
            self.on_checkpoint(checkpoint_dir)


def train(cfg: Config, splits: Splits, seam: Seam) -> None:
    """Train ``cfg.train.epochs`` epochs; report train/val loss, accuracy and F1 each epoch."""
    t = cfg.train
    torch.manual_seed(t.seed)  # same initial weights on every rank
    net = model.build(cfg.model, splits.x_train, splits.num_classes)
    ddp_net = seam.wrap(net)
    net = net.to(seam.device)
    optimizer = make_optimizer(net, cfg)
    # Cosine decay to zero over the planned epochs: the last epochs settle instead of bouncing.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    loss_fn = make_loss(splits.num_classes)
    x_train, y_train = _tensors(splits.x_train, splits.y_train, seam.device)
    x_val, y_val = _tensors(splits.x_val, splits.y_val, seam.device)
    per_worker_batch = max(1, t.batch_size // seam.world_size)
    best: float | None = None

    for epoch in range(t.epochs):
        ddp_net.train()
        sums = torch.zeros(2, dtype=torch.float64)  # loss * rows, rows
        cm = torch.zeros(splits.num_classes, splits.num_classes, dtype=torch.float64)
        for idx in shard_batches(len(y_train), per_worker_batch, seam, t.seed, epoch):
            xb, yb = x_train[idx], y_train[idx]
            logits = ddp_net(xb)
            loss = loss_fn(logits, yb)
            # L1 is not an optimizer option: it joins the loss, over weights only.
            penalty = t.l1 * sum(p.abs().sum() for p in weights(net)) if t.l1 > 0 else 0.0
            optimizer.zero_grad(set_to_none=True)
            (loss + penalty).backward()
            optimizer.step()
            sums += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64)
            cm += metrics.confusion(predict(logits.detach()), yb, splits.num_classes).cpu()
        schedule.step()
        train_m = summarize(seam, sums, cm, "train")
        val_m = evaluate(net, x_val, y_val, splits.num_classes, loss_fn, seam, "val")
        values = {"epoch": float(epoch + 1), **train_m, **val_m}
        # Checkpoint the epochs that beat the best so far, and the last one: the champion's
        # weights and a place to resume, without writing every epoch.
        score = values[cfg.sweep.metric]
        improved = best is None or (score < best if cfg.sweep.mode == "min" else score > best)
        best = score if improved else best
        if seam.rank == 0 and (improved or epoch + 1 == t.epochs):
            with tempfile.TemporaryDirectory() as ckpt:
                torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(),
                            "epoch": epoch + 1, "metrics": values},
                           os.path.join(ckpt, CHECKPOINT_FILE))
                seam.report(values, ckpt)
        else:
            seam.report(values, None)


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


def make_loss(num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if num_classes == 2:  # one logit, sigmoid inside BCE-with-logits
        return lambda logits, y: F.binary_cross_entropy_with_logits(
            logits.squeeze(1), y.to(logits.dtype))
    return F.cross_entropy


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
    return {f"{prefix}_loss": total_loss / max(rows, 1.0),
            f"{prefix}_accuracy": metrics.accuracy(cm),
            f"{prefix}_f1": metrics.macro_f1(cm)}


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], seam: Seam,
             prefix: str, batch: int = 4096) -> dict[str, float]:
    """Each rank scores its own slice (no padding, so every row counts once); the unwrapped
    module is used so no DDP collective runs on uneven slices."""
    net.eval()
    mine = torch.arange(seam.rank, len(y), seam.world_size)
    sums = torch.zeros(2, dtype=torch.float64)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for idx in mine.split(batch):
        logits = net(x[idx])
        sums += torch.tensor([loss_fn(logits, y[idx]).item() * len(idx), len(idx)],
                             dtype=torch.float64)
        cm += metrics.confusion(predict(logits), y[idx], num_classes).cpu()
    return summarize(seam, sums, cm, prefix)


def _tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint folder's contents; tensors only, so no code is unpickled."""
    return torch.load(os.path.join(path, CHECKPOINT_FILE), map_location="cpu", weights_only=True)

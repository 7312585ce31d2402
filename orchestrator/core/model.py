"""Model construction: plain PyTorch, built from the config's ``model`` section."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from orchestrator.config import Config, ModelConfig

BINARY = 2  # two classes: one logit and a sigmoid (BCE), not a softmax
CONSTANT_STD = 1e-6  # a spread this small is a constant column: left unscaled, not divided by ~0
POOL_FROM = 4  # an image is halved by max pooling only while at least this wide (never below 2)


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics, stored as buffers.

    It lives inside the model so a checkpoint, the logged MLflow model and the server
    all see raw features and scale them the same way.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        # Constant columns (digits' blank corner pixels) would divide by zero.
        self.register_buffer(
            "std", torch.as_tensor(np.where(std > CONSTANT_STD, std, 1.0), dtype=torch.float32)
        )

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features scaled with the training split's statistics."""
        return (x - self.mean) / self.std


def num_outputs(num_classes: int) -> int:
    """Binary: one logit (sigmoid + BCE); multi-class: one logit per class (softmax + CE)."""
    return 1 if num_classes == BINARY else num_classes


class CheckpointedBlock(nn.Sequential):
    """A block under activation checkpointing: its activations are recomputed in the backward
    pass instead of kept (less memory, about one more forward of time). Same parameter
    names as a plain block, so checkpoints load either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output; while training with gradients, its activations are not kept."""
        if self.training and torch.is_grad_enabled():
            out: torch.Tensor = checkpoint(super().forward, x, use_reentrant=False)
            return out
        return super().forward(x)


def feature_stats(
    kind: str,
    col_mean: np.ndarray,
    col_std: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The stem's scaling from the training split's per-column moments. A cnn gets one scale
    for every pixel, so a shifted image means the same; an mlp one per feature."""
    if kind != "cnn":
        return col_mean, col_std
    mean = float(np.mean(col_mean))
    std = float(np.sqrt(max(np.mean(col_std**2 + col_mean**2) - mean**2, 0.0)))
    return np.full_like(col_mean, mean), np.full_like(col_std, std)


def build(
    cfg: ModelConfig,
    mean: np.ndarray,
    std: np.ndarray,
    num_classes: int,
    shape: list[int] | None = None,
    grad_checkpointing: bool = False,
) -> nn.Sequential:
    """Standardize, then the blocks (each optionally checkpointed), then the head.

    mlp: a block is [Linear, ReLU, Dropout]. cnn: the flat features are viewed as
    ``shape`` (C, H, W); a block is [Conv 3x3, ReLU, MaxPool 2 while the image is at least
    4 wide, Dropout]; the head is Flatten + Linear.
    """

    def block(layers: list[nn.Module]) -> nn.Sequential:
        return CheckpointedBlock(*layers) if grad_checkpointing else nn.Sequential(*layers)

    stem: list[nn.Module] = [Standardize(mean, std)]
    blocks: list[nn.Module] = []
    if cfg.kind == "cnn":
        assert shape is not None, "data.shape is validated for cnn"
        channels, height, width = shape
        stem.append(nn.Unflatten(1, (channels, height, width)))
        for h in cfg.hidden:
            layers: list[nn.Module] = [nn.Conv2d(channels, h, 3, padding=1), nn.ReLU()]
            if min(height, width) >= POOL_FROM:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            blocks.append(block(layers))
            channels = h
        head: list[nn.Module] = [
            nn.Flatten(),
            nn.Linear(channels * height * width, num_outputs(num_classes)),
        ]
    else:
        width = len(mean)
        for h in cfg.hidden:
            layers = [nn.Linear(width, h), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            blocks.append(block(layers))
            width = h
        head = [nn.Linear(width, num_outputs(num_classes))]
    return nn.Sequential(*stem, *blocks, *head)


def from_config(
    cfg: Config, col_mean: np.ndarray, col_std: np.ndarray, num_classes: int
) -> nn.Sequential:
    """The config's network, its stem scaled from the training split's per-column moments."""
    mean, std = feature_stats(cfg.model.kind, col_mean, col_std)
    return build(cfg.model, mean, std, num_classes, cfg.data.shape, cfg.train.grad_checkpointing)


def from_data(cfg: Config, x_train: np.ndarray, num_classes: int) -> nn.Sequential:
    """The config's network, its stem scaled from the training rows in memory."""
    return from_config(cfg, x_train.mean(axis=0), x_train.std(axis=0), num_classes)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities, (rows, classes), for one-logit binary or multi-class heads."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


class WithProbabilities(nn.Module):
    """The served form of a trained model: raw features in, class probabilities out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, (rows, classes), for raw features."""
        return probabilities(self.net(x))

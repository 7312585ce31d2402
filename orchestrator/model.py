"""Model construction: plain PyTorch, built from the config's ``model`` section."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.config import ModelConfig


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics, stored as buffers.

    It lives inside the model so a checkpoint, the logged MLflow model and the server
    all see raw features and scale them the same way.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        # Constant columns (digits' blank corner pixels) would divide by zero.
        self.register_buffer("std", torch.as_tensor(np.where(std > 1e-6, std, 1.0),
                                                    dtype=torch.float32))

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def num_outputs(num_classes: int) -> int:
    """Binary: one logit (sigmoid + BCE); multi-class: one logit per class (softmax + CE)."""
    return 1 if num_classes == 2 else num_classes


def build(cfg: ModelConfig, x_train: np.ndarray, num_classes: int) -> nn.Sequential:
    """An MLP: Standardize, then [Linear, ReLU, Dropout] per hidden layer, then the head."""
    layers: list[nn.Module] = [Standardize(x_train.mean(axis=0), x_train.std(axis=0))]
    width = x_train.shape[1]
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = h
    layers.append(nn.Linear(width, num_outputs(num_classes)))
    return nn.Sequential(*layers)


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
        return probabilities(self.net(x))

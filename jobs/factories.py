"""Example model factories: what `model.kind: package.module:function` points at.

A factory takes the ``Problem`` (inputs, outputs, task, shape, the trial's dropout, whether
activation checkpointing is asked for) and its own keyword arguments from ``model.args``,
and returns an ``nn.Module`` from the preprocessed features to the outputs (logits, or one
value per regression target). The orchestrator puts its ``Preprocess`` in front of it
(imputation, scaling, categories), so a factory is only the network. ``search_space``
beside a factory says which ranges of its arguments are worth searching.

    orchestrator sweep jobs/configs/factory.yaml
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from orchestrator.core.model import Problem


class Residual(nn.Module):
    """x + f(x): a pre-norm block of two linear layers, so depth does not hurt training."""

    def __init__(self, width: int, dropout: float, recompute: bool):
        super().__init__()
        self.recompute = recompute
        self.f = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's input plus its residual (recomputed in backward when asked)."""
        if self.recompute and self.training and torch.is_grad_enabled():
            out: torch.Tensor = checkpoint(self.f, x, use_reentrant=False)
            return x + out
        return x + self.f(x)


def residual_mlp(problem: Problem, width: int = 128, depth: int = 2) -> nn.Module:
    """A residual MLP: a linear stem to ``width``, ``depth`` residual blocks, a head."""
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    blocks = [Residual(width, problem.dropout, problem.grad_checkpointing) for _ in range(depth)]
    return nn.Sequential(
        nn.Linear(problem.inputs, width),
        *blocks,
        nn.LayerNorm(width),
        nn.Linear(width, problem.outputs),
    )


residual_mlp.search_space = {  # type: ignore[attr-defined]
    "width": {"type": "choice", "values": [32, 64, 128, 256]},
    "depth": {"type": "randint", "low": 0, "high": 5},
}


def small_cnn(problem: Problem, channels: int = 32, hidden: int = 128) -> nn.Module:
    """Two 3x3 conv layers (``channels``, then twice that), a max pool, and a dense layer:
    for small images such as digits' 8x8 (``data.shape``)."""
    if problem.shape is None:
        raise ValueError("small_cnn needs image-shaped inputs: set data.shape")
    c, h, w = problem.shape
    return nn.Sequential(
        nn.Unflatten(1, (c, h, w)),
        nn.Conv2d(c, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(problem.dropout),
        nn.Flatten(),
        nn.Linear(2 * channels * (h // 2) * (w // 2), hidden),
        nn.ReLU(),
        nn.Dropout(problem.dropout),
        nn.Linear(hidden, problem.outputs),
    )


small_cnn.search_space = {  # type: ignore[attr-defined]
    "channels": {"type": "choice", "values": [16, 32, 64]},
    "hidden": {"type": "choice", "values": [64, 128, 256]},
}

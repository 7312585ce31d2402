"""Classification metrics from a confusion matrix, so DDP ranks can simply add theirs up."""

from __future__ import annotations

import torch


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true, predicted) counts as float64, so they can be all-reduced with the loss sums."""
    idx = target.to(torch.int64) * num_classes + pred.to(torch.int64)
    counts = torch.bincount(idx, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).to(torch.float64)


def accuracy(cm: torch.Tensor) -> float:
    """Share of rows predicted right (0 when there are none)."""
    total = cm.sum().item()
    return cm.diagonal().sum().item() / total if total else 0.0


def macro_f1(cm: torch.Tensor) -> float:
    """Mean over classes of 2TP / (2TP + FP + FN); a class absent and never predicted is skipped."""
    tp = cm.diagonal()
    fp = cm.sum(dim=0) - tp
    fn = cm.sum(dim=1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0
    if not present.any():
        return 0.0
    return (2 * tp[present] / denom[present]).mean().item()

"""The training losses: soft F1 (the paper's "F1 loss") and cross-entropy, both on soft targets.

Soft F1 (../shared/METHOD.md; no fastai built-in): softmax probabilities p and one-hot (or
mixup-mixed) targets y; per class over the batch tp = sum(y p), fp = sum((1 - y) p),
fn = sum(y (1 - p)); F1 = 2 tp / (2 tp + fp + fn + eps), eps 1e-7; loss = 1 - mean over
classes. It depends on the batch composition, which is why training oversamples.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["soft_f1_loss", "soft_cross_entropy", "loss_fn"]


def soft_f1_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    p = torch.softmax(logits.float(), dim=1)
    y = targets.float()
    tp = (y * p).sum(0)
    fp = ((1 - y) * p).sum(0)
    fn = (y * (1 - p)).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    return 1 - f1.mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets.float() * torch.log_softmax(logits.float(), dim=1)).sum(1).mean()


def loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return {"f1": soft_f1_loss, "ce": soft_cross_entropy}[name]

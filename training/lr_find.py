"""The learning-rate range test (fastai's ``lr_find``), on training patients only.

A throwaway copy of the recipe's network trains one batch per step while the learning rate
grows exponentially from ``start_lr`` (1e-7) to ``end_lr`` (10) over ``steps`` (100)
batches, with the recipe's loss, augmentation, mixup and sampling; the loss is smoothed by
an exponential moving average (beta 0.98, bias corrected) and the test stops once it exceeds
4x the best seen. The suggestion is fastai's default, ``valley``: the longest run of
decreasing loss, and the rate two thirds of the way down it, skipping the last 5 points.

Run it on a training fold's patients, never on the patients the rate will be judged on:
``egfr-node train --lr-find`` uses the first outer fold's training patients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from training.augment import augment_batch, mixup_batch
from training.engine import build_model, epoch_batches, make_optimizer
from training.losses import loss_fn
from training.settings import TrainSettings

__all__ = ["LRFinding", "lr_range_test", "valley"]


@dataclass(frozen=True)
class LRFinding:
    """The rates tried, their smoothed losses, and the suggested max learning rate."""

    lrs: list[float]
    losses: list[float]
    suggestion: float
    patients: int

    def summary(self, points: int = 8) -> list[tuple[float, float]]:
        """A few (lr, smoothed loss) pairs spread over the curve, for printing."""
        if not self.lrs:
            return []
        picks = np.unique(np.linspace(0, len(self.lrs) - 1, min(points, len(self.lrs))).round().astype(int))
        return [(self.lrs[i], self.losses[i]) for i in picks]


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``valley`` suggestion: the longest decreasing run of the loss curve, and the
    learning rate 2/3 of the way along it."""
    n = len(losses)
    if n == 0:
        raise ValueError('Argument "losses" must not be empty')
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end = i
            start = end - run[end]
    sections = (end - start) / 3
    return float(lrs[min(n - 1, max(0, start + int(sections) + int(sections / 2)))])


def lr_range_test(inputs: torch.Tensor, labels: np.ndarray, train_index: np.ndarray, settings: TrainSettings,
                  seed: int, device: torch.device, *, start_lr: float = 1e-7, end_lr: float = 10.0,
                  steps: int = 100, skip_end: int = 5) -> LRFinding:
    """The range test on ``inputs [N, S, C, H, W]`` (on ``device``) of the patients
    ``train_index`` only. The network, loss, augmentation, mixup and batch sampling are the
    recipe's (``settings``); nothing is kept."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f'Arguments "start_lr" and "end_lr" must satisfy 0 < start_lr < end_lr, got {start_lr}, {end_lr}')
    train_index = np.asarray(train_index)
    s = inputs.shape[1]
    x = inputs[torch.as_tensor(train_index, device=device)].reshape(-1, *inputs.shape[2:])
    y = torch.as_tensor(np.repeat(labels[train_index], s), device=device)
    model = build_model(settings, seed).to(device)
    optimizer = make_optimizer(model, settings)
    criterion = loss_fn(settings.loss)
    generator = torch.Generator().manual_seed(seed)
    device_generator = torch.Generator(device=device).manual_seed(seed + 1)
    ratio = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    batches: list[torch.Tensor] = []
    model.train()
    for step in range(steps):
        if not batches:
            batches = epoch_batches(y.cpu(), settings, generator)
        batch = batches.pop(0).to(device)
        lr = start_lr * ratio ** step
        for group in optimizer.param_groups:
            group["lr"] = lr
        xb = augment_batch(x[batch], settings, device_generator)
        target = y[batch]
        yb = torch.stack((1 - target, target), dim=1).to(xb.dtype)
        if settings.mixup:
            xb, yb = mixup_batch(xb, yb, settings.mixup_alpha, device_generator)
        loss = criterion(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        value = loss.item()
        average = 0.98 * average + 0.02 * value
        smoothed = average / (1 - 0.98 ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or smoothed > 4 * best:
            break
    kept = max(1, len(lrs) - skip_end)
    return LRFinding(lrs, losses, valley(lrs[:kept], losses[:kept]), int(len(train_index)))

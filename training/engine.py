"""Training one fold model: ``train_one_epoch`` and ``evaluate`` kept apart (the torchvision
references' layout), and ``train_fold`` that runs the recipe and keeps the selected epoch.

The recipe (Haim et al. 2022, "DL analysis"; fastai v2 defaults from ../shared/METHOD.md):
ResNet-50 + fastai head (:func:`pipeline.model.build_resnet50`), Adam(W) betas (0.9, 0.99),
eps 1e-5, decoupled weight decay 0.01 except BatchNorm and bias, one-cycle per batch
(``OneCycleLR``, pct_start 0.25, div 25, final div 4000, beta1 0.95 -> 0.85 -> 0.95),
oversampling by 1 / count(class), batch-level augmentation and mixup
(:mod:`training.augment`), soft-F1 or cross-entropy loss (:mod:`training.losses`).
With ``freeze_body`` only the head and the body's BatchNorm layers train.

Determinism: every random draw (initialisation, dropout, sampling, augmentation, mixup)
comes from seeds derived from ``(seed, repeat, fold)``; on CPU with the same thread count
the same cohort and seed give the same weights bit for bit.

The folds run one after another, on CPU and on CUDA alike (training the K folds together
on one GPU is not implemented yet).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.aggregate import SLICE_AGGREGATIONS, aggregate_slices
from pipeline.model import EGFRNet, build_resnet50, load_imagenet_body
from training import distributed
from training.augment import augment_batch, mixup_batch
from training.losses import loss_fn
from training.settings import TrainSettings

__all__ = [
    "FoldResult",
    "resolve_device",
    "build_model",
    "configure_trainable",
    "make_optimizer",
    "make_scheduler",
    "epoch_batches",
    "train_one_epoch",
    "evaluate",
    "patient_scores",
    "train_fold",
    "choose_aggregation_and_threshold",
]

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """One fold model and what it scored on its test patients."""

    fold: int
    state_dict: dict[str, torch.Tensor]
    epoch: int  # the kept epoch, 1-based
    history: list[dict[str, float]]
    test_index: np.ndarray  # patient indices into the prepared cohort
    test_scores: np.ndarray  # [n_test, S], probability of EGFR positive per slice
    slice_aggregation: str
    threshold: float
    selection: dict[str, Any] = field(default_factory=dict)
    train_images: int = 0
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def build_model(settings: TrainSettings, seed: int) -> EGFRNet:
    """The network, initialised from ``seed``; ImageNet body from the local file when configured."""
    torch.manual_seed(seed)
    model = build_resnet50(normalization="imagenet" if settings.pretrained else "none")
    if settings.pretrained:
        load_imagenet_body(model, Path(settings.imagenet_weights))  # type: ignore[arg-type]
    configure_trainable(model, settings.freeze_body)
    return model


def configure_trainable(model: EGFRNet, freeze_body: bool) -> None:
    """fastai ``freeze()``: body parameters off except BatchNorm; the head always trains."""
    for module in model.body.modules():
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(is_bn or not freeze_body)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), none on BatchNorm and bias parameters (fastai ``bn_wd=False``)."""
    decay, no_decay = [], []
    for module in model.modules():
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            (no_decay if is_bn or name == "bias" else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.max_lr / settings.div_factor,
                             betas=(settings.max_momentum, settings.beta2), eps=settings.eps)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int) -> torch.optim.lr_scheduler.OneCycleLR:
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.max_lr, epochs=settings.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=settings.pct_start, div_factor=settings.div_factor, final_div_factor=settings.final_div_factor,
        anneal_strategy="cos", cycle_momentum=True, base_momentum=settings.base_momentum, max_momentum=settings.max_momentum,
    )


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def epoch_batches(labels: torch.Tensor, settings: TrainSettings, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of training indices: oversampled (weights 1 / count(class), with replacement,
    epoch length = dataset size) or a permutation; full batches only (fastai drops the last)."""
    n = labels.numel()
    if settings.oversample:
        counts = torch.bincount(labels, minlength=2).clamp(min=1).to(torch.float64)
        weights = (1.0 / counts)[labels]
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    steps = steps_per_epoch(n, settings.batch_size)
    size = min(settings.batch_size, n)
    return [order[i * size:(i + 1) * size] for i in range(steps)]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
    device_generator: torch.Generator,
) -> float:
    """One pass over ``x [N, C, H, W]`` (slices, on the device); returns the mean loss."""
    model.train()
    criterion = loss_fn(settings.loss)
    total, count = torch.zeros((), device=x.device), 0
    for batch in epoch_batches(y.cpu(), settings, generator):
        batch = distributed.shard(batch).to(x.device)  # all of it, or this rank's share under torchrun
        xb = augment_batch(x[batch], settings, device_generator)
        yb = torch.nn.functional.one_hot(y[batch], 2).to(xb.dtype)
        if settings.mixup:
            xb, yb = mixup_batch(xb, yb, settings.mixup_alpha, device_generator)
        loss = criterion(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total = total + loss.detach()  # no host sync per step
        count += 1
    return float(total) / max(count, 1)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Probability of EGFR positive for every slice of ``x [N, C, H, W]`` (float64 numpy)."""
    model.eval()
    out = [torch.softmax(model(x[i:i + batch_size]).float(), dim=-1)[:, 1] for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


def patient_scores(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Slice scores ``[N, S]`` for patients ``inputs [N, S, C, H, W]``."""
    n, s = inputs.shape[:2]
    return evaluate(model, inputs.reshape(n * s, *inputs.shape[2:]), batch_size).reshape(n, s)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(labels.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def _selection_value(metric: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """Higher is better. ``accuracy``: slice-level at 0.5 (fastai's metric on the validation
    set); ``auc``: patient-level, median of slices; ``last``: 0 (the last epoch is kept)."""
    if metric == "accuracy":
        slice_labels = np.repeat(labels, scores.shape[1])
        return float(((scores.reshape(-1) >= 0.5).astype(int) == slice_labels).mean())
    if metric == "auc":
        value = _auc(labels, aggregate_slices(scores, "median"))
        return -1.0 if np.isnan(value) else value
    return 0.0


def choose_aggregation_and_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[str, float, dict[str, float]]:
    """Nested selection on inner-validation patients: the slice aggregation with the best
    patient AUC (ties: median, mean, min, max in that order), and the threshold maximising
    Youden's J on those patients' aggregated scores (0.5 when they hold one class only)."""
    from sklearn.metrics import roc_curve

    aucs = {how: _auc(labels, aggregate_slices(scores, how)) for how in SLICE_AGGREGATIONS}
    order = ("median", "mean", "min", "max")
    valid = [how for how in order if not np.isnan(aucs[how])]
    if not valid:
        return "median", 0.5, aucs
    best = max(valid, key=lambda how: (aucs[how], -order.index(how)))
    patient = aggregate_slices(scores, best)
    fpr, tpr, thresholds = roc_curve(labels, patient)
    j = tpr - fpr
    index = int(np.argmax(j))
    threshold = float(np.clip(thresholds[index], 0.0, 1.0))
    return best, threshold, aucs


def train_fold(
    fold: int,
    inputs: torch.Tensor,
    labels: np.ndarray,
    fit_index: np.ndarray,
    select_index: np.ndarray,
    test_index: np.ndarray,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    progress: bool = True,
    position: int = 1,
) -> FoldResult:
    """Train on ``fit_index`` patients; after every epoch score ``select_index`` patients and
    keep the best epoch (paper mode: ``select_index`` is the test fold itself; nested mode:
    an inner split of the training patients). ``inputs [N, S, C, H, W]`` on ``device``."""
    start = time.perf_counter()
    network = build_model(settings, seed).to(device)
    model = distributed.wrap(network)  # DDP under torchrun; the network itself otherwise
    s = inputs.shape[1]
    x_fit = inputs[torch.as_tensor(fit_index, device=device)].reshape(-1, *inputs.shape[2:])
    y_fit = torch.as_tensor(np.repeat(labels[fit_index], s), device=device)
    x_select = inputs[torch.as_tensor(select_index, device=device)]
    generator = torch.Generator().manual_seed(seed)
    # each rank augments its own share of the batch differently (rank 0 alone: seed + 1)
    device_generator = torch.Generator(device=device).manual_seed(seed + 1 + 7919 * distributed.rank())
    optimizer = make_optimizer(network, settings)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch(x_fit.shape[0], settings.batch_size))
    best_value, best_epoch, best_state = -float("inf"), 0, None
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, settings.epochs + 1), desc=f"fold {fold + 1}", unit="epoch", leave=False, position=position,
               disable=not progress)
    for epoch in bar:
        loss = train_one_epoch(model, optimizer, scheduler, x_fit, y_fit, settings, generator, device_generator)
        value = 0.0
        if settings.selection_metric != "last" or epoch == settings.epochs:
            scores = patient_scores(network, x_select, settings.eval_batch_size)
            value = _selection_value(settings.selection_metric, labels[select_index], scores)
        history.append({"epoch": epoch, "loss": round(loss, 6), settings.selection_metric: round(value, 6)})
        bar.set_postfix(loss=f"{loss:.3f}", **{settings.selection_metric[:3]: f"{value:.3f}"})
        if value > best_value or (settings.selection_metric == "last" and epoch == settings.epochs):
            best_value, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    bar.close()
    assert best_state is not None
    network.load_state_dict(best_state)
    test_scores = patient_scores(network, inputs[torch.as_tensor(test_index, device=device)], settings.eval_batch_size)
    selection: dict[str, Any] = {"epoch": best_epoch, "metric": settings.selection_metric, "value": best_value,
                                 "patients": int(len(select_index))}
    if settings.selection == "nested":
        select_scores = patient_scores(network, x_select, settings.eval_batch_size)
        how, threshold, aucs = choose_aggregation_and_threshold(labels[select_index], select_scores)
        selection["inner_auc"] = {k: (None if np.isnan(v) else round(v, 6)) for k, v in aucs.items()}
    else:
        how, threshold = "median", settings.threshold
    state = {k: v.detach().cpu().clone() for k, v in best_state.items()}
    return FoldResult(fold, state, best_epoch, history, np.asarray(test_index), test_scores, how, threshold, selection,
                      train_images=int(x_fit.shape[0]) * settings.epochs, seconds=time.perf_counter() - start)

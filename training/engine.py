"""Training the fold models: :class:`FoldTrainer` holds one fold's model, data and optimiser
and trains it step by step; :func:`train_fold` runs one fold alone, and
:func:`train_folds_together` runs the K folds in turns (each on its own CUDA stream on a
GPU), with the same results. ``evaluate`` is kept apart (the torchvision references' layout).

The recipe (Haim et al. 2022, "DL analysis"; fastai v2 defaults from ../shared/METHOD.md):
ResNet-50 + fastai head (:func:`pipeline.model.network.build_resnet50`), Adam(W) betas (0.9, 0.99),
eps 1e-5, decoupled weight decay 0.01 except BatchNorm and bias, one-cycle per batch
(``OneCycleLR``, pct_start 0.25, div 25, final div 4000, beta1 0.95 -> 0.85 -> 0.95),
oversampling by 1 / count(class), batch-level augmentation and mixup
(:mod:`training.augment`), soft-F1 or cross-entropy loss (:mod:`training.losses`).
With ``freeze_body`` only the head and the body's BatchNorm layers train.

Determinism: every random draw (initialisation, dropout, sampling, augmentation, mixup)
comes from seeds derived from ``(seed, repeat, fold)``; on CPU with the same thread count
the same cohort and seed give the same weights bit for bit.

``TrainSettings.folds_together`` (default on) trains the K folds together; under torchrun
(data-parallel) they run one after another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.model.device import resolve_device
from pipeline.model.aggregate import SLICE_AGGREGATIONS, aggregate_slices
from pipeline.model.network import EGFRNet, build_resnet50, load_imagenet_body
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
    "evaluate",
    "patient_scores",
    "FoldTrainer",
    "train_fold",
    "train_folds_together",
    "choose_aggregation_and_threshold",
    "keeps_epoch",
    "epoch_rule_text",
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

    def youden_threshold(self, how: str) -> float | None:
        """The threshold nested selection placed on the inner patients' scores under the slice
        aggregation ``how`` (each aggregation has its own scale), or None when they could not
        place one (one class, AUC <= 0.5) or selection was not nested."""
        placed = self.selection.get("youden")
        if placed is not None:
            value = placed.get(how)
            return None if value is None else float(value)
        # a result from before the per-aggregation record: its one threshold, for its aggregation
        rule = str(self.selection.get("threshold_rule", ""))
        return self.threshold if rule == "youden" and how == self.slice_aggregation else None


def build_model(settings: TrainSettings, seed: int) -> EGFRNet:
    """The network, initialised from ``seed``; ImageNet body from the local file when configured."""
    torch.manual_seed(seed)
    model = build_resnet50(normalization="imagenet" if settings.pretrained else "none", head=settings.head)
    if settings.imagenet_weights is not None:
        load_imagenet_body(model, Path(settings.imagenet_weights))
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
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            (no_decay if is_bn or name == "bias" else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # On CUDA the fused kernel: a few launches per step instead of several per parameter
    # tensor (a batch of 32 at 96 px is launch bound there). The CPU keeps the reference path.
    fused = any(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=settings.max_lr / settings.div_factor,
                             betas=(settings.max_momentum, settings.beta2), eps=settings.eps, fused=fused or None)


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


def _selection_value(metric: str, labels: np.ndarray, scores: np.ndarray) -> tuple[float, bool]:
    """(value, eligible): higher is better. ``accuracy``: slice-level at 0.5 (fastai's metric on
    the validation set); an epoch whose slices all fall on one side of 0.5 is not eligible (its
    accuracy is the share of the majority class, which a network that learned nothing yet
    reaches at epoch 1: the trap the paper recipe fell into, issue 27). ``auc``: patient-level,
    median of slices (not eligible when the patients hold one class). ``last``: 0, eligible."""
    if metric == "accuracy":
        slice_labels = np.repeat(labels, scores.shape[1])
        predicted = (scores.reshape(-1) >= 0.5).astype(int)
        return float((predicted == slice_labels).mean()), len(np.unique(predicted)) == 2
    if metric == "auc":
        value = _auc(labels, aggregate_slices(scores, "median"))
        return (-1.0, False) if np.isnan(value) else (value, True)
    return 0.0, True


def keeps_epoch(value: float, eligible: bool, best_value: float) -> bool:
    """Whether an epoch replaces the kept one: eligible and at least as good (a tie goes to the
    later epoch, which has trained longer on the same schedule)."""
    return eligible and value >= best_value


def epoch_rule_text(metric: str, selection: str, no_eligible_epoch: bool = False) -> str:
    """How the kept epoch was chosen, in words, from the rule that ran (not from the settings'
    intent: ``fixed`` selection and the ``last`` metric keep the last epoch whatever the mode)."""
    if metric == "last":
        return "the last epoch (nothing chosen on data)"
    on = {"paper": "the test fold itself (optimistic)", "nested": "inner patients of the training fold"}.get(selection, "")
    what = {"accuracy": "slice accuracy at 0.5, epochs predicting one class only not eligible",
            "auc": "patient AUC (median of slices)"}[metric]
    text = f"the best {what}, on {on}; ties to the later epoch"
    return text + ("; no epoch was eligible, so the last was kept" if no_eligible_epoch else "")


def choose_aggregation_and_threshold(labels: np.ndarray, scores: np.ndarray,
                                     fallback: float = 0.5) -> tuple[str, float, dict[str, Any]]:
    """Nested selection on inner-validation patients: the slice aggregation with the best
    patient AUC (ties: median, mean, min, max in that order), and the threshold maximising
    Youden's J on those patients' aggregated scores, placed halfway between the two scores it
    falls between (the same patients are classified alike, and it is not pinned to one
    patient's score).

    When the inner patients cannot place a threshold (one class only, or no aggregation
    separates them better than chance: AUC <= 0.5) the threshold is ``fallback`` (the
    pre-specified one) and the aggregation median. The third value records what was done:
    ``{"auc": {aggregation: AUC or nan}, "threshold_rule": "youden" | "fallback: <why>",
    "youden": {aggregation: its threshold, for each that separates them}}``."""
    from sklearn.metrics import roc_curve

    aucs = {how: _auc(labels, aggregate_slices(scores, how)) for how in SLICE_AGGREGATIONS}
    order = ("median", "mean", "min", "max")
    valid = [how for how in order if not np.isnan(aucs[how])]
    record: dict[str, Any] = {"auc": aucs}
    if not valid:
        record["threshold_rule"] = f"fallback {fallback:g}: the inner patients hold one class only"
        return "median", fallback, record
    record["youden"] = {}
    best = max(valid, key=lambda how: (aucs[how], -order.index(how)))
    if aucs[best] <= 0.5:
        record["threshold_rule"] = (f"fallback {fallback:g}: no slice aggregation separates the inner patients "
                                    f"(best AUC {aucs[best]:.3f})")
        return "median", fallback, record

    def youden(how: str) -> float:
        fpr, tpr, thresholds = roc_curve(labels, aggregate_slices(scores, how), drop_intermediate=False)
        index = int(np.argmax(tpr - fpr))  # > 0: the AUC above 0.5 puts J above 0 somewhere
        lower = thresholds[index + 1] if index + 1 < len(thresholds) else thresholds[index]
        return float(np.clip((thresholds[index] + lower) / 2 if np.isfinite(thresholds[index]) else 1.0, 0.0, 1.0))

    # every aggregation that separates the inner patients gets its own: the bundle may serve
    # another aggregation than this fold chose, and a threshold is only valid on its own scale
    record["youden"] = {how: youden(how) for how in valid if aucs[how] > 0.5}
    record["threshold_rule"] = "youden"
    return best, record["youden"][best], record


def recompute_batchnorm_statistics(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """BatchNorm running statistics recomputed as plain averages over ``x`` (the training
    images, not augmented), instead of the moving average of the last training batches
    ("precise BN"): what the evaluated network normalises with is then the training data's."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            model(x[i:i + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


class _RandomState:
    """The global RNG state one fold's dropout draws from, swapped in around each of its steps,
    so folds stepped in turns draw exactly what they would alone."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer_cpu = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            torch.set_rng_state(outer_cpu)
            if outer_cuda is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer_cuda, self.device)


class FoldTrainer:
    """One fold's model, data and optimiser, trained step by step: alone (:func:`train_fold`)
    or in turns with the other folds (:func:`train_folds_together`). Train on ``fit_index``
    patients; after every epoch score ``select_index`` patients and keep the best epoch
    (paper mode: ``select_index`` is the test fold itself; nested mode: an inner split of the
    training patients). ``inputs [N, S, C, H, W]`` on ``device``. No host synchronisation
    per step: batch indices go to the device once per epoch, losses stay there until the
    epoch ends."""

    def __init__(self, fold: int, inputs: torch.Tensor, labels: np.ndarray, fit_index: np.ndarray,
                 select_index: np.ndarray, test_index: np.ndarray, settings: TrainSettings, seed: int,
                 device: torch.device, progress: bool = True, position: int = 1, checkpoint: Path | None = None) -> None:
        self.started = time.perf_counter()
        self.fold, self.settings, self.device = fold, settings, device
        self.inputs, self.labels = inputs, labels
        self.select_index, self.test_index = np.asarray(select_index), np.asarray(test_index)
        self.network = build_model(settings, seed).to(device)
        self.random = _RandomState(device)  # right after initialisation: what the first step draws from
        self.model = distributed.wrap(self.network)  # DDP under torchrun; the network itself otherwise
        s = inputs.shape[1]
        self.x_fit = inputs[torch.as_tensor(fit_index, device=device)].reshape(-1, *inputs.shape[2:])
        self.y_fit = torch.as_tensor(np.repeat(labels[fit_index], s), device=device)
        self.y_fit_host = self.y_fit.cpu()
        self.x_select = inputs[torch.as_tensor(self.select_index, device=device)]
        self.generator = torch.Generator().manual_seed(seed)
        # each rank augments its own share of the batch differently (rank 0 alone: seed + 1)
        self.device_generator = torch.Generator(device=device).manual_seed(seed + 1 + 7919 * distributed.rank())
        self.optimizer = make_optimizer(self.network, settings)
        self.steps = steps_per_epoch(self.x_fit.shape[0], settings.batch_size)
        self.scheduler = make_scheduler(self.optimizer, settings, self.steps)
        self.criterion = loss_fn(settings.loss)
        self.epoch = 0
        self.best_value, self.best_epoch = -float("inf"), 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.no_eligible_epoch = False
        self.history: list[dict[str, float]] = []
        self._batches = torch.empty(0)
        self._loss = torch.zeros((), device=device)
        self.bar = tqdm(total=settings.epochs, desc=f"fold {fold + 1}", unit="epoch", leave=False, position=position,
                        disable=not progress)
        #: where this fold's state is saved after every epoch, and read back from when it exists
        #: (``train --resume``): the network, optimiser, schedule, every generator and RNG state,
        #: the kept epoch and the history, so the rest of the run is the uninterrupted one's
        self.checkpoint = checkpoint
        if checkpoint is not None and checkpoint.is_file():
            self._restore(torch.load(checkpoint, map_location=device, weights_only=True))

    def _state(self) -> dict[str, Any]:
        return {"fold": self.fold, "epoch": self.epoch, "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(), "device_generator": self.device_generator.get_state(),
                "rng_cpu": self.random.cpu, "rng_cuda": self.random.cuda, "best_value": self.best_value,
                "best_epoch": self.best_epoch, "best_state": self.best_state, "no_eligible_epoch": self.no_eligible_epoch,
                "history": self.history}

    def _restore(self, state: dict[str, Any]) -> None:
        if state["fold"] != self.fold:
            raise RuntimeError(f"checkpoint {self.checkpoint} is of fold {state['fold']}, not {self.fold}")
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        self.device_generator.set_state(state["device_generator"].cpu() if self.device.type == "cpu"
                                        else state["device_generator"])
        self.random.cpu = state["rng_cpu"].cpu()
        if state["rng_cuda"] is not None:
            self.random.cuda = state["rng_cuda"].cpu()
        self.epoch, self.best_value, self.best_epoch = state["epoch"], state["best_value"], state["best_epoch"]
        self.best_state, self.no_eligible_epoch, self.history = state["best_state"], state["no_eligible_epoch"], state["history"]
        self.bar.update(self.epoch)
        log.info("fold %d: resumed after epoch %d (%s)", self.fold + 1, self.epoch, self.checkpoint)

    def save_checkpoint(self) -> None:
        """This fold's state after its last epoch, written whole (a temporary file renamed)."""
        assert self.checkpoint is not None
        partial = self.checkpoint.with_name(self.checkpoint.name + ".partial")
        torch.save(self._state(), partial)
        os.replace(partial, self.checkpoint)

    def begin_epoch(self) -> None:
        self.epoch += 1
        self.model.train()
        batches = [distributed.shard(b) for b in epoch_batches(self.y_fit_host, self.settings, self.generator)]
        self._batches = torch.stack(batches).to(self.device)  # [steps, batch]: one copy per epoch
        self._loss = torch.zeros((), device=self.device)

    def step(self, i: int) -> None:
        """Batch ``i`` of this epoch: augment, mixup, forward, backward, optimiser, schedule."""
        with self.random.active():
            batch = self._batches[i]
            xb = augment_batch(self.x_fit[batch], self.settings, self.device_generator)
            y = self.y_fit[batch]
            yb = torch.stack((1 - y, y), dim=1).to(xb.dtype)  # one-hot of 0/1 labels (F.one_hot checks its range: a sync)
            if self.settings.mixup:
                xb, yb = mixup_batch(xb, yb, self.settings.mixup_alpha, self.device_generator)
            loss = self.criterion(self.model(xb), yb)
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            self.optimizer.step()
            self.scheduler.step()
            self._loss += loss.detach()  # no host sync per step

    @property
    def metric(self) -> str:
        """What picks the kept epoch: fixed selection keeps the last one whatever the metric."""
        return "last" if self.settings.selection == "fixed" else self.settings.selection_metric

    def end_epoch(self) -> None:
        """Score the selection patients; keep this epoch if it is the best so far."""
        settings = self.settings
        metric = self.metric
        loss = float(self._loss) / self.steps
        if settings.batchnorm_statistics == "recomputed" and (metric != "last" or self.epoch == settings.epochs):
            with self.random.active():
                recompute_batchnorm_statistics(self.network, self.x_fit, settings.eval_batch_size)
        value, eligible = 0.0, True
        if metric != "last" and len(self.select_index):
            scores = patient_scores(self.network, self.x_select, settings.eval_batch_size)
            value, eligible = _selection_value(metric, self.labels[self.select_index], scores)
        self.history.append({"epoch": self.epoch, "loss": round(loss, 6),
                             **({metric: round(value, 6), "eligible": eligible} if metric != "last" else {})})
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", **({metric[:3]: f"{value:.3f}"} if metric != "last" else {}))
        last = self.epoch == settings.epochs
        if (metric != "last" and keeps_epoch(value, eligible, self.best_value)) or (metric == "last" and last):
            self.best_value, self.best_epoch = value, self.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        elif last and self.best_state is None:  # no epoch was eligible: the last one is kept, and the record says so
            self.best_epoch, self.no_eligible_epoch = self.epoch, True
            self.best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        if self.checkpoint is not None:
            self.save_checkpoint()

    def finish(self) -> FoldResult:
        """The kept epoch's model, its scores on the test patients and the selection record."""
        settings = self.settings
        self.bar.close()
        assert self.best_state is not None
        network = self.network
        network.load_state_dict(self.best_state)
        test_scores = patient_scores(network, self.inputs[torch.as_tensor(self.test_index, device=self.device)],
                                     settings.eval_batch_size)
        selection: dict[str, Any] = {"epoch": self.best_epoch, "metric": self.metric,
                                     "value": None if self.metric == "last" or self.no_eligible_epoch else self.best_value,
                                     "patients": int(len(self.select_index)),
                                     "epoch_rule": epoch_rule_text(self.metric, self.settings.selection,
                                                                   self.no_eligible_epoch)}
        if settings.selection == "nested":
            select_scores = patient_scores(network, self.x_select, settings.eval_batch_size)
            how, threshold, record = choose_aggregation_and_threshold(self.labels[self.select_index], select_scores,
                                                                      settings.threshold)
            selection["inner_auc"] = {k: (None if np.isnan(v) else round(v, 6)) for k, v in record["auc"].items()}
            selection["threshold_rule"] = record["threshold_rule"]
            selection["youden"] = record["youden"]
        else:
            how, threshold = "median", settings.threshold
            selection["threshold_rule"] = f"pre-specified {settings.threshold:g}"
        state = {k: v.detach().cpu().clone() for k, v in self.best_state.items()}
        return FoldResult(self.fold, state, self.best_epoch, self.history, self.test_index, test_scores, how, threshold,
                          selection, train_images=int(self.x_fit.shape[0]) * settings.epochs,
                          seconds=time.perf_counter() - self.started)


def train_fold(fold: int, inputs: torch.Tensor, labels: np.ndarray, fit_index: np.ndarray, select_index: np.ndarray,
               test_index: np.ndarray, settings: TrainSettings, seed: int, device: torch.device, progress: bool = True,
               position: int = 1, checkpoint: Path | None = None) -> FoldResult:
    """One fold on its own: every epoch's steps (from its checkpoint's), then its selection (see
    :class:`FoldTrainer`)."""
    trainer = FoldTrainer(fold, inputs, labels, fit_index, select_index, test_index, settings, seed, device,
                          progress, position, checkpoint)
    for _ in range(settings.epochs - trainer.epoch):
        trainer.begin_epoch()
        for i in range(trainer.steps):
            trainer.step(i)
        trainer.end_epoch()
    return trainer.finish()


def train_folds_together(trainers: list[FoldTrainer]) -> list[FoldResult]:
    """The folds trained in turns, step by step, each on its own CUDA stream on a GPU, so a
    small cohort's batches of K models overlap on the device instead of waiting one fold
    after another. Every fold draws from its own generators and RNG state, so the results
    are those of :func:`train_fold` on each (on the CPU bit for bit; a test checks it)."""
    if not trainers:
        return []
    device = trainers[0].device
    streams: list[Any] = [None] * len(trainers)
    if device.type == "cuda":
        streams = [torch.cuda.Stream(device) for _ in trainers]  # type: ignore[no-untyped-call]  # torch.cuda.Stream.__new__ is unannotated
        for stream in streams:
            stream.wait_stream(torch.cuda.current_stream(device))  # the inputs are ready

    def on(stream: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    epochs = trainers[0].settings.epochs
    while any(t.epoch < epochs for t in trainers):
        # a resumed run's folds may stand at different epochs: each goes on from its own
        behind = [(t, s) for t, s in zip(trainers, streams) if t.epoch < epochs]
        for trainer, stream in behind:
            with on(stream):
                trainer.begin_epoch()
        for i in range(max(t.steps for t, _ in behind)):
            for trainer, stream in behind:
                if i < trainer.steps:
                    with on(stream):
                        trainer.step(i)
        for trainer, stream in behind:
            with on(stream):
                trainer.end_epoch()
    results = []
    for trainer, stream in zip(trainers, streams):
        with on(stream):
            results.append(trainer.finish())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return results

"""Every value of the training recipe, in one frozen object a bundle records.

Two recipes, chosen by situation (issue 15):

- ``paper``: Haim et al. 2022, "DL analysis": ResNet-50 (fastai), F1 loss, initial learning
  rate 4e-2, batch 32, 40 epochs, rotation / zoom / contrast augmentation, mixup,
  oversampling, fivefold stratified patient-level cross-validation. What the paper leaves out
  is taken from fastai v2's defaults as ../shared/METHOD.md records them: with ImageNet
  weights fastai freezes the body, which is what the high learning rate is for. The default
  when ImageNet weights are given.
- ``scratch``: what learns from random initialisation (no ImageNet weights, as on every
  machine without the file): every layer trains, at a learning rate meant for that, with
  cross-entropy and the square's symmetries as augmentation. ``docs/examples/ablation.md``
  shows, one change at a time, why each paper value is replaced. The default otherwise.

``TrainSettings()`` is the scratch recipe; ``TrainSettings.from_mapping(values)`` (the CLI,
the ``[training]`` table of the node's TOML) picks the recipe by situation (``recipe = "auto"``, the
default: ``paper`` with ``imagenet_weights``, ``scratch`` without), then applies the given
values on top; every error is a ``pipeline.settings.SettingError`` naming
``training.<key>``. ``recipe_changes()`` says which values differ
from the recipe's, for the manifest and the report.

A frozen body with random weights cannot learn (only BatchNorm and the head would train on
features of random filters): it is refused unless ``allow_random_frozen_body``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.model.calibrate import CALIBRATION_METHODS
from pipeline.settings import SettingError, SettingTypeError, check_bool, check_choice, check_int, check_known, check_number
from pipeline.model.device import DEVICES

__all__ = ["TrainSettings", "LOSSES", "SELECTIONS", "SELECTION_METRICS", "DEVICES", "RECIPES", "RECIPE_VALUES",
           "AUGMENTATIONS", "HEADS"]

LOSSES = ("f1", "ce")
#: ``nested``: epoch, threshold and slice aggregation chosen on an inner split of the
#: training folds. ``fixed``: nothing is chosen on data: every training patient trains, the
#: last epoch is kept, median of slices, threshold ``threshold`` (pre-specified).
#: ``paper``: the epoch with the best accuracy on the test fold itself, threshold 0.5,
#: median (the paper's reading; optimistic).
SELECTIONS = ("nested", "fixed", "paper")
#: What picks the kept epoch: slice-level accuracy at 0.5 (the paper's), patient-level AUC
#: (median of slices), or simply the last epoch.
SELECTION_METRICS = ("accuracy", "auc", "last")
RECIPES = ("paper", "scratch")
#: ``fastai``: rotation, zoom, lighting (and ``flip_p``), fastai's ``aug_transforms``;
#: ``dihedral``: a random quarter turn and mirror per image; ``none``.
AUGMENTATIONS = ("fastai", "dihedral", "none")
#: ``fastai``: concat pooling, BatchNorm, dropout, two Linear layers; ``linear``:
#: torchvision's average pooling and one Linear layer.
HEADS = ("fastai", "linear")
#: What the evaluated network's BatchNorm layers normalise with: ``running`` (PyTorch's moving
#: average of the training batches) or ``recomputed`` (averages over the training images,
#: recomputed after the epoch, "precise BN").
BATCHNORM_STATISTICS = ("running", "recomputed")

#: The values that differ between the recipes (everything else is shared).
RECIPE_VALUES: dict[str, dict[str, Any]] = {
    "paper": {
        "freeze_body": True, "max_lr": 4e-2, "loss": "f1", "mixup": True, "oversample": True,
        "augmentation": "fastai", "head": "fastai", "selection": "nested", "selection_metric": "accuracy",
        "epochs": 40, "batch_size": 32,
    },
    "scratch": {
        "freeze_body": False, "max_lr": 1e-3, "loss": "ce", "mixup": False, "oversample": True,
        "augmentation": "dihedral", "head": "linear", "selection": "fixed", "selection_metric": "last",
        "epochs": 40, "batch_size": 32,
    },
}


@dataclass(frozen=True)
class TrainSettings:
    """The training recipe (the scratch recipe's values as defaults; ``RECIPE_VALUES``; METHOD.md
    for the fastai values both share).

    ``recipe``: which recipe the values were taken from (recorded; ``recipe_changes()`` lists
    what differs from it).

    Schedule and optimiser (fastai ``fit_one_cycle``): ``epochs`` 40, ``batch_size`` 32,
    ``max_lr`` 4e-2, ``pct_start`` 0.25, ``div_factor`` 25, ``final_div_factor`` 4000
    (final lr = max_lr / 1e5), momentum (Adam beta1) cycled ``max_momentum`` 0.95 ->
    ``base_momentum`` 0.85 -> 0.95; Adam ``beta2`` 0.99, ``eps`` 1e-5, decoupled
    ``weight_decay`` 0.01 (none on BatchNorm and bias parameters).

    Network: ``head`` (``HEADS``); ``freeze_body`` (fastai's default with pretrained weights:
    only the head and the body's BatchNorm layers train; refused with random weights unless
    ``allow_random_frozen_body``).

    Loss: ``loss`` "f1" (soft F1 on softmax probabilities, mean over the two classes) or
    "ce" (cross-entropy). ``mixup``: lambda ~ Beta(``mixup_alpha``, ``mixup_alpha``),
    lambda = max(lambda, 1 - lambda), partner a permutation of the batch.
    ``oversample``: draw training slices with weights 1 / count(class).

    Augmentation (batch level, on the device), ``augmentation``: ``dihedral`` (a random
    quarter turn and mirror per image) or ``fastai``: rotation U(+-``rotate_degrees``) and zoom
    U(1, ``zoom_max``) with probability ``affine_p``; contrast x U(1 - l, 1 / (1 - l)) and
    brightness + U(-l, l) z-units with ``l = lighting`` and probability ``lighting_p``;
    horizontal flip with ``flip_p`` (fastai default 0.5, not in the paper: 0 here).

    ``imagenet_weights``: a local torchvision ``resnet50-0676ba61.pth`` (none: trained from
    scratch, recorded).

    Evaluation: ``folds`` (5), ``seed``, ``repeats`` (the whole CV over seeds seed,
    seed+1, ...; the bundle keeps the first), ``selection`` / ``selection_metric``,
    ``inner_folds`` (nested mode holds out 1/inner_folds of the training patients; fewer
    when the training fold's smaller class has fewer patients), ``threshold`` (the
    pre-specified decision threshold of fixed and paper selection, and nested selection's
    fallback when its inner patients cannot place one; on the calibrated scale), ``bootstrap``
    resamples for the CIs. ``calibration``: the map fitted on the pooled out-of-fold patient
    scores and stored in the bundle (``logistic``, Platt scaling, the default; ``isotonic``
    for large cohorts; ``none``: the score is served uncalibrated, and says so).
    ``permutations``: shuffled-label trainings run beside the real one (same folds and
    seeds), for the permutation p-value of the real AUC (0: none).
    ``threads``: CPU threads for the run (0 = all cores); CPU results depend on it.
    ``folds_together``: train the K folds in turns, step by step (each on its own CUDA
    stream on a GPU, so a small cohort keeps the device busy); the results are those of
    training them one after another (off: one after another; always so under torchrun).
    ``deterministic``: torch's deterministic algorithms only (``torch.use_deterministic_algorithms``;
    cuDNN autotuning off): two runs of the same cohort, settings and threads give the same
    weights bit for bit on the CPU (tested), and a resumed run the weights of an uninterrupted one.
    """

    recipe: str = "scratch"
    epochs: int = 40
    folds: int = 5
    batch_size: int = 32
    max_lr: float = 1e-3
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 4000.0
    max_momentum: float = 0.95
    base_momentum: float = 0.85
    beta2: float = 0.99
    eps: float = 1e-5
    weight_decay: float = 0.01
    loss: str = "ce"
    mixup: bool = False
    mixup_alpha: float = 0.4
    oversample: bool = True
    rotate_degrees: float = 10.0
    zoom_max: float = 1.1
    affine_p: float = 0.75
    lighting: float = 0.2
    lighting_p: float = 0.75
    flip_p: float = 0.0
    augmentation: str = "dihedral"
    head: str = "linear"
    freeze_body: bool = False
    batchnorm_statistics: str = "running"
    allow_random_frozen_body: bool = False
    imagenet_weights: str | None = None
    selection: str = "fixed"
    selection_metric: str = "last"
    inner_folds: int = 4
    threshold: float = 0.5
    seed: int = 0
    repeats: int = 1
    shuffle_labels: bool = False
    device: str = "cpu"
    eval_batch_size: int = 256
    threads: int = 0
    bootstrap: int = 2000
    calibration: str = "logistic"
    permutations: int = 0
    folds_together: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        _choice("recipe", self.recipe, RECIPES)
        _int("epochs", self.epochs, 1)
        _int("folds", self.folds, 2)
        _int("batch_size", self.batch_size, 2)
        _num("max_lr", self.max_lr, 0.0, strict=True)
        _num("pct_start", self.pct_start, 0.0, strict=True, maximum=1.0)
        _num("div_factor", self.div_factor, 0.0, strict=True)
        _num("final_div_factor", self.final_div_factor, 0.0, strict=True)
        _num("max_momentum", self.max_momentum, 0.0, maximum=1.0)
        _num("base_momentum", self.base_momentum, 0.0, maximum=1.0)
        _num("beta2", self.beta2, 0.0, maximum=1.0)
        _num("eps", self.eps, 0.0, strict=True)
        _num("weight_decay", self.weight_decay, 0.0)
        _choice("loss", self.loss, LOSSES)
        _bool("mixup", self.mixup)
        _num("mixup_alpha", self.mixup_alpha, 0.0, strict=True)
        _bool("oversample", self.oversample)
        _num("rotate_degrees", self.rotate_degrees, 0.0, maximum=180.0)
        _num("zoom_max", self.zoom_max, 1.0)
        _num("affine_p", self.affine_p, 0.0, maximum=1.0)
        _num("lighting", self.lighting, 0.0, maximum=0.9)
        _num("lighting_p", self.lighting_p, 0.0, maximum=1.0)
        _num("flip_p", self.flip_p, 0.0, maximum=1.0)
        _choice("augmentation", self.augmentation, AUGMENTATIONS)
        _choice("head", self.head, HEADS)
        _bool("freeze_body", self.freeze_body)
        _choice("batchnorm_statistics", self.batchnorm_statistics, BATCHNORM_STATISTICS)
        _bool("allow_random_frozen_body", self.allow_random_frozen_body)
        if self.imagenet_weights is not None and (not isinstance(self.imagenet_weights, str) or not self.imagenet_weights):
            raise SettingTypeError(f"training.imagenet_weights: must be a file path or absent, got {self.imagenet_weights!r}")
        _choice("selection", self.selection, SELECTIONS)
        _choice("selection_metric", self.selection_metric, SELECTION_METRICS)
        _int("inner_folds", self.inner_folds, 2)
        _num("threshold", self.threshold, 0.0, maximum=1.0)
        _int("seed", self.seed, 0)
        _int("repeats", self.repeats, 1)
        _bool("shuffle_labels", self.shuffle_labels)
        _choice("device", self.device, DEVICES)
        _int("eval_batch_size", self.eval_batch_size, 1)
        _int("threads", self.threads, 0)
        _int("bootstrap", self.bootstrap, 0)
        _choice("calibration", self.calibration, CALIBRATION_METHODS)
        _int("permutations", self.permutations, 0)
        _bool("folds_together", self.folds_together)
        _bool("deterministic", self.deterministic)
        if self.freeze_body and self.imagenet_weights is None and not self.allow_random_frozen_body:
            raise SettingError("training.freeze_body: needs ImageNet weights (training.imagenet_weights): a frozen body "
                               "of random filters does not learn (docs/examples/ablation.md); train every layer (full "
                               "fine-tuning, the scratch recipe) or set training.allow_random_frozen_body to force it")

    @property
    def pretrained(self) -> bool:
        return self.imagenet_weights is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recipe_changes(self) -> dict[str, Any]:
        """The values that differ from ``recipe``'s own (what a user changed), by name."""
        base = TrainSettings.for_recipe(self.recipe, imagenet_weights=self.imagenet_weights,
                                        allow_random_frozen_body=True)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("imagenet_weights", "allow_random_frozen_body") and getattr(self, f.name) != getattr(base, f.name)}

    @classmethod
    def for_recipe(cls, recipe: str = "auto", **values: Any) -> TrainSettings:
        """The recipe's values (``auto``: ``paper`` with ``imagenet_weights``, ``scratch``
        without) with ``values`` on top."""
        if recipe not in (*RECIPES, "auto"):
            raise SettingError(f"training.recipe: must be one of auto, {', '.join(RECIPES)}, got {recipe!r}")
        if recipe == "auto":
            recipe = "paper" if values.get("imagenet_weights") is not None else "scratch"
        return cls(**{**RECIPE_VALUES[recipe], "recipe": recipe, **values})

    def replace(self, **changes: Any) -> TrainSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: TrainSettings | None = None) -> TrainSettings:
        """Settings from a dict (a ``[training]`` TOML table): unknown keys are an error that
        names them; missing keys keep ``base``'s values, or without a base the values of the
        recipe ``values["recipe"]`` names (``auto``, the default, picks it by situation)."""
        check_known("training", values, sorted(f.name for f in dataclasses.fields(cls)))
        data = dict(values)
        if isinstance(data.get("imagenet_weights"), Path):
            data["imagenet_weights"] = str(data["imagenet_weights"])
        for key, value in list(data.items()):
            # TOML writes 40 for a float field; accept ints where a float is expected.
            default = getattr(base, key) if base is not None else _DEFAULTS.get(key)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                data[key] = float(value)
        if base is not None:
            return dataclasses.replace(base, **data)
        return cls.for_recipe(data.pop("recipe", "auto"), **data)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainSettings)}


def _key(name: str) -> str:
    return f"training.{name}"


def _bool(name: str, value: Any) -> None:
    check_bool(_key(name), value)


def _int(name: str, value: Any, minimum: int) -> None:
    check_int(_key(name), value, minimum)


def _num(name: str, value: Any, minimum: float, *, strict: bool = False, maximum: float | None = None) -> None:
    check_number(_key(name), value, minimum, maximum, strict=strict)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    check_choice(_key(name), value, choices)

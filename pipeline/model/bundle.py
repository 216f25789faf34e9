"""The model bundle: one folder, ``manifest.json`` plus one weights file per fold.

DESIGN.md "Model bundle". Training writes a :class:`Manifest` (``training.export``), the
node reads it (``pipeline.model.infer.FoldEnsemble``): one type, so the two cannot drift. The
manifest records everything the node needs to build the same input and the same answer:
the preprocessing parameters (:class:`pipeline.prep.params.PreprocessParams`), the input shape,
the network, the input normalisation, the slice and fold aggregation, the decision
threshold, and each fold file with its sha256. Weights are plain ``state_dict`` tensors
saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``: loading never
unpickles code.

This module does not import torch: the node checks a bundle (``check_runnable``,
``verify_files``) before anything heavy is loaded.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.uids import sha256_of
from pipeline.model.aggregate import FOLD_SCALES, check_fold_aggregation, check_slice_aggregation
from pipeline.model.calibrate import Calibration
from pipeline.prep.params import PreprocessParams

__all__ = [
    "MANIFEST_FILE",
    "FORMAT_VERSION",
    "READABLE_FORMATS",
    "THRESHOLD_RANGE",
    "ARCHITECTURES",
    "NORMALIZATIONS",
    "BundleError",
    "FoldFile",
    "Manifest",
    "new_device_uid",
    "sha256_of",
]

MANIFEST_FILE = "manifest.json"
#: Format 2 added ``calibration``, ``threshold_rule`` and ``fold_scale`` (the threshold is on
#: the calibrated scale); a format 1 bundle is read as uncalibrated, folds combined by probability.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
#: Decision thresholds ``models activate`` accepts without --force.
THRESHOLD_RANGE = (0.05, 0.95)
#: Networks the node can build (``pipeline.model.network``).
ARCHITECTURES = ("resnet50", "resnet50-linear")  # pipeline.model.network.HEADS: fastai head, linear head
#: Input normalisation inside the network: ImageNet mean/std (pretrained body) or none.
NORMALIZATIONS = ("imagenet", "none")


class BundleError(ValueError):
    """A bundle the node cannot use; the message says which file or field and why."""


def new_device_uid() -> str:
    """A fresh UID (2.25 form) for the algorithm as a DICOM device: one per bundle."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True)
class FoldFile:
    """One fold model's weights: ``file`` relative to the bundle folder."""

    fold: int
    file: str
    sha256: str

    def __post_init__(self) -> None:
        if isinstance(self.fold, bool) or not isinstance(self.fold, int) or self.fold < 0:
            raise BundleError(f'fold file: "fold" must be a non-negative int, got {self.fold!r}')
        if not isinstance(self.file, str) or not self.file or "/" in self.file or "\\" in self.file or self.file.startswith("."):
            raise BundleError(f'fold {self.fold}: "file" must be a plain file name in the bundle folder, got {self.file!r}')
        if not isinstance(self.sha256, str) or len(self.sha256) != 64:
            raise BundleError(f'fold {self.fold}: "sha256" must be 64 hex digits, got {self.sha256!r}')


@dataclass(frozen=True)
class Manifest:
    """What a bundle is and how to run it (DESIGN.md "Model bundle").

    - ``name``, ``version``: shown to admins and written into the SR as the algorithm's
      name and version; ``device_uid``: the algorithm's DICOM device UID (one per bundle).
    - ``preprocessing``: the exact :class:`PreprocessParams` the folds were trained on.
    - ``input_shape``: ``(slices, channels, size)`` of one study's input, e.g. (5, 3, 96).
    - ``architecture``, ``normalization``, ``num_classes``, ``positive_index``: the network.
    - ``slice_aggregation`` (median, the paper's best), ``fold_aggregation`` (mean),
      ``fold_scale`` (where the folds are combined: probability, or logit), ``calibration``
      (:class:`pipeline.model.calibrate.Calibration` as a dict; empty: none) and
      ``threshold`` on the calibrated scale, chosen by ``threshold_rule``: how scores
      become a probability and a status (:func:`pipeline.model.aggregate.served_probability`).
    - ``folds``: the weights files; ``metrics``, ``training``: the cross-validation results
      and what the bundle was trained on (data summary, splits, selection mode, whether
      pretrained weights were used, code version), kept as written by training.
    """

    name: str
    version: str
    device_uid: str
    preprocessing: PreprocessParams
    input_shape: tuple[int, int, int]
    folds: tuple[FoldFile, ...]
    architecture: str = "resnet50"
    normalization: str = "none"
    num_classes: int = 2
    positive_index: int = 1
    slice_aggregation: str = "median"
    fold_aggregation: str = "mean"
    threshold: float = 0.5
    threshold_rule: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    fold_scale: str = "probability"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("name", "version", "device_uid"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise BundleError(f'manifest "{key}" must be a non-empty string, got {value!r}')
        if not isinstance(self.preprocessing, PreprocessParams):
            raise BundleError(f'manifest "preprocessing" must be PreprocessParams, got {type(self.preprocessing).__name__}')
        shape = tuple(self.input_shape)
        if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise BundleError(f'manifest "input_shape" must be three positive ints (slices, channels, size), got {self.input_shape!r}')
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "folds", tuple(self.folds))
        if not self.folds:
            raise BundleError('manifest "folds" must list at least one fold file')
        if len({f.file for f in self.folds}) != len(self.folds):
            raise BundleError('manifest "folds": two folds name the same file')
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) or not (
            math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0
        ):
            raise BundleError(f'manifest "threshold" must be a number in [0, 1], got {self.threshold!r}')
        object.__setattr__(self, "threshold", float(self.threshold))
        try:
            self.calibration_map
        except (TypeError, ValueError) as exc:
            raise BundleError(f'manifest "calibration": {exc}') from None

    @property
    def calibration_map(self) -> Calibration:
        """The bundle's calibration (``none`` for a bundle written without one)."""
        return Calibration.from_dict(self.calibration)

    # --- what the bundle is, in words -------------------------------------------------------

    @property
    def recipe(self) -> str:
        """The training recipe recorded by training ("" for a bundle written without one)."""
        return str(self.training.get("recipe") or "")

    @property
    def pretrained(self) -> bool | None:
        value = self.training.get("pretrained")
        return bool(value) if value is not None else None

    def parameter_lines(self) -> list[str]:
        """What a reader of a result needs to know about the bundle that made it, one line
        each (the SR's algorithm parameters, TID 4019): the recipe, ImageNet weights, N4, the
        crop size, the cross-validated AUC and the calibration."""
        lines = []
        if self.recipe:
            lines.append(f"training recipe: {self.recipe}")
        if self.pretrained is not None:
            lines.append(f"ImageNet weights: {'yes' if self.pretrained else 'no (trained from scratch)'}")
        p = self.preprocessing
        lines.append(f"bias field correction (N4): {'on' if p.bias_correction else 'off'}")
        lines.append(f"crop size: {p.output_size} px, slices: {p.slice_count}")
        auc, ci = self.metrics.get("pooled_patient_auc"), self.metrics.get("pooled_patient_auc_ci95")
        if isinstance(auc, (int, float)):
            interval = f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci and all(isinstance(v, (int, float)) for v in ci) else ""
            lines.append(f"cross-validated AUC: {auc:.2f}{interval}, out of fold, internal validation only")
        else:
            lines.append("cross-validated AUC: not recorded")
        lines.append(f"calibration: {self.calibration_map.describe()}")
        if self.training.get("data", {}).get("labels_shuffled"):
            lines.append("SHUFFLED-LABEL CONTROL: trained on permuted labels")
        return lines

    def activation_concerns(self) -> list[str]:
        """Why this bundle should not answer for patients, one line each (``models activate``
        refuses it unless forced): a shuffled-label control, a frozen body of random filters,
        a decision threshold outside ``THRESHOLD_RANGE``, a cross-validated AUC whose 95 % CI
        does not exclude chance (or none recorded)."""
        out = []
        data = self.training.get("data")
        if isinstance(data, dict) and data.get("labels_shuffled"):
            out.append("trained on shuffled labels: a negative control, not a model")
        settings = self.training.get("settings")
        if isinstance(settings, dict) and settings.get("freeze_body") and not self.pretrained:
            out.append("a frozen body of random filters (no ImageNet weights): only BatchNorm and the head trained")
        low, high = THRESHOLD_RANGE
        if not low <= self.threshold <= high:
            scale = "calibrated probability" if self.calibration_map.applied else "uncalibrated score"
            out.append(f"decision threshold {self.threshold:.3g} on the {scale} is outside [{low:g}, {high:g}]: "
                       "nearly every study would get one answer")
        auc, ci = self.metrics.get("pooled_patient_auc"), self.metrics.get("pooled_patient_auc_ci95")
        if not isinstance(auc, (int, float)):
            out.append("no cross-validated AUC recorded: its performance was never measured")
        elif not ci or not isinstance(ci[0], (int, float)):
            out.append(f"cross-validated AUC {auc:.2f} has no confidence interval recorded")
        elif ci[0] < 0.5:
            out.append(f"cross-validated AUC {auc:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f}): the interval's lower bound is "
                       "below 0.5, not shown to beat chance")
        return out

    # --- what the node can run ------------------------------------------------------------

    def check_runnable(self) -> None:
        """Raise BundleError naming the first thing this node version cannot run."""
        if self.format_version not in READABLE_FORMATS:
            raise BundleError(f"bundle format {self.format_version} is not supported (this node reads formats "
                              f"{', '.join(map(str, READABLE_FORMATS))})")
        if self.architecture not in ARCHITECTURES:
            raise BundleError(f"architecture {self.architecture!r} is not supported (known: {', '.join(ARCHITECTURES)})")
        if self.normalization not in NORMALIZATIONS:
            raise BundleError(f"normalization {self.normalization!r} is not supported (known: {', '.join(NORMALIZATIONS)})")
        if self.num_classes != 2 or self.positive_index not in (0, 1):
            raise BundleError(f"a two-class head is required, got num_classes={self.num_classes}, positive_index={self.positive_index}")
        params = self.preprocessing
        expected = (params.slice_count, params.channels, params.output_size)
        if self.input_shape != expected:
            raise BundleError(
                f"input_shape {list(self.input_shape)} does not match the preprocessing parameters, "
                f"which give {list(expected)} (slices = 2 * slice_offset + 1, channels, output_size)"
            )
        if self.normalization == "imagenet" and params.channels != 3:
            raise BundleError(f"ImageNet normalisation needs 3 channels, the preprocessing gives {params.channels}")
        try:
            check_slice_aggregation(self.slice_aggregation)
            check_fold_aggregation(self.fold_aggregation)
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        if self.fold_scale not in FOLD_SCALES:
            raise BundleError(f'fold_scale {self.fold_scale!r} is not one of {", ".join(FOLD_SCALES)}')

    def verify_files(self, folder: Path) -> None:
        """Raise BundleError if a fold file is missing or its sha256 differs from the manifest."""
        folder = Path(folder)
        for fold in self.folds:
            path = folder / fold.file
            if not path.is_file():
                raise BundleError(f"fold {fold.fold}: weights file {path} is missing")
            actual = sha256_of(path)
            if actual != fold.sha256:
                raise BundleError(f"fold {fold.fold}: {fold.file} has sha256 {actual[:12]}..., the manifest says {fold.sha256[:12]}...")

    # --- JSON -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["preprocessing"] = self.preprocessing.to_dict()
        out["input_shape"] = list(self.input_shape)
        return out

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Manifest:
        if not isinstance(values, dict):
            raise BundleError("manifest must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BundleError(f"manifest has unknown field(s): {', '.join(unknown)}")
        missing = sorted(k for k in ("name", "version", "device_uid", "preprocessing", "input_shape", "folds") if k not in values)
        if missing:
            raise BundleError(f"manifest lacks field(s): {', '.join(missing)}")
        data = dict(values)
        try:
            data["preprocessing"] = PreprocessParams.from_dict(data["preprocessing"])
        except (TypeError, ValueError) as exc:
            raise BundleError(f"manifest preprocessing: {exc}") from None
        try:
            data["folds"] = tuple(FoldFile(**f) for f in data["folds"])
        except TypeError as exc:
            raise BundleError(f"manifest folds: {exc}") from None
        data["input_shape"] = tuple(data["input_shape"])
        return cls(**data)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise BundleError(f"{folder} is not a model bundle: {MANIFEST_FILE} is missing")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_json(values)

    @classmethod
    def load_checked(cls, folder: Path) -> Manifest:
        """Read, check the node can run it, and verify every fold file's sha256."""
        manifest = cls.read(folder)
        manifest.check_runnable()
        manifest.verify_files(folder)
        return manifest

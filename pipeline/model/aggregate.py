"""From per-slice model scores to one patient's probability and status.

Haim et al. 2022, "DL analysis" and Fig. 1: the model scores the mid-lesion slice and its
+-2 neighbours; the patient score is the median (the paper's best row of Table 2), min,
max or mean of the slice scores. The node averages the K fold models' patient scores
(``fold_aggregation="mean"``) into the probability it reports; a study is positive when
that probability is at least the bundle's decision threshold (0.5 in the paper).

The rule the node serves (:func:`served_probability`, issue 27): for each fold model the
slice scores are aggregated into that model's patient score, the folds' scores are combined
(``fold_aggregation`` on the bundle's ``fold_scale``: the mean of their probabilities, or of
their logits), and the bundle's calibration (:mod:`pipeline.model.calibrate`, fitted on such
combined scores) turns the result into the probability; the status compares that probability
with the threshold, which is on the calibrated scale. Training's out-of-fold
figures for the served rule and ``egfr-node evaluate`` call the same function.

Pure functions on numpy arrays: the node's inference and training's evaluation call the
same code, so the numbers in a bundle's report are the numbers the node computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.model.calibrate import Calibration, logit

__all__ = [
    "SLICE_AGGREGATIONS",
    "FOLD_AGGREGATIONS",
    "aggregate_slices",
    "aggregate_folds",
    "patient_probability",
    "ServedScore",
    "served_probability",
    "combine_folds",
    "FOLD_SCALES",
    "is_positive",
    "check_slice_aggregation",
    "check_fold_aggregation",
]

#: The rows of the paper's Table 2, in its order.
SLICE_AGGREGATIONS: tuple[str, ...] = ("min", "max", "median", "mean")
FOLD_AGGREGATIONS: tuple[str, ...] = ("mean", "median")
#: Where the fold models' patient scores are combined.
FOLD_SCALES: tuple[str, ...] = ("probability", "logit")

_REDUCE: dict[str, Callable[..., Any]] = {"min": np.min, "max": np.max, "median": np.median, "mean": np.mean}


def check_slice_aggregation(name: str) -> str:
    if name not in SLICE_AGGREGATIONS:
        raise ValueError(f'Argument "slice_aggregation" must be one of {", ".join(SLICE_AGGREGATIONS)}; got {name!r}')
    return name


def check_fold_aggregation(name: str) -> str:
    if name not in FOLD_AGGREGATIONS:
        raise ValueError(f'Argument "fold_aggregation" must be one of {", ".join(FOLD_AGGREGATIONS)}; got {name!r}')
    return name


def aggregate_slices(scores: np.ndarray | Sequence[float], how: str = "median") -> np.ndarray:
    """Slice scores ``[..., S]`` (probability of the positive class per slice) -> ``[...]``."""
    check_slice_aggregation(how)
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(f'Argument "scores" must have at least one slice on its last axis, got shape {array.shape}')
    reduced: np.ndarray = _REDUCE[how](array, axis=-1)
    return reduced


def aggregate_folds(patient_scores: np.ndarray | Sequence[float], how: str = "mean") -> float:
    """Per-fold patient scores ``[K]`` -> one probability."""
    check_fold_aggregation(how)
    array = np.asarray(patient_scores, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f'Argument "patient_scores" must be a non-empty 1-D array, got shape {array.shape}')
    return float(_REDUCE[how](array))


def patient_probability(scores: np.ndarray, slice_aggregation: str = "median", fold_aggregation: str = "mean") -> float:
    """Scores ``[K, S]`` of K fold models on S slices -> the patient's probability."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f'Argument "scores" must be [folds, slices], got shape {array.shape}')
    return aggregate_folds(aggregate_slices(array, slice_aggregation), fold_aggregation)


@dataclass(frozen=True)
class ServedScore:
    """One patient's answer under the served rule: ``probability`` (calibrated, the number the
    node reports), ``raw`` (the folds' uncalibrated patient scores combined the same way) and
    ``fold_probabilities`` ``[K]`` (each fold model's calibrated probability: their spread)."""

    probability: float
    raw: float
    fold_probabilities: np.ndarray


def combine_folds(patient_scores: np.ndarray | Sequence[float], how: str = "mean", scale: str = "probability") -> float:
    """The fold models' patient scores ``[K]`` combined by ``how`` on ``scale`` (``logit``: the
    combined logit, returned as a probability)."""
    if scale not in FOLD_SCALES:
        raise ValueError(f'Argument "scale" must be one of {", ".join(FOLD_SCALES)}; got {scale!r}')
    if scale == "probability":
        return aggregate_folds(patient_scores, how)
    z = aggregate_folds(logit(patient_scores), how)
    return float(1.0 / (1.0 + np.exp(-z)))


def served_probability(scores: np.ndarray, slice_aggregation: str = "median", fold_aggregation: str = "mean",
                       calibration: Calibration | None = None, fold_scale: str = "probability") -> ServedScore:
    """Scores ``[K, S]`` -> slices aggregated per fold -> folds combined on ``fold_scale`` ->
    calibrated. ``fold_probabilities``: each fold model's score through the calibration alone."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f'Argument "scores" must be [folds, slices], got shape {array.shape}')
    calibration = calibration or Calibration()
    per_fold = aggregate_slices(array, slice_aggregation)
    raw = combine_folds(per_fold, fold_aggregation, fold_scale)
    return ServedScore(probability=float(calibration.apply(raw)), raw=raw, fold_probabilities=calibration.apply(per_fold))


def is_positive(probability: float, threshold: float) -> bool:
    """Positive when ``probability >= threshold`` (the paper's "network result threshold 0.5")."""
    return bool(probability >= threshold)

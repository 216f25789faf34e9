"""Cross-validation metrics: the paper's Table 2 and what it lacks.

Haim et al. 2022, "DL analysis" and Table 2: per fold, accuracy, precision, recall, F1 and
ROC AUC, with the patient score aggregated from the slice scores by min, max, median and
mean (:func:`pipeline.model.aggregate.aggregate_slices`, the node's own code). Added here
(../shared/METHOD.md "Evaluation"): slice-level metrics, pooled out-of-fold patient AUC with
a stratified patient-level bootstrap 95 % CI, sensitivity and specificity with Wilson
intervals, calibration, and the spread over repeated CV. The statistics themselves are
:mod:`pipeline.model.performance`'s: one implementation for training, ``evaluate`` and the
console.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from pipeline.model.aggregate import SLICE_AGGREGATIONS, aggregate_slices
from pipeline.model.performance import auc, auc_ci, calibration_figures, proportion_ci

__all__ = [
    "binary_metrics",
    "fold_table",
    "pooled_metrics",
]


def binary_metrics(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                   threshold: float | Sequence[float] | np.ndarray = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity, F1 at ``threshold`` (score >=
    threshold is positive, as :func:`pipeline.model.aggregate.is_positive`), and ROC AUC."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    predicted = (s >= np.asarray(threshold, dtype=np.float64)).astype(int)
    negatives = int((y == 0).sum())
    tn = int(((predicted == 0) & (y == 0)).sum())
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "accuracy": float(accuracy_score(y, predicted)) if y.size else float("nan"),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)) if y.sum() else float("nan"),
        "specificity": tn / negatives if negatives else float("nan"),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "auc": auc(y, s),
    }
def fold_table(folds: Sequence[dict[str, Any]], thresholds: Sequence[float] | None = None,
               by_aggregation: Sequence[dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Per fold: slice-level metrics and, for every slice aggregation, patient-level metrics
    (the paper's Table 2 rows). Each item of ``folds``: ``{"fold", "labels" [n], "scores" [n, S]}``.
    ``by_aggregation``: each fold's threshold per aggregation (nested selection places one on
    each aggregation's scale), else ``thresholds`` for all."""
    rows = []
    for index, fold in enumerate(folds):
        y = np.asarray(fold["labels"], dtype=int)
        scores = np.asarray(fold["scores"], dtype=np.float64)
        threshold = 0.5 if thresholds is None else thresholds[index]
        row: dict[str, Any] = {
            "fold": int(fold["fold"]),
            "slice": binary_metrics(np.repeat(y, scores.shape[1]), scores.reshape(-1), threshold),
            "patient": {how: binary_metrics(y, aggregate_slices(scores, how),
                                            by_aggregation[index][how] if by_aggregation else threshold)
                        for how in SLICE_AGGREGATIONS},
        }
        rows.append(row)
    return rows


def pooled_metrics(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, resamples: int = 2000, seed: int = 0,
                   by_aggregation: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Pooled out-of-fold metrics over all patients: ``scores [N, S]`` (each patient scored
    by the fold model that did not see it), ``thresholds [N]`` (that fold's threshold), or per
    aggregation ``by_aggregation[how] [N]`` (that fold's threshold on that aggregation's scale)."""
    y = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"slice": binary_metrics(np.repeat(y, scores.shape[1]), scores.reshape(-1), np.repeat(thresholds, scores.shape[1]))}
    for how in SLICE_AGGREGATIONS:
        patient = aggregate_slices(scores, how)
        cut = by_aggregation[how] if by_aggregation else thresholds
        metrics: dict[str, Any] = binary_metrics(y, patient, cut)
        predicted = patient >= cut
        tp, fn = int((predicted & (y == 1)).sum()), int((~predicted & (y == 1)).sum())
        tn, fp = int((~predicted & (y == 0)).sum()), int((predicted & (y == 0)).sum())
        metrics["auc_ci95"] = list(auc_ci(y, patient, resamples, seed))
        metrics["sensitivity_ci95"] = list(proportion_ci(tp, tp + fn))
        metrics["specificity_ci95"] = list(proportion_ci(tn, tn + fp))
        metrics["confusion"] = {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
        metrics["calibration"] = calibration_figures(y, patient)
        out[how] = metrics
    return out

"""Cross-validation metrics: the paper's Table 2 and what it lacks.

Haim et al. 2022, "DL analysis" and Table 2: per fold, accuracy, precision, recall, F1 and
ROC AUC, with the patient score aggregated from the slice scores by min, max, median and
mean (:func:`pipeline.model.aggregate.aggregate_slices`, the node's own code). Added here
(../shared/METHOD.md "Evaluation"): slice-level metrics, pooled out-of-fold patient AUC with
a stratified patient-level bootstrap 95 % CI (percentile), sensitivity and specificity with
Wilson intervals, calibration (slope and intercept of a logistic fit of the outcome on
logit(p), Brier score), and the spread over repeated CV.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, precision_score, recall_score, roc_auc_score

from pipeline.model.aggregate import SLICE_AGGREGATIONS, aggregate_slices

__all__ = [
    "binary_metrics",
    "auc_or_nan",
    "bootstrap_auc_ci",
    "wilson_interval",
    "calibration",
    "fold_table",
    "pooled_metrics",
]


def auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels)
    if labels.size == 0 or len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float | Sequence[float] = 0.5) -> dict[str, float]:
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
        "auc": auc_or_nan(y, s),
    }


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sensitivity, specificity)."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_auc_ci(labels: np.ndarray, scores: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Stratified patient-level bootstrap (positives and negatives resampled separately, so
    every resample has both classes), percentile 95 % interval of the AUC."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    if resamples == 0 or pos.size == 0 or neg.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    p = pos[rng.integers(0, pos.size, size=(resamples, pos.size))]
    n = neg[rng.integers(0, neg.size, size=(resamples, neg.size))]
    # AUC = P(pos > neg) + 0.5 P(pos == neg), computed per resample.
    greater = (p[:, :, None] > n[:, None, :]).mean(axis=(1, 2))
    ties = (p[:, :, None] == n[:, None, :]).mean(axis=(1, 2))
    aucs = greater + 0.5 * ties
    low, high = np.percentile(aucs, [2.5, 97.5])
    return (float(low), float(high))


def calibration(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Calibration slope and intercept (logistic regression of the outcome on logit(p), no
    penalty; ideal 1 and 0) and the Brier score."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels, dtype=int)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    out = {"brier": float(brier_score_loss(y, p)) if y.size else float("nan"), "slope": float("nan"), "intercept": float("nan")}
    if len(np.unique(y)) == 2:
        logit = np.log(p / (1 - p)).reshape(-1, 1)
        fit = LogisticRegression(C=np.inf, max_iter=1000).fit(logit, y)
        out["slope"], out["intercept"] = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return out


def fold_table(folds: Sequence[dict[str, Any]], thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Per fold: slice-level metrics and, for every slice aggregation, patient-level metrics
    (the paper's Table 2 rows). Each item of ``folds``: ``{"fold", "labels" [n], "scores" [n, S]}``."""
    rows = []
    for index, fold in enumerate(folds):
        y = np.asarray(fold["labels"], dtype=int)
        scores = np.asarray(fold["scores"], dtype=np.float64)
        threshold = 0.5 if thresholds is None else thresholds[index]
        row: dict[str, Any] = {
            "fold": int(fold["fold"]),
            "slice": binary_metrics(np.repeat(y, scores.shape[1]), scores.reshape(-1), threshold),
            "patient": {how: binary_metrics(y, aggregate_slices(scores, how), threshold) for how in SLICE_AGGREGATIONS},
        }
        rows.append(row)
    return rows


def pooled_metrics(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Pooled out-of-fold metrics over all patients: ``scores [N, S]`` (each patient scored
    by the fold model that did not see it), ``thresholds [N]`` (that fold's threshold)."""
    y = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"slice": binary_metrics(np.repeat(y, scores.shape[1]), scores.reshape(-1), np.repeat(thresholds, scores.shape[1]))}
    for how in SLICE_AGGREGATIONS:
        patient = aggregate_slices(scores, how)
        metrics = binary_metrics(y, patient, thresholds)
        predicted = patient >= thresholds
        tp, fn = int((predicted & (y == 1)).sum()), int((~predicted & (y == 1)).sum())
        tn, fp = int((~predicted & (y == 0)).sum()), int((predicted & (y == 0)).sum())
        metrics["auc_ci95"] = list(bootstrap_auc_ci(y, patient, resamples, seed))
        metrics["sensitivity_ci95"] = list(wilson_interval(tp, tp + fn))
        metrics["specificity_ci95"] = list(wilson_interval(tn, tn + fp))
        metrics["confusion"] = {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
        metrics["calibration"] = calibration(y, patient)
        out[how] = metrics
    return out

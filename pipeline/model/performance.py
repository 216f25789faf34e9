"""How well a served model's probabilities match outcomes: one implementation for training's
cross-validation report, ``egfr-node evaluate`` and the console's running performance
(issue 27 item 1, issue 28 item 2; ../shared/METHOD.md "Evaluation").

Statistics come from scipy and scikit-learn; nothing here is a hand-written version of what
they do:

- ROC AUC (``sklearn.metrics.roc_auc_score``) with a stratified patient bootstrap 95 % CI:
  ``scipy.stats.bootstrap`` on the two samples (positives, negatives), each resampled on its
  own, so every resample has both classes; the statistic is the Mann-Whitney U over the
  pairs (``scipy.stats.mannwhitneyu``, ties counted half), BCa, and the percentile interval
  where BCa is undefined (every resample gives the same AUC, e.g. 1.0).
- Proportions at a threshold (sensitivity, specificity, PPV, NPV, accuracy) with Wilson
  intervals (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).
- Calibration: slope (logistic regression of the outcome on logit(p)), calibration-in-the-
  large (the intercept with logit(p) as an offset: the root of the score equation, found by
  ``scipy.optimize.brentq``), Brier score; the reliability curve is
  ``sklearn.calibration.calibration_curve``.
- Net benefit (decision curve analysis, Vickers & Elkin 2006): ``TP/n - FP/n * pt / (1 - pt)``
  for the model, treat-all and treat-none at each threshold probability ``pt``.
- Paired AUC difference of two scores on the same patients (shadow against active bundle,
  a recipe against the default), with a stratified bootstrap CI.

A positive is ``probability >= threshold`` (:func:`pipeline.model.aggregate.is_positive`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from pipeline.model.calibrate import logit

__all__ = [
    "auc",
    "auc_ci",
    "proportion_ci",
    "threshold_figures",
    "calibration_figures",
    "calibration_words",
    "reliability_curve",
    "net_benefit",
    "paired_auc_difference",
    "performance",
    "roc_band",
    "DEFAULT_NET_BENEFIT_THRESHOLDS",
]

#: Threshold probabilities of the decision curve (what a clinician might act on).
DEFAULT_NET_BENEFIT_THRESHOLDS: tuple[float, ...] = tuple(round(v, 2) for v in np.arange(0.05, 0.96, 0.05))


def _arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f'Arguments "labels" and "scores" must be 1-D of one length, got {y.shape} and {s.shape}')
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError('Argument "labels" must hold 0 (negative) and 1 (positive) only')
    return y, s


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC, or nan when the patients hold one class only."""
    from sklearn.metrics import roc_auc_score

    y, s = _arrays(labels, scores)
    if y.size == 0 or len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def _pair_auc(positives: np.ndarray, negatives: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(positives, negatives, axis=axis, method="asymptotic").statistic
    pair_auc: np.ndarray = u / (positives.shape[axis] * negatives.shape[axis])
    return pair_auc


def _bootstrap(statistic: Any, samples: tuple[np.ndarray, ...], resamples: int, seed: int) -> tuple[float, float]:
    """scipy's bootstrap, BCa, falling back to the percentile interval where BCa is undefined."""
    from scipy.stats import bootstrap

    interval = (float("nan"), float("nan"))
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's DegenerateDataWarning and the divide it comes from
            result = bootstrap(samples, statistic, vectorized=True, n_resamples=resamples, method=method,
                               rng=np.random.default_rng(seed))
        interval = (float(result.confidence_interval.low), float(result.confidence_interval.high))
        if all(math.isfinite(v) for v in interval):
            return interval
    return interval


def auc_ci(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, resamples: int = 2000,
           seed: int = 0) -> tuple[float, float]:
    """Stratified patient bootstrap 95 % CI of the AUC (nan without resamples or with fewer
    than two patients of a class: nothing to resample)."""
    y, s = _arrays(labels, scores)
    positives, negatives = s[y == 1], s[y == 0]
    if resamples == 0 or positives.size < 2 or negatives.size < 2:
        return (float("nan"), float("nan"))
    return _bootstrap(_pair_auc, (positives, negatives), resamples, seed)


def paired_auc_difference(labels: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                          scores_b: Sequence[float] | np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """AUC(a) - AUC(b) on the same patients, with a stratified paired bootstrap 95 % CI: each
    resample takes the same patients for both scores. ``scores_a`` and ``scores_b`` may be
    ``[R, N]``, R repeats (seeds) of the same N patients: the difference of the mean AUCs over
    the repeats, with the patients resampled once for all of them."""
    y = np.asarray(labels, dtype=int)
    a = np.atleast_2d(np.asarray(scores_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(scores_b, dtype=np.float64))
    if a.shape[-1] != y.size or b.shape[-1] != y.size or y.ndim != 1:
        raise ValueError(f'Arguments "scores_a" and "scores_b" must end in the {y.size} patients of "labels", '
                         f"got {a.shape} and {b.shape}")
    auc_a = float(np.mean([auc(y, row) for row in a]))
    auc_b = float(np.mean([auc(y, row) for row in b]))
    out: dict[str, Any] = {"auc_a": auc_a, "auc_b": auc_b, "difference": auc_a - auc_b,
                           "ci95": [float("nan"), float("nan")], "patients": int(y.size), "positives": int(y.sum()),
                           "repeats": [int(a.shape[0]), int(b.shape[0])]}
    pos, neg = np.where(y == 1)[0], np.where(y == 0)[0]
    if resamples == 0 or pos.size < 2 or neg.size < 2:
        return out

    def mean_auc(scores: np.ndarray, p: np.ndarray, n: np.ndarray, axis: int) -> np.ndarray:
        # scores [R, N]; p, n index arrays [..., k]: AUC per repeat [R, ...], averaged over the repeats
        repeats_mean: np.ndarray = _pair_auc(scores[:, p], scores[:, n], axis).mean(axis=0)
        return repeats_mean

    def statistic(p: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
        p, n = p.astype(int), n.astype(int)
        difference: np.ndarray = mean_auc(a, p, n, axis) - mean_auc(b, p, n, axis)
        return difference

    out["ci95"] = list(_bootstrap(statistic, (pos.astype(float), neg.astype(float)), resamples, seed))
    return out


def proportion_ci(successes: int, total: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (nan for an empty denominator)."""
    from scipy.stats import binomtest

    if total == 0:
        return (float("nan"), float("nan"))
    interval = binomtest(int(successes), int(total)).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(interval.low), float(interval.high))


def _proportion(successes: int, total: int) -> dict[str, Any]:
    return {"value": successes / total if total else float("nan"), "ci95": list(proportion_ci(successes, total)),
            "count": [int(successes), int(total)]}


def threshold_figures(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                      threshold: float) -> dict[str, Any]:
    """The confusion at ``threshold`` and sensitivity, specificity, PPV, NPV and accuracy with
    Wilson intervals (each ``{"value", "ci95", "count": [k, n]}``)."""
    y, p = _arrays(labels, probabilities)
    predicted = p >= threshold
    tp = int((predicted & (y == 1)).sum())
    fp = int((predicted & (y == 0)).sum())
    tn = int((~predicted & (y == 0)).sum())
    fn = int((~predicted & (y == 1)).sum())
    return {
        "threshold": float(threshold),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "sensitivity": _proportion(tp, tp + fn),
        "specificity": _proportion(tn, tn + fp),
        "ppv": _proportion(tp, tp + fp),
        "npv": _proportion(tn, tn + fn),
        "accuracy": _proportion(tp + tn, int(y.size)),
    }


def calibration_figures(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Calibration slope and its intercept (a logistic fit of the outcome on logit(p), no
    penalty; ideal 1 and 0), calibration-in-the-large (the intercept with the slope fixed at 1;
    ideal 0; > 0 means the probabilities are too low), the Brier score, and the mean predicted
    against the observed fraction."""
    from scipy.optimize import brentq
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss

    y, p = _arrays(labels, probabilities)
    out = {"slope": float("nan"), "intercept": float("nan"), "in_the_large": float("nan"),
           "brier": float(brier_score_loss(y, np.clip(p, 0.0, 1.0))) if y.size else float("nan"),
           "mean_predicted": float(p.mean()) if y.size else float("nan"),
           "observed": float(y.mean()) if y.size else float("nan")}
    if len(np.unique(y)) < 2:
        return out
    offset = logit(p)
    # the probabilities separate the classes (ties at the boundary included): the calibration
    # slope has no finite estimate; left undefined rather than the solver's arbitrary large value
    if not (offset[y == 0].max() <= offset[y == 1].min() or offset[y == 1].max() <= offset[y == 0].min()):
        fit = LogisticRegression(C=np.inf, max_iter=1000).fit(offset.reshape(-1, 1), y)
        out["slope"], out["intercept"] = float(fit.coef_[0, 0]), float(fit.intercept_[0])

    def score(a: float) -> float:  # d/da of the log-likelihood with logit(p) as offset
        return float((y - 1.0 / (1.0 + np.exp(-(a + offset)))).sum())

    out["in_the_large"] = float(brentq(score, -50.0, 50.0))
    return out


def calibration_words(figures: dict[str, float]) -> str:
    """"slope 0.93, in-the-large +0.12, Brier 0.184": :func:`calibration_figures` in words,
    an undefined figure said so (the probabilities separate the cases, or one class only)."""
    def fmt(value: float, spec: str) -> str:
        return format(value, spec) if math.isfinite(value) else "undefined"

    return (f"slope {fmt(figures['slope'], '.2f')}, in-the-large {fmt(figures['in_the_large'], '+.2f')}, "
            f"Brier {fmt(figures['brier'], '.3f')}")


def reliability_curve(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                      bins: int = 5) -> dict[str, list[float]]:
    """Mean predicted probability and observed fraction positive per bin of equal counts
    (``sklearn.calibration.calibration_curve``, quantile strategy), with the counts."""
    from sklearn.calibration import calibration_curve

    y, p = _arrays(labels, probabilities)
    if y.size == 0 or len(np.unique(y)) < 2:
        return {"predicted": [], "observed": [], "count": []}
    bins = max(1, min(bins, y.size // 2 or 1))
    p = np.clip(p, 0.0, 1.0)
    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="quantile")
    # the counts behind each point, binned by calibration_curve's own rule (it returns none)
    which = np.searchsorted(np.percentile(p, np.linspace(0, 100, bins + 1))[1:-1], p)
    counts = np.bincount(which, minlength=bins)
    return {"predicted": [float(v) for v in predicted], "observed": [float(v) for v in observed],
            "count": [int(c) for c in counts[counts > 0]]}


def net_benefit(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                thresholds: Sequence[float] = DEFAULT_NET_BENEFIT_THRESHOLDS) -> list[dict[str, float]]:
    """Decision curve: net benefit of the model, of treating all and of treating none."""
    y, p = _arrays(labels, probabilities)
    n = max(int(y.size), 1)
    prevalence = float(y.mean()) if y.size else float("nan")
    rows = []
    for pt in thresholds:
        odds = pt / (1 - pt)
        predicted = p >= pt
        tp = int((predicted & (y == 1)).sum())
        fp = int((predicted & (y == 0)).sum())
        rows.append({"threshold": float(pt), "model": tp / n - fp / n * odds,
                     "treat_all": prevalence - (1 - prevalence) * odds, "treat_none": 0.0})
    return rows


def performance(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, threshold: float,
                resamples: int = 2000, seed: int = 0, *, raw_scores: Sequence[float] | np.ndarray | None = None,
                net_benefit_thresholds: Sequence[float] = DEFAULT_NET_BENEFIT_THRESHOLDS,
                reliability_bins: int = 5) -> dict[str, Any]:
    """Every figure of one set of labelled probabilities at the served threshold: counts, AUC
    (``auc``, ``auc_ci``), the threshold figures, calibration, the reliability curve and the
    decision curve; with ``raw_scores`` (the same patients before calibration) the calibration
    of those too (``calibration_raw``), so a report can show before and after."""
    y, p = _arrays(labels, probabilities)
    out: dict[str, Any] = {
        "patients": int(y.size), "positives": int(y.sum()), "negatives": int(y.size - y.sum()),
        "auc": auc(y, p), "auc_ci": list(auc_ci(y, p, resamples, seed)),
        **threshold_figures(y, p, threshold),
        "calibration": calibration_figures(y, p),
        "reliability": reliability_curve(y, p, reliability_bins),
        "net_benefit": net_benefit(y, p, net_benefit_thresholds),
    }
    if raw_scores is not None:
        _, raw = _arrays(labels, raw_scores)
        out["auc_raw"] = auc(y, raw)
        out["calibration_raw"] = calibration_figures(y, raw)
        out["reliability_raw"] = reliability_curve(y, raw, reliability_bins)
    return out


def roc_band(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, resamples: int = 1000,
             seed: int = 0, points: int = 101) -> dict[str, list[float]]:
    """The ROC curve's pointwise 95 % band: sensitivity at each false-positive rate of a fixed
    grid, over stratified patient bootstrap resamples (``sklearn.metrics.roc_curve`` each)."""
    from sklearn.metrics import roc_curve

    y, s = _arrays(labels, scores)
    pos, neg = np.where(y == 1)[0], np.where(y == 0)[0]
    grid = np.linspace(0.0, 1.0, points)
    if pos.size == 0 or neg.size == 0 or resamples == 0:
        return {"fpr": [], "low": [], "high": []}
    rng = np.random.default_rng(seed)
    curves = np.empty((resamples, points))
    for r in range(resamples):
        index = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        fpr, tpr, _ = roc_curve(y[index], s[index])
        curves[r] = np.interp(grid, fpr, tpr)
    low, high = np.percentile(curves, [2.5, 97.5], axis=0)
    return {"fpr": grid.tolist(), "low": low.tolist(), "high": high.tolist()}

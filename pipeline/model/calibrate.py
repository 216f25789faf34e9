"""Recalibration of the fold models' scores into a probability (issue 27, item 3).

Training draws the minority class up to a 1:1 prior (oversampling) and, with the paper's
recipe, mixes images and optimises a soft F1: the network's softmax is a score, not the
probability of an EGFR mutation in the cohort it came from. Training fits a map from one
fold model's patient score to the observed outcome on the pooled out-of-fold patients (each
scored by the fold models that never saw it, combined as the bundle combines its folds) and
stores it in the bundle; the node applies it to the folds' combined score (the mean of their
logits for a bundle trained now, of their probabilities for an older one;
:func:`pipeline.model.aggregate.served_probability`).

- ``logistic`` (the default, Platt scaling): ``p = sigmoid(a + b * logit(score))``, fitted by
  scikit-learn's unpenalised logistic regression (maximum likelihood). Only when the scores
  separate the classes perfectly (no finite maximum) are Platt's smoothed targets used
  (``(N+ + 1) / (N+ + 2)`` for a positive, ``1 / (N- + 2)`` for a negative), which keep the
  slope finite; on a cohort of the paper's size they also shrink it so much that the
  probabilities come out under-confident (held-out phantoms: slope 1.49 with them, 1.25
  without, ``tests/bench_calibration.py``), hence not by default. A slope that comes out at or below 0
  (the scores rank no better than chance, as in a shuffled-label control) would turn the
  ranking round: it is set to ``MIN_SLOPE``, which keeps the order and gives every patient
  about the cohort's prevalence; ``note`` says so.
- ``isotonic``: scikit-learn's isotonic regression (monotone steps; for large cohorts: with
  few patients it overfits and ties patients together), stored as its knots and applied by
  linear interpolation between them, exactly as ``IsotonicRegression.predict`` does.
- ``none``: the score is reported as it is (bundles written before calibration existed).

No calibrated probability is more extreme than ``1 / (N + 2)`` or ``(N + 1) / (N + 2)`` for a
map fitted on N patients (:attr:`Calibration.bounds`): the node never says 1.000 on the
evidence of a few dozen cases. The map knows the prevalence of the cohort it was fitted on: a site whose prevalence differs
reads probabilities calibrated to the training cohort (``egfr-node evaluate`` measures it).
This module needs numpy only at serve time; scikit-learn is imported to fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["CALIBRATION_METHODS", "MIN_SLOPE", "Calibration", "fit_calibration", "logit"]

CALIBRATION_METHODS = ("logistic", "isotonic", "none")
#: The least slope a logistic map keeps (a fitted slope at or below 0 is raised to it).
MIN_SLOPE = 1e-3
#: Scores are clipped to [EPS, 1 - EPS] before the logit (a saturated softmax gives 1.0).
EPS = 1e-6


def logit(p: np.ndarray | Sequence[float] | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q / (1 - q))


@dataclass(frozen=True)
class Calibration:
    """A fitted map from a fold model's patient score to a probability (see the module docstring).

    ``patients`` / ``positives``: the out-of-fold patients it was fitted on.
    """

    method: str = "none"
    intercept: float = 0.0
    slope: float = 1.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()
    patients: int = 0
    positives: int = 0
    note: str = ""

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f'Argument "method" must be one of {", ".join(CALIBRATION_METHODS)}; got {self.method!r}')
        for name in ("intercept", "slope"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f'Argument "{name}" must be a finite number, got {value!r}')
            object.__setattr__(self, name, float(value))
        if self.method == "logistic" and self.slope <= 0:
            raise ValueError(f'Argument "slope" must be > 0 for a logistic map (a ranking is never reversed), got {self.slope}')
        x = tuple(float(v) for v in self.knots_x)
        y = tuple(float(v) for v in self.knots_y)
        if self.method == "isotonic":
            if not x or len(x) != len(y):
                raise ValueError('Arguments "knots_x" and "knots_y" must be non-empty and of the same length')
            if any(b < a for a, b in zip(x, x[1:])) or any(b < a for a, b in zip(y, y[1:])):
                raise ValueError('Arguments "knots_x" and "knots_y" must be non-decreasing (a monotone map)')
            if not all(0.0 <= v <= 1.0 for v in x + y):
                raise ValueError('Arguments "knots_x" and "knots_y" must lie in [0, 1]')
        object.__setattr__(self, "knots_x", x)
        object.__setattr__(self, "knots_y", y)

    @property
    def applied(self) -> bool:
        """Whether the map changes anything (``none`` reports the score as it is)."""
        return self.method != "none"

    @property
    def bounds(self) -> tuple[float, float]:
        """The most extreme probabilities the map may give: ``1 / (N + 2)`` and ``(N + 1) / (N + 2)``
        for N patients fitted on (Laplace's rule of succession): a map fitted on 30 patients has
        not seen enough to say 1.000 or 0.000."""
        n = max(self.patients, 0)
        return (1.0 / (n + 2), (n + 1.0) / (n + 2)) if self.applied and n else (0.0, 1.0)

    def apply(self, scores: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """Scores in [0, 1] -> calibrated probabilities (same shape, float64), within :attr:`bounds`."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "logistic":
            z = self.intercept + self.slope * logit(s)
            return np.clip(1.0 / (1.0 + np.exp(-z)), *self.bounds)
        if self.method == "isotonic":
            return np.clip(np.interp(s, self.knots_x, self.knots_y), *self.bounds)
        return s.copy()

    def describe(self) -> str:
        """One line for the report, the SR's algorithm parameters and the console."""
        fitted = f" on {self.patients} out-of-fold patients ({self.positives} positive)" if self.patients else ""
        if self.method == "logistic":
            text = f"logistic (Platt): p = sigmoid({self.intercept:.3f} + {self.slope:.3f} * logit(score)){fitted}"
        elif self.method == "isotonic":
            text = f"isotonic ({len(self.knots_x)} knots){fitted}"
        else:
            text = "none: the score is reported uncalibrated"
        return text + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "intercept": self.intercept, "slope": self.slope, "knots_x": list(self.knots_x),
                "knots_y": list(self.knots_y), "patients": self.patients, "positives": self.positives, "note": self.note}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Calibration:
        if not values:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError(f"calibration must be an object, got {type(values).__name__}")
        unknown = sorted(set(values) - {"method", "intercept", "slope", "knots_x", "knots_y", "patients", "positives", "note"})
        if unknown:
            raise ValueError(f"calibration has unknown field(s): {', '.join(unknown)}")
        return cls(**values)


def fit_calibration(labels: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float],
                    method: str = "logistic") -> Calibration:
    """Fit ``method`` on out-of-fold patient ``scores`` and their ``labels`` (1 = EGFR positive).

    Raises ValueError when the patients hold one class only (nothing to calibrate against).
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f'Argument "method" must be one of {", ".join(CALIBRATION_METHODS)}; got {method!r}')
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f'Arguments "labels" and "scores" must be 1-D of one length, got {y.shape} and {s.shape}')
    positives = int(y.sum())
    if method == "none":
        return Calibration(patients=int(y.size), positives=positives)
    if positives == 0 or positives == y.size:
        raise ValueError(f"cannot calibrate on {y.size} patients of one class ({positives} positive)")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        fit = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y)
        return Calibration("isotonic", knots_x=tuple(fit.X_thresholds_), knots_y=tuple(fit.y_thresholds_),
                           patients=int(y.size), positives=positives)
    from sklearn.linear_model import LogisticRegression

    negatives = int(y.size) - positives
    x = logit(s).reshape(-1, 1)
    # (quasi-)complete separation, ties at the boundary included (a float32 softmax saturates
    # at exactly 1.0): no finite maximum likelihood either way
    separable = x[y == 0].max() <= x[y == 1].min() or x[y == 1].max() <= x[y == 0].min()
    if separable:  # no finite maximum likelihood: Platt's smoothed targets
        target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
        note = "the scores separate these patients perfectly: fitted on Platt's smoothed targets"
    else:
        target, note = y.astype(float), ""
    # a (soft) target t is the pair (label 1, weight t) + (label 0, weight 1 - t)
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(
        np.vstack([x, x]), np.concatenate([np.ones(y.size), np.zeros(y.size)]),
        sample_weight=np.concatenate([target, 1 - target]))
    slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if slope < MIN_SLOPE:
        target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
        note = (f"the fitted slope was {slope:.3f} (the scores rank these patients no better than chance): raised to "
                f"{MIN_SLOPE:g}, which keeps the ranking and gives about the prevalence")
        slope = MIN_SLOPE
        # the intercept that matches the prevalence with that slope
        intercept = float(math.log(target.mean() / (1 - target.mean())) - slope * float(x.mean()))
    return Calibration("logistic", intercept=intercept, slope=slope, patients=int(y.size), positives=positives, note=note)

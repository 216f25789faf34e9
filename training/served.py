"""The rule the bundle will serve, fitted and measured on the out-of-fold patients (issue 27,
items 2 and 3).

Cross-validation scores each patient with the one fold model that never saw it. The bundle
serves something else: the mean of the K fold models, with one slice aggregation, one
calibration and one threshold. Here that rule is fixed from training data only and measured
out of fold:

1. slice aggregation: the one most folds chose (nested selection), else median;
2. calibration (``settings.calibration``): fitted on every patient's out-of-fold score under
   that aggregation (:func:`pipeline.model.calibrate.fit_calibration`). With ``repeats`` R > 1
   each patient has R out-of-fold models (one per repeat, none of which saw it), and the score
   calibrated is their logits' mean: an ensemble of R unseen models, as the bundle serves an
   ensemble of K (the folds are combined on the logit scale, ``fold_scale="logit"``). A map
   fitted on one model's scores makes an ensemble under-confident (averaging removes noise the
   map had to shrink away): ``--repeats 5`` with 5 folds fits it on ensembles of the served size;
3. threshold, on the calibrated scale: the pre-specified ``settings.threshold`` (fixed and
   paper selection), or the median of the folds' inner-patient Youden thresholds under the
   served aggregation, mapped through the calibration (nested selection: chosen inside the
   training folds only; the pre-specified one when no fold could place one);
4. each patient's probability by :func:`pipeline.model.aggregate.served_probability` on its
   out-of-fold scores (one fold model), and the figures of
   :func:`pipeline.model.performance.performance` on them.

The calibration is fitted on the same patients it is then measured on, so its in-sample
calibration is near ideal by construction; the cross-fitted figures (each fold's patients
calibrated by a map fitted on the other folds' patients) are the honest estimate. What the
ensemble of K models does on patients none of them saw is measured by ``egfr-node evaluate``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from pipeline.model.aggregate import served_probability
from pipeline.model.calibrate import Calibration, fit_calibration
from pipeline.model.performance import calibration_figures, performance, threshold_figures
from training.settings import TrainSettings

__all__ = ["ServedRule", "bundle_aggregation", "fit_served_rule"]

#: Tie order when folds chose different slice aggregations.
_AGGREGATION_ORDER = ("median", "mean", "min", "max")


@dataclass
class ServedRule:
    """The bundle's rule and its out-of-fold figures."""

    slice_aggregation: str
    calibration: Calibration
    threshold: float
    threshold_rule: str
    raw: np.ndarray  # [N] each patient's out-of-fold score under the bundle's aggregation (R repeats' models combined)
    ensemble_size: int  # out-of-fold models per patient behind ``raw`` (the repeats)
    probabilities: np.ndarray  # [N] calibrated with the map fitted on all of them
    cross_fitted: np.ndarray  # [N] calibrated with a map fitted on the other folds' patients
    figures: dict[str, Any]
    cross_fitted_figures: dict[str, Any]


def bundle_aggregation(chosen: list[str], selection: str) -> str:
    """Nested selection: the aggregation most folds chose (ties: median, mean, min, max); else median."""
    if selection != "nested":
        return "median"
    counts = Counter(chosen)
    return max(_AGGREGATION_ORDER, key=lambda h: (counts.get(h, 0), -_AGGREGATION_ORDER.index(h)))


def _served(scores: np.ndarray, how: str, calibration: Calibration) -> np.ndarray:
    """Each patient's probability under the served rule from its out-of-fold models' slice
    scores ``[R, N, S]`` (R models per patient, combined on the logit scale as the bundle does)."""
    return np.array([served_probability(scores[:, i], how, "mean", calibration, "logit").probability
                     for i in range(scores.shape[1])])


def single_model_note(repeats: int, folds: int) -> str:
    """What the calibration's own record says when it was fitted on smaller ensembles than served."""
    fitted = "one fold model's score" if repeats == 1 else f"the mean of {repeats} fold models' scores"
    return (f"fitted on {fitted} per patient while the node serves the mean of {folds}: on new patients the served "
            f"probability tends to be under-confident (train with --repeats {folds} to fit it on ensembles of {folds})")


def fit_served_rule(runs: Sequence[Any], settings: TrainSettings, seed: int) -> ServedRule:
    """Fix the served rule on ``runs`` (:class:`training.run.CVRun`, the repeats; the first is
    the bundle's) and measure it out of fold."""
    run = runs[0]
    labels = run.labels
    how = bundle_aggregation([r.slice_aggregation for r in run.results], settings.selection)
    every = np.stack([r.oof_scores for r in runs])  # [R, N, S]
    raw = _served(every, how, Calibration())
    calibration = fit_calibration(labels, raw, settings.calibration)
    if calibration.applied and len(runs) < len(run.results):
        calibration = replace(calibration, note="; ".join(filter(None, [calibration.note, single_model_note(
            len(runs), len(run.results))])))
    scale = "the calibrated probability" if calibration.applied else "the uncalibrated score"
    placed = [t for r in run.results if (t := r.youden_threshold(how)) is not None]
    if settings.selection == "nested" and placed:
        # each fold's threshold under the aggregation the bundle serves (the scale it applies
        # to); a fold whose inner patients could not place one has none to give
        raw_threshold = float(np.median(placed))
        threshold = float(np.clip(calibration.apply(raw_threshold), 0.0, 1.0))
        rule = (f"Youden's J on each training fold's inner patients under the {how} of slices, median over the "
                f"{len(placed)} of {len(run.results)} folds that could place one ({raw_threshold:.3f} on the score), "
                f"{threshold:.3f} on {scale}")
    elif settings.selection == "nested":
        threshold = float(settings.threshold)
        rule = (f"pre-specified {settings.threshold:g} on {scale}: no training fold's inner patients could place "
                f"a threshold under the {how} of slices")
    else:
        threshold = float(settings.threshold)
        rule = f"pre-specified {settings.threshold:g} on {scale}"
    probabilities = _served(every, how, calibration)
    cross_fitted = np.full(labels.size, np.nan)
    notes = []
    for k in np.unique(run.folds):
        inside, outside = run.folds == k, run.folds != k
        try:
            local = fit_calibration(labels[outside], raw[outside], settings.calibration)
        except ValueError as exc:  # the other folds hold one class: nothing to fit
            notes.append(f"fold {int(k) + 1}: {exc}")
            local = Calibration()
        cross_fitted[inside] = _served(every[:, inside], how, local)
    figures = performance(labels, probabilities, threshold, settings.bootstrap, seed, raw_scores=raw)
    cross = {"calibration": calibration_figures(labels, cross_fitted), **threshold_figures(labels, cross_fitted, threshold)}
    if notes:
        cross["notes"] = notes
    return ServedRule(how, calibration, threshold, rule, raw, len(runs), probabilities, cross_fitted, figures, cross)

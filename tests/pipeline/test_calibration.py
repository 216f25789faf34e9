"""Calibration (pipeline.model.calibrate), the served rule (aggregate.served_probability) and the
statistics every report uses (pipeline.model.performance): known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from pipeline.model.aggregate import served_probability
from pipeline.model.bundle import BundleError, Manifest
from pipeline.model.calibrate import MIN_SLOPE, Calibration, fit_calibration, logit
from pipeline.model.performance import (
    auc, calibration_figures, calibration_words, net_benefit, paired_auc_difference, performance, reliability_curve, threshold_figures,
)
from tests.node.bundles import write_random_bundle


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcomes drawn from true probabilities, and scores that are the true logit x 3 shifted
    up by 1.5 (too extreme and too high, as oversampling and a sharp softmax make them)."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.05, 0.6, n)
    y = (rng.uniform(size=n) < truth).astype(int)
    scores = 1 / (1 + np.exp(-(3 * logit(truth) + 1.5)))
    return y, scores, truth


def test_logistic_calibration_undoes_a_known_distortion() -> None:
    y, scores, truth = _overconfident()
    raw = calibration_figures(y, scores)
    assert raw["slope"] == pytest.approx(1 / 3, abs=0.08) and raw["in_the_large"] < -0.3  # too extreme, too high
    fitted = fit_calibration(y, scores, "logistic")
    assert fitted.slope == pytest.approx(1 / 3, abs=0.08) and fitted.intercept == pytest.approx(-0.5, abs=0.3)
    calibrated = fitted.apply(scores)
    after = calibration_figures(y, calibrated)
    assert after["slope"] == pytest.approx(1.0, abs=0.1) and abs(after["in_the_large"]) < 0.1
    assert np.abs(calibrated - truth).mean() < 0.03
    assert auc(y, calibrated) == pytest.approx(auc(y, scores))  # a monotone map keeps the ranking
    assert fitted.patients == y.size and fitted.positives == int(y.sum())


def test_separable_scores_get_a_finite_slope_and_a_reversed_ranking_is_never_served() -> None:
    y = np.array([0] * 10 + [1] * 10)
    separable = np.concatenate([np.linspace(0.01, 0.3, 10), np.linspace(0.7, 0.99, 10)])
    fitted = fit_calibration(y, separable)
    assert 0 < fitted.slope < 50 and np.all(np.diff(fitted.apply(np.sort(separable))) >= 0)
    # never more extreme than 20 patients can tell: 1/22 and 21/22 (Laplace's rule of succession)
    assert fitted.apply([0.0, 1.0]).tolist() == pytest.approx([1 / 22, 21 / 22])
    reversed_scores = separable[::-1]  # the scores rank the patients backwards
    flat = fit_calibration(y, reversed_scores)
    assert flat.slope == MIN_SLOPE and "raised" in flat.note
    assert np.all(np.diff(flat.apply(np.sort(reversed_scores))) > 0)  # order kept, nothing inverted
    assert flat.apply(reversed_scores).mean() == pytest.approx(0.5, abs=0.05)  # about the prevalence
    with pytest.raises(ValueError, match="one class"):
        fit_calibration(np.zeros(5), np.linspace(0, 1, 5))


def test_scores_that_separate_the_classes_at_a_tie_are_treated_as_separable() -> None:
    # a negative and a positive share the boundary score (a float32 softmax saturates at 1.0
    # the same way): the unpenalised fit has no finite slope and used to return a step
    y = np.array([0] * 10 + [1] * 10)
    tied = np.concatenate([np.linspace(0.05, 0.5, 10), np.linspace(0.5, 0.95, 10)])
    fitted = fit_calibration(y, tied)
    assert "separate these patients perfectly" in fitted.note and 0 < fitted.slope < 50
    assert fitted.apply([0.49])[0] > 0.1 and fitted.apply([0.51])[0] < 0.9  # no step at the boundary
    figures = calibration_figures(y, tied)
    assert math.isnan(figures["slope"]) and math.isnan(figures["intercept"])  # undefined, not a solver's 67
    assert calibration_words(figures).startswith("slope undefined, in-the-large ")  # as the console and CLI say it
    assert not math.isnan(calibration_figures(y, np.clip(tied + np.r_[[0.2] * 10, [-0.2] * 10], 0.01, 0.99))["slope"])


def test_isotonic_is_scikit_learns_and_round_trips() -> None:
    y, scores, _ = _overconfident(400, seed=3)
    fitted = fit_calibration(y, scores, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, y)
    probe = np.linspace(0, 1, 57)
    np.testing.assert_allclose(fitted.apply(probe), np.clip(reference.predict(probe), 1 / 402, 401 / 402), atol=1e-12)
    again = Calibration.from_dict(fitted.to_dict())
    np.testing.assert_array_equal(again.apply(probe), fitted.apply(probe))
    assert Calibration.from_dict({}).apply(0.3) == pytest.approx(0.3)  # a bundle without one: the score
    with pytest.raises(ValueError, match="slope"):
        Calibration("logistic", slope=-1.0)
    with pytest.raises(ValueError, match="unknown"):
        Calibration.from_dict({"method": "logistic", "temperature": 2})


def test_served_probability_combines_the_folds_then_calibrates() -> None:
    cal = Calibration("logistic", intercept=-1.0, slope=0.5)
    scores = np.array([[0.2, 0.9, 0.8, 0.7, 0.1], [0.6, 0.6, 0.5, 0.4, 0.3]])
    per_fold = np.median(scores, axis=1)
    # a calibrated bundle: the folds' logits averaged, then the calibration
    served = served_probability(scores, "median", "mean", cal, "logit")
    z = np.log(per_fold / (1 - per_fold)).mean()
    assert served.raw == pytest.approx(1 / (1 + np.exp(-z)))
    assert served.probability == pytest.approx(1 / (1 + np.exp(-(-1.0 + 0.5 * z))))
    np.testing.assert_allclose(served.fold_probabilities, cal.apply(per_fold))
    # a bundle written before calibration: the folds' probabilities averaged, as the node always did
    old = served_probability(scores, "median", "mean")
    assert old.probability == old.raw == pytest.approx(per_fold.mean())


def test_a_manifest_carries_its_calibration_and_refuses_a_broken_one(tmp_path) -> None:
    folder = write_random_bundle(tmp_path / "b")
    manifest = Manifest.read(folder)
    assert not manifest.calibration_map.applied and manifest.format_version == 2
    values = manifest.to_json() | {"calibration": {"method": "logistic", "intercept": 0.1, "slope": 0.8}}
    assert Manifest.from_json(values).calibration_map.slope == 0.8
    with pytest.raises(BundleError, match='manifest "calibration"'):
        Manifest.from_json(values | {"calibration": {"method": "logistic", "slope": 0.0}})
    older = manifest.to_json() | {"format_version": 1}
    del older["calibration"], older["threshold_rule"]
    Manifest.from_json(older).check_runnable()  # a bundle written before calibration still runs, uncalibrated


def test_threshold_figures_and_wilson_intervals() -> None:
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4, 0.05]
    f = threshold_figures(y, p, 0.5)
    assert f["confusion"] == {"tp": 2, "fp": 1, "tn": 4, "fn": 1}
    assert f["sensitivity"]["value"] == pytest.approx(2 / 3) and f["ppv"]["value"] == pytest.approx(2 / 3)
    assert f["npv"]["value"] == pytest.approx(4 / 5) and f["accuracy"]["count"] == [6, 8]
    low, high = f["specificity"]["ci95"]
    assert low < 0.8 < high and 0.37 < low < 0.38  # Wilson (Newcombe 1998): 4/5 -> 0.376-0.964


def test_calibration_in_the_large_is_the_offset_intercept() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0.05, 0.95, 5000)
    shift = 0.7
    truth = 1 / (1 + np.exp(-(logit(p) + shift)))
    y = (rng.uniform(size=p.size) < truth).astype(int)
    f = calibration_figures(y, p)
    assert f["in_the_large"] == pytest.approx(shift, abs=0.1) and f["slope"] == pytest.approx(1.0, abs=0.1)


def test_net_benefit_known_values() -> None:
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.8, 0.4, 0.6, 0.2, 0.1])
    [row] = net_benefit(y, p, [0.5])
    # at 0.5: TP 1, FP 1 of 5 -> 1/5 - 1/5 * 1 = 0; treat all: 2/5 - 3/5 = -0.2
    assert row["model"] == pytest.approx(0.0) and row["treat_all"] == pytest.approx(-0.2) and row["treat_none"] == 0.0


def test_reliability_curve_counts_add_up() -> None:
    y, scores, _ = _overconfident(300, seed=9)
    curve = reliability_curve(y, scores, bins=5)
    assert sum(curve["count"]) == 300 and len(curve["count"]) == len(curve["predicted"]) == 5
    assert all(0 <= v <= 1 for v in curve["observed"])


def test_paired_difference_of_two_scores_on_the_same_patients() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    strong = rng.normal(size=80) + 2.0 * y
    weak = rng.normal(size=80) + 0.3 * y
    d = paired_auc_difference(y, strong, weak, resamples=500, seed=2)
    assert d["difference"] == pytest.approx(auc(y, strong) - auc(y, weak))
    assert d["ci95"][0] > 0  # the strong score is better, and the interval says so
    same = paired_auc_difference(y, strong, strong, resamples=200)
    assert same["difference"] == 0 and same["ci95"][0] <= 0 <= same["ci95"][1]


def test_performance_with_too_few_patients_has_no_interval_but_does_not_fail() -> None:
    f = performance([1, 0, 0], [0.9, 0.2, 0.4], 0.5, resamples=200)
    assert f["auc"] == 1.0 and all(math.isnan(v) for v in f["auc_ci"])  # one positive: nothing to resample
    assert f["sensitivity"]["count"] == [1, 1]

"""Metrics (training.metrics, and pipeline.model.performance's statistics it uses): known values, intervals,
the node's aggregation code."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.model.aggregate import aggregate_slices
from pipeline.model.performance import auc_ci, calibration_figures, proportion_ci
from training.metrics import binary_metrics, fold_table, pooled_metrics


def test_binary_metrics_known_values() -> None:
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4, 0.05]
    m = binary_metrics(y, s, 0.5)
    # predicted positive: 0.9, 0.6, 0.7 -> tp 2, fp 1, fn 1, tn 4
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(11 / 15)  # pairs pos > neg: 0.9 beats 5, 0.6 beats 4, 0.2 beats 2
    assert np.isnan(binary_metrics([0, 0], [0.1, 0.2])["auc"])


def test_proportion_ci() -> None:
    low, high = proportion_ci(11, 16)
    assert low < 11 / 16 < high and 0.44 < low < 0.46 and 0.85 < high < 0.87
    assert proportion_ci(0, 5)[0] == 0.0


def test_bootstrap_ci_brackets_the_auc_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    s = rng.normal(size=60) + 1.2 * y
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(y, s)
    low, high = auc_ci(y, s, 1000, seed=1)
    assert low < auc < high
    y4, s4 = np.tile(y, 4), np.tile(s, 4)
    low4, high4 = auc_ci(y4, s4, 1000, seed=1)
    assert high4 - low4 < high - low


def test_calibration_of_calibrated_probabilities() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.02, 0.98, 4000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    c = calibration_figures(y, p)
    assert c["slope"] == pytest.approx(1.0, abs=0.15) and c["intercept"] == pytest.approx(0.0, abs=0.15)
    over = calibration_figures(y, np.clip(p * 0 + np.where(p > 0.5, 0.99, 0.01), 0, 1))  # overconfident
    assert over["slope"] < 0.6 and over["brier"] > c["brier"]


def test_fold_table_uses_the_nodes_aggregation() -> None:
    scores = np.array([[0.1, 0.9, 0.8, 0.7, 0.2], [0.3, 0.2, 0.1, 0.4, 0.35], [0.6, 0.7, 0.9, 0.1, 0.8]])
    labels = np.array([1, 0, 1])
    rows = fold_table([{"fold": 0, "labels": labels, "scores": scores}])
    for how in ("min", "max", "median", "mean"):
        expected = binary_metrics(labels, aggregate_slices(scores, how), 0.5)
        assert rows[0]["patient"][how] == expected
    assert rows[0]["slice"]["n"] == 15
    pooled = pooled_metrics(labels, scores, np.full(3, 0.5), resamples=200)
    assert pooled["median"]["confusion"] == {"tp": 2, "fn": 0, "tn": 1, "fp": 0}

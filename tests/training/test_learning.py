"""Does the pipeline learn a real effect and only a real effect?

Issues 7 and 15: on a phantom cohort with a clear effect, a test-sized run of the default
recipe (no ImageNet weights: the scratch recipe) reaches a pooled out-of-fold patient AUC of
at least 0.9; the shuffled-label control and an effect-size-0 cohort stay at or below 0.65.
All three go through ``train_bundle`` (the CLI's path, ``shuffle_labels`` included) with the
same settings and seeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1200)  # a cohort to generate and 3 x 30 epochs; about 2-3 min per test on 2 quiet cores


def _headline(outcome) -> tuple[float, float]:  # noqa: ANN001
    return outcome.report["headline"]["auc"], outcome.report["headline"]["auc_ci95"][0]


def test_clear_effect_is_learned(learned_bundle) -> None:  # noqa: ANN001
    auc, ci_low = _headline(learned_bundle)
    assert auc >= 0.9 and ci_low > 0.5  # the 95 % bootstrap interval excludes chance


def test_shuffled_labels_are_not_learned(shuffled_bundle) -> None:  # noqa: ANN001
    auc, ci_low = _headline(shuffled_bundle)
    assert auc <= 0.65 and ci_low <= 0.5


def test_effect_size_zero_is_not_learned(null_cohort: Path, tmp_path: Path, cache_dir: Path) -> None:
    from .conftest import train_on

    auc, ci_low = _headline(train_on(null_cohort, tmp_path / "b", cache_dir))
    assert auc <= 0.65 and ci_low <= 0.5

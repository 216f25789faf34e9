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

from training.run import train_bundle

from .conftest import LEARN_PARAMS
from .learn_settings import LEARN_SETTINGS

pytestmark = pytest.mark.timeout(1200)  # a cohort to generate and 3 x 30 epochs; about 2-3 min per test on 2 quiet cores


def pooled_auc(cohort: Path, out: Path, cache_dir: Path, **changes) -> tuple[float, float]:
    outcome = train_bundle(cohort, out, settings=LEARN_SETTINGS.replace(**changes), params=LEARN_PARAMS, cache_dir=cache_dir,
                           progress=False)
    auc = outcome.report["headline"]["auc"]
    print(f"{cohort.parent.name} {changes or ''}: pooled patient AUC {auc:.3f} CI {outcome.report['headline']['auc_ci95']}")
    return auc, outcome.report["headline"]["auc_ci95"][0]


def test_clear_effect_is_learned(learning_cohort: Path, tmp_path: Path, cache_dir: Path) -> None:
    auc, ci_low = pooled_auc(learning_cohort, tmp_path / "b", cache_dir)
    assert auc >= 0.9 and ci_low > 0.5  # the 95 % bootstrap interval excludes chance


def test_shuffled_labels_are_not_learned(learning_cohort: Path, tmp_path: Path, cache_dir: Path) -> None:
    auc, ci_low = pooled_auc(learning_cohort, tmp_path / "b", cache_dir, shuffle_labels=True)
    assert auc <= 0.65 and ci_low <= 0.5


def test_effect_size_zero_is_not_learned(null_cohort: Path, tmp_path: Path, cache_dir: Path) -> None:
    auc, ci_low = pooled_auc(null_cohort, tmp_path / "b", cache_dir)
    assert auc <= 0.65 and ci_low <= 0.5

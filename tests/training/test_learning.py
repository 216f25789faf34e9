"""Does the pipeline learn a real effect and only a real effect?

Issue 7 "Done when": on a phantom cohort with a clear effect a test-sized run reaches a pooled
out-of-fold patient AUC well above 0.5; the shuffled-label control and an effect-size-0
cohort do not. All three go through ``train_bundle`` (the CLI's path, ``shuffle_labels``
included) with the same settings and seeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.run import train_bundle

from .conftest import TEST_PARAMS
from .learn_settings import LEARN_SETTINGS

pytestmark = pytest.mark.timeout(600)


def pooled_auc(cohort: Path, out: Path, cache_dir: Path, **changes) -> tuple[float, float]:
    outcome = train_bundle(cohort, out, settings=LEARN_SETTINGS.replace(**changes), params=TEST_PARAMS, cache_dir=cache_dir,
                           progress=False)
    auc = outcome.report["headline"]["auc"]
    print(f"{cohort.parent.name} {changes or ''}: pooled patient AUC {auc:.3f} CI {outcome.report['headline']['auc_ci95']}")
    return auc, outcome.report["headline"]["auc_ci95"][0]


def test_clear_effect_is_learned(clear_cohort: Path, tmp_path: Path, cache_dir: Path) -> None:
    auc, ci_low = pooled_auc(clear_cohort, tmp_path / "b", cache_dir)
    assert auc >= 0.72 and ci_low > 0.5  # the 95 % bootstrap interval excludes chance


def test_shuffled_labels_are_not_learned(clear_cohort: Path, tmp_path: Path, cache_dir: Path) -> None:
    auc, ci_low = pooled_auc(clear_cohort, tmp_path / "b", cache_dir, shuffle_labels=True)
    assert auc <= 0.65 and ci_low <= 0.5


def test_effect_size_zero_is_not_learned(null_cohort: Path, tmp_path: Path, cache_dir: Path) -> None:
    auc, ci_low = pooled_auc(null_cohort, tmp_path / "b", cache_dir)
    assert auc <= 0.65 and ci_low <= 0.5

"""Patient-level stratified group K-fold (training.splits)."""

from __future__ import annotations

import numpy as np
import pytest

from training.splits import SplitError, assign_folds, check_disjoint, inner_split


def cohort(n: int = 59, positives: int = 16) -> tuple[np.ndarray, list[str]]:
    labels = np.zeros(n, dtype=int)
    labels[np.random.default_rng(0).permutation(n)[:positives]] = 1
    return labels, [f"P{i:03d}" for i in range(n)]


def test_every_patient_in_exactly_one_fold_and_stratified() -> None:
    labels, groups = cohort()
    folds = assign_folds(labels, groups, 5, seed=3)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    for k in range(5):
        test = folds == k
        assert 11 <= test.sum() <= 13
        assert 3 <= labels[test].sum() <= 4  # 16 positives over 5 folds
    assert np.array_equal(folds, assign_folds(labels, groups, 5, seed=3))
    assert not np.array_equal(folds, assign_folds(labels, groups, 5, seed=4))


def test_groups_stay_together() -> None:
    labels, _ = cohort(40, 12)
    groups = [f"site{i // 4}" for i in range(40)]  # 10 groups of 4
    folds = assign_folds(labels, groups, 5, seed=0)
    for g in set(groups):
        assert len({int(f) for f, h in zip(folds, groups) if h == g}) == 1


def test_check_disjoint_catches_a_patient_in_two_folds() -> None:
    with pytest.raises(SplitError, match="P1"):
        check_disjoint(np.array([0, 1, 1]), ["P1", "P1", "P2"])
    with pytest.raises(SplitError, match="no fold"):
        check_disjoint(np.array([0, -1]), ["P1", "P2"])


def test_inner_split_stays_inside_the_training_fold() -> None:
    labels, groups = cohort()
    folds = assign_folds(labels, groups, 5, seed=1)
    train = np.where(folds != 0)[0]
    fit, val = inner_split(train, labels, groups, 4, seed=9)
    assert set(fit) | set(val) == set(train) and not set(fit) & set(val)
    assert labels[val].sum() >= 1 and 0.2 <= len(val) / len(train) <= 0.3


def test_too_few_patients_is_an_error() -> None:
    with pytest.raises(SplitError, match="cannot fill 5 folds"):
        assign_folds([0, 1, 0], ["a", "b", "c"], 5, seed=0)

"""Patient-level stratified K-fold (Haim et al. 2022, "Data splitting").

``StratifiedGroupKFold(n_splits=K, shuffle=True, random_state=seed)``: groups are the
cohort's split group where given (e.g. a site or a patient with several rows), otherwise
the patient. Every assignment is checked: no group in two test folds, every patient in
exactly one.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["SplitError", "assign_folds", "inner_folds_for", "inner_split", "check_disjoint"]


class SplitError(ValueError):
    """The cohort cannot be split as asked (too few patients or positives)."""


def assign_folds(labels: Sequence[int] | np.ndarray, groups: Sequence[str] | np.ndarray, k: int, seed: int) -> np.ndarray:
    """The test fold (0..k-1) of every patient. Raises SplitError, naming the fix, when there
    are fewer patient groups than folds; warns when the smaller class has fewer patients
    than folds (some test folds then hold none of it, and their own AUC is undefined)."""
    y = np.asarray(labels, dtype=int)
    g = np.asarray(groups, dtype=object)
    if len(y) != len(g):
        raise SplitError("labels and groups differ in length")
    positives = int(y.sum())
    minority = min(positives, len(y) - positives)
    if len(set(g)) < k:
        raise SplitError(f"{len(set(g))} patient groups cannot fill {k} folds: use --folds {max(2, len(set(g)))} or fewer")
    if minority < k:
        warnings.warn(f"only {minority} patients in the smaller class for {k} folds: some test folds hold none "
                      f"(their AUC is undefined); --folds {max(2, minority)} avoids it", stacklevel=2)
    folds = np.full(len(y), -1, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's "least populated class" note, covered above
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        for fold, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, g)):
            folds[test] = fold
    check_disjoint(folds, g)
    return folds


def check_disjoint(folds: np.ndarray, groups: Sequence[str] | np.ndarray) -> None:
    """Raise SplitError if a patient/group is in no fold or in two."""
    folds = np.asarray(folds)
    if (folds < 0).any():
        raise SplitError(f"{int((folds < 0).sum())} patients are in no fold")
    seen: dict[object, int] = {}
    for group, fold in zip(groups, folds):
        if seen.setdefault(group, int(fold)) != int(fold):
            raise SplitError(f"group {group!r} is in folds {seen[group]} and {int(fold)}")


def inner_folds_for(train_labels: Sequence[int] | np.ndarray, train_groups: Sequence[str] | np.ndarray, inner_folds: int) -> int:
    """How many inner folds a training fold affords: ``inner_folds``, fewer when its smaller
    class has fewer patients (each inner fold needs one of them), at least 2. Raises
    SplitError naming the smallest class count and the fix when not even 2 are possible."""
    y = np.asarray(train_labels, dtype=int)
    positives = int(y.sum())
    minority = min(positives, len(y) - positives)
    k = min(inner_folds, minority, len(set(train_groups)))
    if k < 2:
        raise SplitError(f"nested selection needs at least 2 patients of each class in every training fold; one has "
                         f"{minority} of its smaller class: use fewer --folds, --selection fixed (nothing chosen "
                         f"on data), or a larger cohort")
    return k


def inner_split(train_index: np.ndarray, labels: Sequence[int] | np.ndarray, groups: Sequence[str] | np.ndarray,
                inner_folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a training fold's patients into (fit, inner validation): one fold of an inner
    ``StratifiedGroupKFold`` of :func:`inner_folds_for` folds. Nested selection chooses epoch,
    threshold and slice aggregation on the inner validation patients only."""
    train_index = np.asarray(train_index)
    y = np.asarray(labels)[train_index]
    g = np.asarray(groups, dtype=object)[train_index]
    k = inner_folds_for(y, g, inner_folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        fit, val = next(splitter.split(np.zeros(len(y)), y, g))
    return train_index[fit], train_index[val]

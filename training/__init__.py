"""Training: rebuild and evaluate the fold ensemble the node serves (DESIGN.md "training").

cohort CSV -> :mod:`training.cache` (the node's own ``pipeline.prepare``) ->
:mod:`training.splits` (patient-level stratified K-fold) -> :mod:`training.engine`
(ResNet-50, Haim et al. 2022 recipe) -> :mod:`training.metrics` / :mod:`training.report`
-> :mod:`training.export` (the bundle, written atomically). ``egfr-node train`` is
:func:`training.cli.main`; programs call :func:`train_bundle` (``egfr-node demo`` with ``DEMO_SETTINGS``).

Imports ``pipeline`` and ``db`` only. Heavy modules (torch) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from training.settings import TrainSettings

if TYPE_CHECKING:
    from training.run import TrainOutcome

__all__ = ["TrainSettings", "train_bundle", "DEMO_SETTINGS"]

#: Small, fast settings for ``egfr-node demo`` (minutes on 2 CPU cores for ~20 studies).
#: From scratch the paper's 4e-2 and soft-F1 did not learn the phantom effect in test-sized runs;
#: full fine-tuning, max lr 2e-3, cross-entropy, mixup and flips did (tests/training/learn_settings.py).
DEMO_SETTINGS = TrainSettings(epochs=6, folds=2, max_lr=2e-3, freeze_body=False, loss="ce", mixup=True, flip_p=0.5,
                              selection="paper", selection_metric="last", bootstrap=500)


def train_bundle(*args, **kwargs) -> "TrainOutcome":
    """See :func:`training.run.train_bundle`."""
    from training.run import train_bundle as run

    return run(*args, **kwargs)

"""Training: rebuild and evaluate the fold ensemble the node serves (DESIGN.md "training").

cohort CSV -> :mod:`training.cache` (the node's own ``pipeline.prepare``) ->
:mod:`training.splits` (patient-level stratified K-fold) -> :mod:`training.engine`
(ResNet-50, Haim et al. 2022 recipe) -> :mod:`training.metrics` / :mod:`training.report`
-> :mod:`training.export` (the bundle, written atomically). ``egfr-node train`` is
:func:`training.cli.main`; programs call :func:`train_bundle` or :func:`train_demo_bundle`.

Imports ``pipeline`` and ``db`` only. Heavy modules (torch) load on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from training.settings import TrainSettings

if TYPE_CHECKING:
    from training.run import TrainOutcome

__all__ = ["TrainSettings", "train_bundle", "train_demo_bundle", "DEMO_SETTINGS"]

#: Small, fast settings for ``egfr-node demo`` (minutes on 2 CPU cores for ~20 studies).
#: From scratch the paper's 4e-2 and soft-F1 did not learn the phantom effect in test-sized runs;
#: full fine-tuning, max lr 2e-3, cross-entropy, mixup and flips did (tests/training/learn_settings.py).
DEMO_SETTINGS = TrainSettings(epochs=6, folds=2, max_lr=2e-3, freeze_body=False, loss="ce", mixup=True, flip_p=0.5,
                              selection="paper", selection_metric="last", bootstrap=500)


def train_bundle(*args, **kwargs) -> "TrainOutcome":
    """See :func:`training.run.train_bundle`."""
    from training.run import train_bundle as run

    return run(*args, **kwargs)


def train_demo_bundle(cohort_csv: Path, out_dir: Path, *, archive_root: Path | None = None, cache_dir: Path | None = None,
                      output_size: int = 48, settings: TrainSettings | None = None, progress: bool = False) -> "TrainOutcome":
    """A small bundle quickly (demo): ``DEMO_SETTINGS``, N4 on, ``output_size`` 48."""
    from pipeline.params import PreprocessParams
    from training.run import train_bundle as run

    return run(cohort_csv, out_dir, settings=settings or DEMO_SETTINGS, params=PreprocessParams(output_size=output_size),
               archive_root=archive_root, cache_dir=cache_dir, name="EGFR ResNet-50 demo (not for clinical use)",
               progress=progress)

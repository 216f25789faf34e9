"""Training: rebuild and evaluate the fold ensemble the node serves (DESIGN.md "training").

cohort CSV -> :mod:`training.cache` (the node's own ``pipeline.prepare``) ->
:mod:`training.splits` (patient-level stratified K-fold) -> :mod:`training.engine`
(ResNet-50, Haim et al. 2022 recipe) -> :mod:`training.metrics` / :mod:`training.report`
-> :mod:`training.export` (the bundle, written atomically). ``egfr-node train`` is
:func:`training.cli.main`; programs call :func:`train_bundle` (``egfr-node demo`` with ``DEMO_SETTINGS``).

Imports ``pipeline`` and ``db`` only. Heavy modules (torch) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from training.settings import TrainSettings

if TYPE_CHECKING:
    from training.run import TrainOutcome

__all__ = ["TrainSettings", "train_bundle", "DEMO_SETTINGS"]

#: ``egfr-node demo``'s settings: the default recipe (no ImageNet weights, so the scratch
#: recipe) with 3 folds and 30 epochs, so 30 small studies train in about a minute and a half
#: on 2 CPU cores; nothing else of the recipe is changed.
DEMO_SETTINGS = TrainSettings.from_mapping({"epochs": 30, "folds": 3, "bootstrap": 1000})


def train_bundle(*args: Any, **kwargs: Any) -> "TrainOutcome":
    """See :func:`training.run.train_bundle`."""
    from training.run import train_bundle as run

    return run(*args, **kwargs)

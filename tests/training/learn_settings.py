"""The test-sized run of test_learning.py: the default recipe (no ImageNet weights, so the
scratch recipe) with 3 folds and 30 epochs, on 32x32 inputs (tests/training/conftest.py), as
``egfr-node demo`` trains. The recipe itself is not changed: what the test shows learning is
what ``egfr-node train`` runs by default.
"""

from training.settings import TrainSettings

LEARN_SETTINGS = TrainSettings.from_mapping({"epochs": 30, "folds": 3, "bootstrap": 500, "seed": 0})

"""The test-sized recipe used by test_learning.py (and measured in the report).

From scratch (no ImageNet weights) at 32x32, the paper's max lr 4e-2 (meant for a frozen
pretrained body) does not train, and a frozen random body does not learn the phantom
effect; full fine-tuning at max lr 2e-3 with the paper's augmentation, mixup and
oversampling does. ``selection="paper"`` with ``selection_metric="last"`` keeps the last
epoch, median aggregation and threshold 0.5: the test fold chooses nothing.
"""

from training.settings import TrainSettings

LEARN_SETTINGS = TrainSettings(
    epochs=16, folds=3, max_lr=2e-3, freeze_body=False, loss="ce", mixup=True, flip_p=0.5,
    selection="paper", selection_metric="last", bootstrap=500, seed=0,
)

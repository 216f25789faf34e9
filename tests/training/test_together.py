"""The K folds trained together (in turns, step by step; on a GPU each on its own CUDA stream)
give exactly what training them one after another gives: the same kept epochs, weights and
out-of-fold scores."""

from __future__ import annotations

import numpy as np
import torch

from training.engine import FoldTrainer, train_fold, train_folds_together
from training.settings import TrainSettings


def test_folds_trained_together_match_folds_trained_one_after_another() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(12, 5, 3, 32, 32, generator=generator)
    labels = np.array([0, 1] * 6)
    inputs[labels == 1, :, :, 8:24, 8:24] += 1.0  # something to learn
    settings = TrainSettings(epochs=3, batch_size=8, freeze_body=False, max_lr=1e-3, eval_batch_size=64, bootstrap=0,
                             selection="nested", selection_metric="accuracy")
    plan = [  # (fold, fit, select, test): the folds differ in size, so in steps per epoch
        (0, np.arange(4, 10), np.arange(10, 12), np.arange(0, 4)),
        (1, np.array([0, 1, 2, 3, 8, 9, 10]), np.array([4, 11]), np.array([5, 6, 7])),
    ]
    device = torch.device("cpu")

    alone = [train_fold(k, inputs, labels, fit, select, test, settings, seed=100 + k, device=device, progress=False)
             for k, fit, select, test in plan]
    trainers = [FoldTrainer(k, inputs, labels, fit, select, test, settings, seed=100 + k, device=device, progress=False)
                for k, fit, select, test in plan]
    assert [t.steps for t in trainers] == [3, 4]
    together = train_folds_together(trainers)

    for one, both in zip(alone, together):
        assert one.fold == both.fold and one.epoch == both.epoch and one.history == both.history
        assert one.state_dict.keys() == both.state_dict.keys()
        assert all(torch.equal(one.state_dict[k], both.state_dict[k]) for k in one.state_dict)
        np.testing.assert_array_equal(one.test_scores, both.test_scores)
        assert (one.slice_aggregation, one.threshold) == (both.slice_aggregation, both.threshold)
    # the folds are different models (the comparison above is not between copies of one)
    assert not torch.equal(alone[0].state_dict["head.2.weight"], alone[1].state_dict["head.2.weight"])  # the linear head

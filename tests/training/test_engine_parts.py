"""Recipe parts: soft-F1 loss, mixup, batch augmentation, frozen body, oversampling, one-cycle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augment import augment_batch, mixup_batch
from training.engine import build_model, epoch_batches, make_optimizer, make_scheduler
from training.losses import soft_f1_loss
from training.settings import TrainSettings


def test_soft_f1_loss() -> None:
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    perfect = torch.tensor([[-20.0, 20.0], [20.0, -20.0], [-20.0, 20.0]])
    assert float(soft_f1_loss(perfect, targets)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_f1_loss(-perfect, targets)) == pytest.approx(1.0, abs=1e-6)
    logits = torch.zeros(3, 2, requires_grad=True)
    soft_f1_loss(logits, targets).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_mixup_keeps_the_larger_share() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 4, 4).contiguous()
    y = torch.nn.functional.one_hot(torch.tensor([0, 1] * 4), 2).float()
    mx, my = mixup_batch(x, y, 0.4, g)
    assert torch.allclose(my.sum(1), torch.ones(8))
    # lambda >= 0.5: each mixed target keeps at least half of its own label
    assert bool(((my * y).sum(1) >= 0.5 - 1e-6).all())
    assert not torch.equal(mx, x)


def test_augmentation_is_seeded_and_off_when_disabled() -> None:
    x = torch.randn(6, 3, 32, 32)
    s = TrainSettings()
    a = augment_batch(x, s, torch.Generator().manual_seed(1))
    b = augment_batch(x, s, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.shape == x.shape
    off = s.replace(affine_p=0.0, lighting_p=0.0, flip_p=0.0)
    assert torch.equal(augment_batch(x, off, torch.Generator().manual_seed(1)), x)


def test_frozen_body_trains_only_head_and_batchnorm() -> None:
    model = build_model(TrainSettings(freeze_body=True), seed=0)
    for name, p in model.named_parameters():
        if name.startswith("head."):
            assert p.requires_grad, name
        elif ".bn" in name or "downsample.1" in name or name.startswith("body.1."):
            assert p.requires_grad, name  # BatchNorm in the body
        else:
            assert not p.requires_grad, name
    full = build_model(TrainSettings(freeze_body=False), seed=0)
    assert all(p.requires_grad for p in full.parameters())
    opt = make_optimizer(model, TrainSettings())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])  # no BatchNorm / bias parameter decays


def test_one_cycle_matches_fastai() -> None:
    s = TrainSettings(epochs=4)
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, s)
    sched = make_scheduler(opt, s, steps_per_epoch=10)
    lrs, betas = [], []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(4e-2 / 25)
    assert max(lrs) == pytest.approx(4e-2, rel=1e-3) and int(np.argmax(lrs)) in (9, 10)
    assert lrs[-1] < 4e-2 / 1e4
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85, abs=1e-3)


def test_oversampling_draws_classes_about_equally() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([torch.cat(epoch_batches(labels, TrainSettings(batch_size=10), g)) for _ in range(20)])
    share = float(labels[drawn].float().mean())
    assert 0.42 < share < 0.58
    plain = torch.cat(epoch_batches(labels, TrainSettings(batch_size=10, oversample=False), g))
    assert float(labels[plain].float().mean()) == pytest.approx(0.1)


def test_mixup_lambda_is_beta_distributed() -> None:
    """Johnk's Beta(0.4, 0.4) draws, taken without a host sync, have the Beta's moments."""
    from training.augment import _beta

    draws = _beta(20000, 0.4, torch.Generator().manual_seed(3), torch.device("cpu")).double()
    assert draws.shape == (20000,) and bool(((draws >= 0) & (draws <= 1)).all())
    assert float(draws.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(draws.var()) == pytest.approx(0.25 / 1.8, abs=0.01)  # a^2 / ((2a)^2 (2a + 1)) = 1 / (4 (2a + 1))
